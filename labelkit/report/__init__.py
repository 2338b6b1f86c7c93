"""`labelkit report`: the Dataset Nutrition Label — one self-contained HTML file plus report.json.

Layout after the Dataset Nutrition Label (Holland et al., 2018), adapted to labels: a facts panel
first, then modules (metadata, provenance, variables, statistics, embedding map, probabilistic
model, ground-truth correlation, galleries, gate). Everything is inline — CSS, SVG/PNG plots,
thumbnails — so the file opens offline and makes no network request. Strings from the data are
escaped by jinja2's autoescape.
"""

from __future__ import annotations

import base64
import functools
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from labelkit import baseline
from labelkit.plots import figure_uri, mpl
from labelkit.tasks import get_task
from labelkit.workspace import (Workspace, atomic_path, current_items_fingerprint, is_current, read_embeddings,
                                read_probs, require_current, write_json)

# Points of the embedding map: its t-SNE is the report's costliest step and grows faster than the
# points (bench/detect.py's pixels, one thread: 1.2 s at 1,000, 2.4 s at 1,500, 2.8 s at 2,000).
MAX_MAP_POINTS = 1000
GALLERY_SIZE = 36
THUMB_PX = 72


@dataclass
class ReportResult:
    html_path: Path
    json_path: Path
    bytes: int

    def to_dict(self) -> dict:
        return {"html": str(self.html_path), "json": str(self.json_path), "bytes": self.bytes}


# ---------------------------------------------------------------------------------------------
# Figures


_figure_uri, _mpl = figure_uri, mpl  # the shared plotting helpers (labelkit.plots), old names kept


def plot_class_counts(classes: list[str], counts: list[int], issues: list[int]):
    from labelkit.plots import plot_hbars

    return plot_hbars(classes, [(counts, "#94a3b8", "rows"), (issues, "#dc2626", "label issues")])


def plot_noise_matrix(classes: list[str], noise: np.ndarray):
    from labelkit.plots import plot_heatmap

    return plot_heatmap(classes, noise, cmap="Reds", xlabel="true label (estimated)", ylabel="given label",
                        colorbar="P(given | true)")


def plot_embedding_map(xy: np.ndarray, labels: np.ndarray, classes: list[str], flagged: np.ndarray):
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(7.0, 5.6))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for k, c in enumerate(classes):
        m = labels == k
        ax.scatter(xy[m, 0], xy[m, 1], s=7, color=cmap(k % cmap.N), alpha=0.75, linewidths=0, label=str(c)[:20])
    ax.scatter(xy[flagged, 0], xy[flagged, 1], s=34, facecolors="none", edgecolors="#111827", linewidths=0.9,
               label="label issue")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.spines[["left", "bottom"]].set_visible(False)
    if len(classes) <= 20:
        ax.legend(frameon=False, fontsize=7, markerscale=1.6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _figure_uri(fig, "png")


def plot_histogram(values: np.ndarray, xlabel: str):
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(6.2, 2.2))
    ax.hist(values, bins=30, color="#64748b")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    return _figure_uri(fig)


def plot_reliability(bins: list[dict]):
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    conf = [b["confidence"] for b in bins if b["count"]]
    acc = [b["accuracy"] for b in bins if b["count"]]
    ax.plot([0, 1], [0, 1], ls="--", color="#94a3b8", lw=1)
    ax.bar(conf, acc, width=1 / max(15, len(bins)), color="#2563eb", alpha=0.8, edgecolor="white")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    return _figure_uri(fig)


