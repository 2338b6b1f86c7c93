"""`labelkit relabel`: proposed labels from CLIP zero-shot and from an LLM, aggregated, never destructive.

Proposals go to ``relabels.parquet`` (one row per item and method: ``proposed_label``,
``confidence``, ``accepted``); every rerun recomputes ``soft_labels.parquet``, the normalised vote
counts of the given label, the probe's prediction, accepted CLIP proposals and LLM answers.
``apply`` writes a new label version ``labels/label_vN.parquet`` (argmax of the votes, the given
label winning ties) and records it in the manifest; ``items.parquet`` and its ``label`` column are
never changed.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from labelkit.errors import LabelkitError, check_in_range
from labelkit.llm import Answer, LLMClient, build_messages, chat_url, parse_answer  # noqa: F401  (public API)
from labelkit.tasks import task_of_manifest
from labelkit.workspace import (Workspace, current_items_fingerprint, is_current, read_probs, require_current,
                                with_fingerprint, write_table)

# A template ensemble in the style of the CLIP paper's prompt engineering (written here).
TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
    "a blurry photo of a {}.",
    "a low resolution photo of a {}.",
    "a bright photo of a {}.",
    "a cropped photo of a {}.",
    "a drawing of a {}.",
)
METHODS = ("clip", "llm")
Progress = Callable[[int, "int | None"], None]
RELABELS_SCHEMA = pa.schema([("id", pa.string()), ("method", pa.string()), ("proposed_label", pa.string()),
                             ("confidence", pa.float32()), ("accepted", pa.bool_()), ("status", pa.string())])


# ---------------------------------------------------------------------------------------------
# CLIP zero-shot maths


def zero_shot_weights(template_embeddings: np.ndarray) -> np.ndarray:
    """Return (n_classes, d) class vectors from (n_classes, n_templates, d) prompt embeddings.

    Each prompt embedding is L2-normalised, the templates of a class are averaged and the average
    is normalised again (the CLIP paper's prompt ensembling in embedding space).
    """
    e = template_embeddings / np.linalg.norm(template_embeddings, axis=-1, keepdims=True)
    mean = e.mean(1)
    return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


def zero_shot_probs(image_embeddings: np.ndarray, class_weights: np.ndarray, *, temperature: float = 0.01) -> np.ndarray:
    """Return softmax(cos(image, class) / temperature) over classes (CLIP's logit scale is 1/temperature)."""
    check_in_range(temperature, "temperature", "zero_shot_probs", low=0, low_closed=False)
    x = image_embeddings / np.linalg.norm(image_embeddings, axis=1, keepdims=True)
    logits = (x @ class_weights.T) / temperature
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def accept_proposals(probs: np.ndarray, probe_pred: np.ndarray | None, *, threshold: float = 0.5,
                     top_k_per_class: int | None = None) -> np.ndarray:
    """Return which zero-shot proposals (argmax of `probs`) to accept.

    A proposal is accepted when its probability is at least `threshold` and it agrees with the
    out-of-sample probe's prediction (when one is given). With `top_k_per_class`, at most that
    many of the most confident accepted proposals per proposed class are kept, so that a class
    the model favours does not take every slot while small classes get none (class-balanced
    pseudo-labelling in the style of GRIP).
    """
    proposed, conf = probs.argmax(1), probs.max(1)
    ok = conf >= threshold
    if probe_pred is not None:
        ok &= proposed == probe_pred
    if top_k_per_class is not None:
        for k in np.unique(proposed[ok]):
            rows = np.flatnonzero(ok & (proposed == k))
            ok[rows[np.argsort(-conf[rows], kind="stable")[top_k_per_class:]]] = False
    return ok


# ---------------------------------------------------------------------------------------------
# The verb


@dataclass
class RelabelResult:
    method: str
    asked: int
    answered: int
    abstained: int
    failed: int
    accepted: int
    cached: int = 0
    proposals: list[dict] = field(default_factory=list)
    label_version: str | None = None
    changed: int | None = None
    errors: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _targets(ws: Workspace, all_items: bool):
    items = ws.read_items(columns=["id", "label", "label_id", "text", "error"])
    items = items[items["error"].isna() & (items["label_id"] >= 0)].reset_index(drop=True)
    if all_items:
        return items, items
    if not ws.issues_path.exists():
        raise LabelkitError(f"No issues in {ws.root}: run `labelkit issues -w {ws.root}` first, or pass --all.")
    require_current(ws, ws.issues_path)
    flagged = pq.read_table(ws.issues_path, columns=["id", "is_label_issue"]).to_pandas()
    ids = set(flagged.loc[flagged["is_label_issue"], "id"])
    return items, items[items["id"].isin(ids)].reset_index(drop=True)


def _probe_pred(ws: Workspace, ids: Sequence[str]) -> np.ndarray | None:
    if not ws.probs_path.exists():
        return None
    require_current(ws, ws.probs_path)  # a vote from another dataset's probe is no vote
    prob_ids, P = read_probs(ws.probs_path)
    pred = dict(zip(prob_ids, P.argmax(1)))
    return np.array([pred.get(i, -1) for i in ids])


def relabel(workspace: Workspace | Path | str = "labelkit-out", *, method: str = "llm", all_items: bool = False,
            endpoint: str | None = None, llm_model: str | None = None, api_key_env: str = "OPENAI_API_KEY",
            concurrency: int = 4, timeout: float = 30.0, max_retries: int = 3, backoff: float = 0.5,
            prompts: Sequence[str] | None = None, class_names: Path | str | None = None, threshold: float = 0.5,
            top_k_per_class: int | None = None, temperature: float | None = None, device: str = "auto",
            apply: bool = False, progress: Progress | None = None) -> RelabelResult:
    """Propose labels with `method` ('clip' or 'llm') for flagged items (or all); optionally apply.

    Writes relabels.parquet (this method's rows replaced), soft_labels.parquet and, with `apply`,
    a new label version (see :func:`apply_votes`).
    """
    if method not in METHODS:
        raise LabelkitError(f"Unknown relabel method {method!r}; choose from {', '.join(METHODS)}.")
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    ws.require()
    task = task_of_manifest(ws.read_manifest())
    if not task.relabel:
        raise LabelkitError(f"relabel does not support --task {task.name}: it proposes one class per row, for "
                            "multiclass and multi-annotator workspaces.")
    classes = ws.classes()
    items, todo = _targets(ws, all_items)
    if method == "clip":
        result, rows = _relabel_clip(ws, classes, todo, prompts=prompts, class_names=class_names, threshold=threshold,
                                     top_k_per_class=top_k_per_class, temperature=temperature, device=device)
    else:
        if not endpoint or not llm_model:
            raise LabelkitError("--with llm needs --endpoint URL and --llm-model NAME.")
        check_in_range(concurrency, "concurrency", "relabel", low=1, kind="an int")
        result, rows = _relabel_llm(ws, classes, todo, endpoint=endpoint, model=llm_model, api_key_env=api_key_env,
                                    concurrency=concurrency, timeout=timeout, max_retries=max_retries,
                                    backoff=backoff, progress=progress)
    _store(ws, method, rows)
    soft = aggregate_votes(ws)
    if apply:
        result.label_version, result.changed = apply_votes(ws, soft)
    manifest = ws.read_manifest()
    record = dict(manifest.get("stages", {}).get("relabel", {}))
    record[method] = {k: v for k, v in result.to_dict().items() if k != "proposals"}
    ws.update_stage("relabel", record)
    return result


def _relabel_clip(ws, classes, todo, *, prompts, class_names, threshold, top_k_per_class, temperature, device):
    from labelkit.embed import load_featurizer
    from labelkit.features import load_workspace_embeddings

    embed_record = ws.read_manifest().get("stages", {}).get("embed", {})
    model = embed_record.get("model")
    import open_clip

    if model not in open_clip.list_models():
        raise LabelkitError(f"CLIP zero-shot needs CLIP image embeddings; {ws.root} is embedded with "
                            f"{embed_record.get('embedding_key', 'nothing')}. Run `labelkit embed -w {ws.root} --model "
                            "ViT-B-32 --pretrained laion2b_s34b_b79k` (or a local checkpoint) first.")
    names = _class_names(class_names, classes)
    templates = list(prompts) if prompts else list(TEMPLATES)
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise LabelkitError(f"Prompt {bad[0]!r} must contain exactly one {{}} for the class name.")
    f = load_featurizer(model, embed_record.get("pretrained"), device=device)
    text = f.encode_texts([t.format(names[c]) for c in classes for t in templates])
    weights = zero_shot_weights(text.reshape(len(classes), len(templates), -1))
    if temperature is None:
        scale = getattr(f.model, "logit_scale", None)
        temperature = 1.0 / float(scale.detach().exp()) if scale is not None else 0.01
    key, ids, X = load_workspace_embeddings(ws)
    row = {i: r for r, i in enumerate(ids)}
    todo_ids = todo["id"].tolist()
    probs = zero_shot_probs(X[[row[i] for i in todo_ids]], weights, temperature=temperature) if todo_ids else \
        np.zeros((0, len(classes)))
    probe = _probe_pred(ws, todo_ids)
    accepted = accept_proposals(probs, probe, threshold=threshold, top_k_per_class=top_k_per_class)
    proposed = probs.argmax(1) if len(probs) else np.zeros(0, int)
    rows = [{"id": i, "method": "clip", "proposed_label": classes[p], "confidence": float(probs[r].max()),
             "accepted": bool(accepted[r]), "status": "answered"} for r, (i, p) in enumerate(zip(todo_ids, proposed))]
    result = RelabelResult(method="clip", asked=len(rows), answered=len(rows), abstained=0, failed=0,
                           accepted=int(accepted.sum()), proposals=_changes(rows, todo))
    return result, rows


def _class_names(path, classes) -> dict:
    names = {c: c.replace("_", " ") for c in classes}
    if path is None:
        return names
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LabelkitError(f"Cannot read class names file {path}: {exc.strerror}.") from None
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError:
        mapping = {}
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                cls, sep, name = line.partition(",")
                if not sep:
                    raise LabelkitError(f"{path}, line {n}: expected CLASS,NAME.")
                mapping[cls.strip()] = name.strip()
    unknown = sorted(set(mapping) - set(classes))
    if unknown:
        raise LabelkitError(f"{path} names class {unknown[0]!r}, which is not in the workspace.")
    return names | mapping


def _relabel_llm(ws, classes, todo, *, endpoint, model, api_key_env, concurrency, timeout, max_retries, backoff,
                 progress):
    texts = todo["text"].tolist()
    if ws.read_manifest().get("modality") != "text" or any(not isinstance(t, str) for t in texts):
        raise LabelkitError("--with llm needs text items; this workspace has images (use --with clip).")
    client = LLMClient(endpoint, model, cache_path=ws.root / "cache" / "llm.jsonl", api_key_env=api_key_env,
                       timeout=timeout, max_retries=max_retries, backoff=backoff)
    ids = todo["id"].tolist()
    answers: list[Answer | None] = [None] * len(ids)
    cached, done = 0, 0
    lock = threading.Lock()

    def work(r):
        nonlocal cached, done
        answer, hit = client.ask(build_messages(texts[r], classes), classes)
        with lock:
            answers[r] = answer
            cached += hit
            done += 1
            if progress:
                progress(done, len(ids))

    try:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(work, range(len(ids))))
    finally:
        client.close()
    rows = [{"id": i, "method": "llm", "proposed_label": a.label, "confidence": 1.0 if a.label else None,
             "accepted": a.label is not None, "status": a.status} for i, a in zip(ids, answers)]
    errors: dict[str, int] = {}
    for a in answers:
        if a.status == "failed":
            errors[a.error] = errors.get(a.error, 0) + 1
    count = lambda s: sum(a.status == s for a in answers)  # noqa: E731
    result = RelabelResult(method="llm", asked=len(ids), answered=count("answered"), abstained=count("abstained"),
                           failed=count("failed"), accepted=count("answered"), cached=cached,
                           proposals=_changes(rows, todo), errors=errors)
    return result, rows


def _changes(rows: list[dict], todo) -> list[dict]:
    given = dict(zip(todo["id"], todo["label"]))
    return [{"id": r["id"], "given_label": given[r["id"]], "proposed_label": r["proposed_label"],
             "confidence": r["confidence"], "accepted": r["accepted"]} for r in rows][:50]


def _store(ws: Workspace, method: str, rows: list[dict]) -> None:
    new = pa.Table.from_pylist(rows, schema=RELABELS_SCHEMA)
    items_fp = current_items_fingerprint(ws)
    # Proposals made for an earlier ingest describe other rows: they are dropped, not merged.
    if is_current(ws, ws.relabels_path, items_fp=items_fp):
        old = pq.read_table(ws.relabels_path)
        ids = set(new.column("id").to_pylist())
        keep = [not (m == method and i in ids) for m, i in zip(old.column("method").to_pylist(), old.column("id").to_pylist())]
        new = pa.concat_tables([old.filter(pa.array(keep)).cast(RELABELS_SCHEMA), new])
    write_table(with_fingerprint(new.replace_schema_metadata(None), items_fp), ws.relabels_path)


def aggregate_votes(ws: Workspace) -> np.ndarray:
    """Write and return soft labels for every usable item: normalised votes of the given label,
    the probe's prediction, accepted CLIP proposals and LLM answers (one vote each)."""
    classes = ws.classes()
    index = {c: k for k, c in enumerate(classes)}
    items = ws.read_items(columns=["id", "label_id", "error"])
    items = items[items["error"].isna() & (items["label_id"] >= 0)]
    ids = items["id"].tolist()
    row = {i: r for r, i in enumerate(ids)}
    votes = np.zeros((len(ids), len(classes)), np.float32)
    votes[np.arange(len(ids)), items["label_id"].to_numpy()] += 1
    probe = _probe_pred(ws, ids)
    if probe is not None:
        ok = probe >= 0
        votes[np.flatnonzero(ok), probe[ok]] += 1
    if ws.relabels_path.exists():
        require_current(ws, ws.relabels_path, rerun="relabel")
        rel = pq.read_table(ws.relabels_path).to_pandas()
        rel = rel[rel["accepted"] & rel["proposed_label"].notna() & rel["id"].isin(row)]
        for i, lab in zip(rel["id"], rel["proposed_label"]):
            votes[row[i], index[lab]] += 1
    soft = votes / votes.sum(1, keepdims=True)
    table = pa.table({"id": pa.array(ids, pa.string()),
                      "soft_label": pa.array(list(soft), pa.list_(pa.float32())),
                      "votes": pa.array(votes.sum(1).astype(np.int32))})
    write_table(with_fingerprint(table, current_items_fingerprint(ws)), ws.soft_labels_path)
    return soft


def apply_votes(ws: Workspace, soft: np.ndarray) -> tuple[str, int]:
    """Write the next label version (argmax of the votes; ties keep the given label); return (name, changed)."""
    classes = ws.classes()
    items = ws.read_items(columns=["id", "label", "label_id", "error"])
    items = items[items["error"].isna() & (items["label_id"] >= 0)]
    given = items["label_id"].to_numpy()
    best = soft.max(1, keepdims=True)
    new = np.where(soft[np.arange(len(given)), given] >= best[:, 0] - 1e-6, given, soft.argmax(1))
    manifest = ws.read_manifest()
    versions = manifest.setdefault("label_versions", {})
    n = 2
    while f"label_v{n}" in versions:
        n += 1
    name = f"label_v{n}"
    cls = np.asarray(classes, dtype=object)
    path = ws.label_version_path(name)
    items_fp = current_items_fingerprint(ws)
    write_table(with_fingerprint(pa.table({"id": pa.array(items["id"].tolist(), pa.string()),
                                           "label": pa.array(cls[new].tolist(), pa.string()),
                                           "given_label": pa.array(items["label"].tolist(), pa.string()),
                                           "changed": pa.array(new != given)}), items_fp), path)
    manifest = ws.read_manifest()
    manifest.setdefault("label_versions", {})[name] = {
        "path": str(path.relative_to(ws.root)), "changed": int((new != given).sum()),
        "rule": "argmax of votes (given, probe, accepted CLIP, LLM); ties keep the given label",
        "items_fingerprint": items_fp,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    ws.write_manifest(manifest)
    return name, int((new != given).sum())