def project_2d(embeddings: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """Return a 2-D map of the rows and the method's name (t-SNE after PCA-50; PCA for tiny sets).

    350 t-SNE iterations: scikit-learn's 250 of early exaggeration form the clusters, and the
    100 after them spread them apart; iterations 350-500 only keep spreading the same layout, and
    cost a third of the map's time (2,000 points of bench/detect.py: 3.7 s of CPU at 500, 2.6 s
    at 350, one thread). The map is usually the costliest part of the report (see MAX_MAP_POINTS).

    It runs on the cores the 1-minute load average leaves idle (at least one): scikit-learn's
    OpenMP threads spin at every barrier, so a team larger than the idle cores waits on threads
    that other processes hold (same map, 2 cores at load ~8: 23.5 s on 2 threads, 5.4 s on 1;
    at load ~3, 1.7 s on 2 and 2.6 s on 1).
    """
    from sklearn.decomposition import PCA

    X = np.asarray(embeddings, np.float32)
    if len(X) < 50:
        return PCA(n_components=2, random_state=seed).fit_transform(X), "PCA"
    from sklearn.manifold import TSNE

    Z = PCA(n_components=min(50, X.shape[1], len(X) - 1), random_state=seed).fit_transform(X)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(_idle_cores(), user_api="openmp"):
        xy = TSNE(n_components=2, init="pca", perplexity=min(30, len(X) // 4), random_state=seed,
                  max_iter=350).fit_transform(Z)
    return xy, "t-SNE (after PCA to 50 dimensions)"


def _idle_cores() -> int:
    """Return the cores this process may use less the 1-minute load average, rounded, at least 1."""
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:  # no load average on this system
        busy = 0.0
    return max(1, cores - round(busy))


def thumbnail(path: str | None) -> str | None:
    """Return a small PNG data URI of an image file (nearest-neighbour for tiny images), or None.

    Saved without ``optimize``: its extra passes cost 5x the rest of a thumbnail (decode,
    resize) for a file about 4 % smaller.
    """
    if not path:
        return None
    try:
        from PIL import Image

        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = THUMB_PX / max(im.size)
            resample = Image.NEAREST if scale >= 2 else Image.BILINEAR
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), resample)
            buf = io.BytesIO()
            im.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------
# Data


def _versions() -> dict:
    out = {}
    for pkg in ("labelkit", "cleanlab", "open_clip_torch", "torch", "scikit-learn", "numpy", "pyarrow"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def build_report_data(ws: Workspace, *, gallery_size: int = GALLERY_SIZE, max_map_points: int = MAX_MAP_POINTS,
                      seed: int = 0) -> tuple[dict, dict]:
    """Return (numbers for report.json, extra render-only data such as figures and thumbnails).

    The steps, in the order the report shows them: dataset facts and provenance, class balance
    and statistics, then — when `issues` has run — the probabilistic model (noise matrix,
    agreement with the given labels), the embedding map, one gallery per check, the task's own
    module (multi-label, multi-annotator, regression) and the latest checked model.
    """
    manifest = ws.read_manifest()
    items = ws.read_items()
    summary = manifest.get("stages", {}).get("issues")
    # Tables left by an earlier ingest describe other rows: refuse them rather than show them.
    items_fp = current_items_fingerprint(ws)
    if ws.issues_path.exists() or summary is not None:
        require_current(ws, ws.issues_path, items_fp=items_fp)
    data = _dataset_facts(manifest, items)
    extra: dict = {"figures": {}, "galleries": {}, "notes": []}
    if summary is None:
        _class_balance(data, extra, items, summary)
        _statistics(data, extra, items)
        extra["notes"].append("No `labelkit issues` results in this workspace yet: label checks are not shown.")
        return data, extra
    iss = _issues_frame(ws, items)
    # The map's t-SNE (the report's costliest step) runs on a worker thread while the other sections
    # are drawn: scikit-learn's Barnes-Hut gradient releases the GIL, matplotlib stays on this thread.
    with ThreadPoolExecutor(1, thread_name_prefix="labelkit-map") as pool:
        pending_map = _start_embedding_map(ws, iss, manifest, pool, max_map_points=max_map_points, seed=seed)
        _class_balance(data, extra, items, summary)
        _statistics(data, extra, items)
        _probabilistic_model(ws, data, extra, iss, summary, items_fp)
        if pending_map is not None:
            _finish_embedding_map(data, extra, iss, key=manifest["stages"]["embed"]["embedding_key"], **pending_map)
    extra["galleries"] |= check_galleries(iss, summary, data["modality"], gallery_size)
    data["label_issue_ids_shown"] = [c["id"] for c in extra["galleries"].get("label_issues", [])]
    flagged_total = int(iss["is_label_issue"].sum()) if "is_label_issue" in iss else 0
    if flagged_total > gallery_size:
        extra["notes"].append(f"The label-issue gallery shows the {gallery_size} lowest-quality of {flagged_total:,} "
                              "flagged rows; all are in issues.parquet.")
    _task_module(ws, data, extra)
    model = _latest_model(ws, items_fp)
    if model is not None:
        data["model"] = model
        if model.get("metrics", {}).get("reliability"):
            extra["figures"]["reliability"] = plot_reliability(model["metrics"]["reliability"])
    return data, extra


def _dataset_facts(manifest: dict, items) -> dict:
    """Return the facts panel, provenance and variables: what the data is and where it came from."""
    stages = manifest.get("stages", {})
    usable = items["error"].isna()
    return {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dataset": Path(manifest["source"]["path"]).name,
        "modality": manifest.get("modality", "image"),
        "task": manifest.get("task", "multiclass"),
        "rows": int(len(items)), "usable_rows": int(usable.sum()), "unusable_rows": int((~usable).sum()),
        "classes": manifest["classes"],
        "warnings": [w["message"] for w in manifest.get("warnings", [])],
        "provenance": {"source": manifest["source"], "versions": _versions(), "labelkit_version_at_ingest":
                       manifest.get("labelkit_version"), "embedding": stages.get("embed"),
                       "items_sha1_of_hashes": _hash_of_hashes(items["content_hash"].dropna().tolist())},
        "user": _user_fields(),
        "variables": [{"name": c, "type": str(items[c].dtype), "missing": int(items[c].isna().sum())}
                      for c in items.columns],
        "unusable_by_reason": items.loc[~usable, "error"].str.split(" \\(").str[0].value_counts().to_dict(),
        "issues": summary if (summary := stages.get("issues")) is not None else None,
        "gate": stages.get("gate"),
    }


def _class_balance(data: dict, extra: dict, items, summary: dict | None) -> None:
    """Rows per class, with the label-issue share in red (classification tasks)."""
    classes = data["classes"]
    if not classes or "class_balance" not in get_task(data["task"]).report_sections:
        return
    usable = items["error"].isna()
    counts = (summary or {}).get("class_counts") or \
        items.loc[usable, "label"].value_counts().reindex(classes, fill_value=0).to_dict()
    per_class = (summary or {}).get("per_class") or {}
    flagged = [(per_class.get(c) or {}).get("label_issues") or 0 for c in classes]
    extra["figures"]["class_counts"] = plot_class_counts(classes, [counts.get(c, 0) for c in classes], flagged)


def _statistics(data: dict, extra: dict, items) -> None:
    """Splits, image sizes or text lengths."""
    usable = items["error"].isna()
    if "split" in items and items["split"].notna().any():
        data["splits"] = items["split"].fillna("(none)").value_counts().to_dict()
    if data["modality"] == "image":
        sizes = (items.loc[usable, "width"].astype("Int64").astype(str) + "×" +
                 items.loc[usable, "height"].astype("Int64").astype(str)).value_counts()
        data["image_sizes"] = sizes.head(10).to_dict()
    elif data["modality"] == "text":
        lengths = items.loc[usable, "text_length"].dropna().to_numpy()
        if len(lengths):
            data["text_length"] = {"min": int(lengths.min()), "median": float(np.median(lengths)),
                                   "max": int(lengths.max())}
            extra["figures"]["text_length"] = plot_histogram(lengths, "text length (characters)")


def _issues_frame(ws: Workspace, items):
    """Return issues.parquet joined with each row's class index, image path, text and source."""
    import pyarrow.parquet as pq

    iss = pq.read_table(ws.issues_path).to_pandas()
    return iss.join(items.set_index("id")[["label_id", "image_path", "text", "source"]], on="id")


def _probabilistic_model(ws: Workspace, data: dict, extra: dict, iss, summary: dict, items_fp: str) -> None:
    """The noise matrix and how often the probe (and any relabeler) agrees with the given labels."""
    import pandas as pd
    import pyarrow.parquet as pq

    classes = data["classes"]
    if summary.get("noise_matrix") is not None:
        extra["figures"]["noise_matrix"] = plot_noise_matrix(classes, np.asarray(summary["noise_matrix"]))
    if summary.get("label_issues_not_measured"):
        extra["notes"].append(f"Label issues were not computed: {summary['label_issues_not_measured']}.")
    if "probe_agreement" not in get_task(data["task"]).report_sections:
        return
    has_probs = ws.probs_path.exists()  # absent when label issues could not be computed (one class)
    given = iss["label_id"].to_numpy()
    pred = np.full(len(iss), -1)
    if has_probs:
        require_current(ws, ws.probs_path, items_fp=items_fp)
        prob_ids, prob_matrix = read_probs(ws.probs_path)
        position = pd.Index(prob_ids).get_indexer(iss["id"])
        pred = np.where(position >= 0, prob_matrix.argmax(1)[np.maximum(position, 0)], -1)
    agreement = {"probe": float((pred == given).mean()) if has_probs else None}
    relabels = ws.relabels_path
    if relabels.exists() and not is_current(ws, relabels, items_fp=items_fp):
        extra["notes"].append(f"{relabels.name} was computed from different data and is not shown; run "
                              f"`labelkit relabel -w {ws.root}` again.")
    elif relabels.exists():
        rel = pq.read_table(relabels).to_pandas()
        for method, grp in rel.groupby("method"):
            merged = grp.merge(iss[["id", "given_label"]], on="id")
            answered = merged["proposed_label"].notna()
            if answered.any():
                agreement[str(method)] = float((merged.loc[answered, "proposed_label"] == merged.loc[answered, "given_label"]).mean())
    data["ground_truth_correlation"] = {
        "agreement_with_given": agreement,
        "per_class_agreement": {c: float((pred[given == k] == k).mean()) if has_probs and (given == k).any() else None
                                for k, c in enumerate(classes)},
    }


def _start_embedding_map(ws: Workspace, iss, manifest: dict, pool, *, max_map_points: int, seed: int) -> dict | None:
    """Choose the map's rows and submit their 2-D projection to `pool`; return what
    :func:`_finish_embedding_map` needs, or None (no embeddings).

    Flagged rows fill at most half the map (all of them when they fit; more when there are too few
    other rows to fill it), a random sample of the other rows the rest: every flagged row of a
    heavily flagged set would crowd out the classes they were flagged against.
    """
    import pandas as pd

    key = manifest.get("stages", {}).get("embed", {}).get("embedding_key")
    if not key or not ws.embeddings_path(key).exists():
        return None
    emb_ids, emb = read_embeddings(ws.embeddings_path(key))
    rows = pd.Index(emb_ids).get_indexer(iss["id"])
    ok = np.flatnonzero(rows >= 0)
    rng = np.random.default_rng(seed)
    flags = iss["is_label_issue"].to_numpy() if "is_label_issue" in iss else np.zeros(len(iss), bool)
    flagged_idx = ok[flags[ok]]
    rest = np.setdiff1d(ok, flagged_idx)
    n_flagged = min(len(flagged_idx), max(max_map_points // 2, max_map_points - len(rest)))
    shown = rng.choice(flagged_idx, size=n_flagged, replace=False) if n_flagged < len(flagged_idx) else flagged_idx
    take = min(max_map_points - n_flagged, len(rest))
    chosen = np.sort(np.concatenate([shown, rng.choice(rest, size=take, replace=False)]))
    if len(chosen) < 3:
        return None
    return {"future": pool.submit(project_2d, emb[rows[chosen]], seed), "chosen": chosen, "flags": flags,
            "usable": len(ok), "flagged": len(flagged_idx)}


def _finish_embedding_map(data: dict, extra: dict, iss, *, key: str, future, chosen: np.ndarray, flags: np.ndarray,
                          usable: int, flagged: int) -> None:
    """Plot the 2-D map of the chosen rows, coloured by given label (flagged rows marked)."""
    xy, method = future.result()
    given = iss["label_id"].to_numpy()
    extra["figures"]["embedding_map"] = plot_embedding_map(xy, given[chosen], data["classes"], flags[chosen])
    data["embedding_map"] = {"method": method, "points": int(len(chosen)), "of": int(usable), "embedding": key}
    if len(chosen) < usable:
        shown = int(flags[chosen].sum())
        which = "every flagged row" if shown == flagged else f"a random {shown:,} of the {flagged:,} flagged rows"
        extra["notes"].append(f"The embedding map shows {len(chosen):,} of {usable:,} rows ({which}, "
                              "plus a random sample of the rest).")


def _task_module(ws: Workspace, data: dict, extra: dict) -> None:
    """The task's own numbers and figures (:meth:`labelkit.tasks.base.TaskType.report_data`), when it has any."""
    section = get_task(data["task"]).report_data(ws)
    if section is not None:
        data["task_data"], figures = section
        extra["figures"] |= figures


def check_galleries(iss, summary: dict, modality: str, gallery_size: int) -> dict[str, list[dict]]:
    """Return, per registered check that ran and flags rows, its worst flagged rows as gallery cards.

    Read from the check registry: the flag column marks the rows, the score column orders them
    (worst first), the pair column names a related row shown beside it, and the reason column
    says why. No check needs report code of its own.
    """
    from labelkit.checks import get_checks

    ran = summary.get("checks") or {}
    by_id = iss.set_index("id", drop=False)
    thumb = functools.lru_cache(maxsize=None)(thumbnail)  # a row shown by several checks, or as a pair: drawn once

    def card(row, **kw) -> dict:
        return {"id": row["id"], "label": row.get("given_label"),
                "thumb": thumb(row.get("image_path")) if modality == "image" else None,
                "text": (row.get("text") or "")[:240] if modality == "text" else None, **kw}

    out = {}
    for check in get_checks():
        info = ran.get(check.name)
        if not info or "skipped" in info or not check.flag or check.flag not in iss:
            continue
        flagged = iss[iss[check.flag].fillna(False).astype(bool)]
        if check.score and check.score in iss:
            flagged = flagged.sort_values(check.score, ascending=check.score_ascending, kind="stable", na_position="last")
        cards = []
        for _, r in flagged.head(gallery_size).iterrows():
            score = r.get(check.score) if check.score else None
            c = card(r, reason=r.get("reason"), score=None if score is None or score != score else float(score))
            if "suggested_label" in check.columns and r.get("suggested_label") not in (None, r.get("given_label")):
                c["suggested"] = r["suggested_label"]
            partner = r.get(check.pair) if check.pair else None
            if isinstance(partner, str) and partner in by_id.index:
                c["pair"] = card(by_id.loc[partner].to_dict())
            cards.append(c)
        out[check.name] = cards
    return out


def _hash_of_hashes(hashes: list[str]) -> str:
    import hashlib

    h = hashlib.sha1()
    for x in sorted(hashes):
        h.update(x.encode())
    return h.hexdigest()


def _user_fields() -> dict:
    """Return optional license/creator/description fields from [tool.labelkit.report] in pyproject.toml."""
    from labelkit.gate import tomllib  # tomllib on 3.11+, tomli on 3.10

    for folder in [Path.cwd(), *Path.cwd().parents]:
        path = folder / "pyproject.toml"
        if path.is_file():
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError:
                return {}
            fields = data.get("tool", {}).get("labelkit", {}).get("report", {})
            return {k: str(v) for k, v in fields.items() if k in ("license", "creator", "description", "name")}
    return {}


def _latest_model(ws: Workspace, items_fp: str) -> dict | None:
    """Return the newest model card trained on the current items (models from an earlier ingest are ignored)."""
    cards = sorted((ws.root / "models").glob("*/model_card.json"), key=lambda p: p.stat().st_mtime)
    for path in reversed(cards):
        card = json.loads(path.read_text())
        if card.get("items_fingerprint") == items_fp:
            return card
    return None


# ---------------------------------------------------------------------------------------------
# The verb


def render_html(data: dict, extra: dict) -> str:
    """Return the report page for `data` (jinja2, autoescaped)."""
    from jinja2 import Environment, PackageLoader, select_autoescape
    from markupsafe import Markup

    env = Environment(loader=PackageLoader("labelkit.report", "templates"), autoescape=select_autoescape(default=True))
    from jinja2 import Undefined

    missing = lambda v: v is None or isinstance(v, Undefined)  # not measured, or not part of this task
    env.filters["pct"] = lambda v, d=1: "—" if missing(v) else f"{100 * v:.{d}f}%"
    env.filters["num"] = lambda v: "—" if missing(v) else (f"{v:,}" if isinstance(v, int) else f"{v:,.3g}")
    figures = {k: Markup(v) if v.startswith("<svg") else v for k, v in extra["figures"].items()}
    css = (Path(__file__).parent / "templates" / "report.css").read_text(encoding="utf-8")
    from labelkit.checks import get_checks

    meta = {c.name: {"description": c.description, "metrics": c.metrics} for c in get_checks()}
    return env.get_template("report.html").render(d=data, fig=figures, gal=extra["galleries"], notes=extra["notes"], meta=meta,
                                                  css=Markup(css))


def report(workspace: Workspace | Path | str = "labelkit-out", *, output: Path | str | None = None,
           gallery_size: int = GALLERY_SIZE) -> ReportResult:
    """Return where the report went; writes report.html (self-contained) and report.json."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    ws.require()
    data, extra = build_report_data(ws, gallery_size=gallery_size)
    data["baseline"] = baseline.current_record(ws)  # "changes since baseline" (audit --baseline), else None
    html = render_html(data, extra)
    html_path = Path(output) if output else ws.root / "report.html"
    with atomic_path(html_path) as tmp:
        tmp.write_text(html, encoding="utf-8")
    json_path = html_path.with_suffix(".json")
    write_json(data, json_path)
    baseline.write_rows(ws, baseline.sidecar_path(json_path))  # per-row data, so report.json can be a baseline
    return ReportResult(html_path=html_path, json_path=json_path, bytes=len(html.encode("utf-8")))
