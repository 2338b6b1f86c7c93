"""`labelkit select`: training subsets by RS2, DSIR, SMOTE and confident-learning pruning.

Each method is a pure function over arrays (``rs2_schedule``, ``dsir_log_weights``, ``smote``,
``find_prune_mask``) plus a workspace wrapper that writes ``subsets/NAME.parquet``:

========== ==================================================================================
column     meaning
========== ==================================================================================
id         row id (synthetic SMOTE rows get ``smote-<n>``)
label      the row's label when selected
synthetic  true for SMOTE rows
parent_ids the two real rows a SMOTE row interpolates (empty otherwise)
epoch      RS2's epoch (null for other methods): train on rows of epoch e in epoch e
embedding  SMOTE rows only: the synthetic embedding
log_weight DSIR only: the example's log importance weight
========== ==================================================================================

(The module is not called ``select`` so that it does not shadow the standard library's.)
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from labelkit.arrays import empty_lists
from labelkit.errors import LabelkitError, check_in_range
from labelkit.tasks import task_of_manifest
from labelkit.tasks._classify import class_counts
from labelkit.workspace import (Workspace, check_name, current_items_fingerprint, embedding_array, require_current,
                                with_fingerprint, write_table)

METHODS = ("rs2", "dsir", "smote", "prune")
# The options each method accepts (the keyword arguments of select_<method> besides the workspace and name).
METHOD_OPTIONS = {"rs2": ("fraction", "epochs", "class_balanced", "seed"),
                  "dsir": ("target", "k", "n_buckets", "smoothing", "seed"),
                  "smote": ("k_neighbors", "sampling_strategy", "undersample", "seed"),
                  "prune": ("drop", "keep_fraction")}
OPTION_FLAGS = {"n_buckets": "--buckets"}  # CLI spelling where it differs from --name-with-dashes
PRUNE_DROP = ("label_issues", "duplicates", "outliers")
# Pseudo-count per bucket of the bag-of-ngrams estimates: small, so that a target of a few
# sentences is not swamped by a uniform prior over 10,000 buckets.
DSIR_SMOOTHING = 0.01


# ---------------------------------------------------------------------------------------------
# RS2


def _rs2_chunks(n: int, size: int, epochs: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Consecutive chunks of `size` from shuffled passes over range(n); a chunk that crosses the
    end of a pass is completed from the next pass, whose order puts the rows just taken last."""
    perm, pos, out = rng.permutation(n), 0, []
    for _ in range(epochs):
        if pos + size <= n:
            out.append(perm[pos:pos + size])
            pos += size
            continue
        head = perm[pos:]
        fresh = rng.permutation(n)
        taken = np.isin(fresh, head)
        perm = np.concatenate([fresh[~taken], fresh[taken]])
        pos = size - len(head)
        out.append(np.concatenate([head, perm[:pos]]))
    return out


def rs2_schedule(labels: np.ndarray, *, fraction: float, epochs: int, class_balanced: bool = False,
                 seed: int = 0) -> list[np.ndarray]:
    """Return, for each epoch, the row indices RS2 trains on.

    Repeated Sampling of Random Subsets without replacement: shuffle the rows, give each epoch the
    next ⌈fraction·n⌉ of them, reshuffle when a pass is used up, so with fraction = 1/m every row
    is seen exactly once in each block of m epochs (when m divides n). ``class_balanced`` runs the
    same per class with ⌈fraction·n_c⌉ rows of class c per epoch, keeping class proportions.

    References: Okanovic et al., "Repeated Random Sampling for Minimizing the Time-to-Accuracy of
    Learning", ICLR 2024.
    """
    check_in_range(fraction, "fraction", "rs2", low=0, high=1, low_closed=False)
    check_in_range(epochs, "epochs", "rs2", low=1, kind="an int")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    if not class_balanced:
        return _rs2_chunks(len(labels), math.ceil(fraction * len(labels)), epochs, rng)
    per_class = []
    for k in np.unique(labels):
        rows = np.flatnonzero(labels == k)
        chunks = _rs2_chunks(len(rows), math.ceil(fraction * len(rows)), epochs, rng)
        per_class.append([rows[c] for c in chunks])
    return [np.sort(np.concatenate([pc[e] for pc in per_class])) for e in range(epochs)]


# ---------------------------------------------------------------------------------------------
# DSIR


def hashed_ngram_counts(texts: Sequence[str], *, n_buckets: int = 10_000, n_jobs: int | None = None):
    """Return a sparse (n_texts, n_buckets) matrix of hashed unigram + bigram counts (lowercased words).

    Large inputs are hashed in chunks on `n_jobs` processes (default: all cores); the hashing is
    stateless, so the result does not depend on the chunking.
    """
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import HashingVectorizer

    vec = HashingVectorizer(n_features=n_buckets, ngram_range=(1, 2), alternate_sign=False, norm=None,
                            lowercase=True, token_pattern=r"(?u)\b\w+\b", dtype=np.float32)
    n_jobs = n_jobs or os.cpu_count() or 1
    if n_jobs == 1 or len(texts) < 50_000:
        return vec.transform(texts).tocsr()
    from joblib import Parallel, delayed

    step = -(-len(texts) // (4 * n_jobs))
    parts = Parallel(n_jobs=n_jobs)(delayed(vec.transform)(texts[i:i + step]) for i in range(0, len(texts), step))
    return sp.vstack(parts).tocsr()


def cluster_bucket_counts(embeddings: np.ndarray, target_embeddings: np.ndarray, *, n_buckets: int = 64,
                          seed: int = 0):
    """Return (raw, target) one-hot bucket matrices from k-means clusters fitted on both sets (images)."""
    import scipy.sparse as sp
    from sklearn.cluster import MiniBatchKMeans

    k = int(min(n_buckets, len(embeddings) + len(target_embeddings)))
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=4096)
    km.fit(np.concatenate([embeddings, target_embeddings]))

    def onehot(X):
        c = km.predict(X)
        return sp.csr_matrix((np.ones(len(c), np.float32), (np.arange(len(c)), c)), shape=(len(c), k))

    return onehot(embeddings), onehot(target_embeddings)


def ngram_log_distribution(counts, *, smoothing: float = DSIR_SMOOTHING) -> np.ndarray:
    """Return log of the add-`smoothing` bag-of-ngrams distribution fitted to the rows of `counts`."""
    totals = np.asarray(counts.sum(0)).ravel().astype(np.float64) + smoothing
    return np.log(totals) - np.log(totals.sum())


def dsir_log_weights(raw_counts, target_counts, *, smoothing: float = DSIR_SMOOTHING) -> np.ndarray:
    r"""Return each raw example's log importance weight :math:`\sum_j c_{ij} (\log \hat p_j - \log \hat q_j)`.

    :math:`\hat p` and :math:`\hat q` are the bag-of-ngrams distributions of the target and the raw
    data (add-`smoothing` estimates over the buckets), :math:`c_{ij}` the count of bucket j in
    example i.

    References: Xie et al., "Data Selection for Language Models via Importance Resampling",
    NeurIPS 2023.
    """
    log_ratio = ngram_log_distribution(target_counts, smoothing=smoothing) - ngram_log_distribution(raw_counts, smoothing=smoothing)
    return np.asarray(raw_counts @ log_ratio).ravel()


def gumbel_top_k(log_weights: np.ndarray, k: int, *, seed: int = 0) -> np.ndarray:
    """Return k indices sampled without replacement with probability ∝ exp(log_weights) (Gumbel top-k)."""
    rng = np.random.default_rng(seed)
    keys = log_weights + rng.gumbel(size=len(log_weights))
    top = np.argpartition(-keys, k - 1)[:k] if k < len(keys) else np.arange(len(keys))
    return top[np.argsort(-keys[top], kind="stable")]


def kl_reduction(raw_counts, target_counts, selected: np.ndarray, *, smoothing: float = DSIR_SMOOTHING) -> float:
    """Return KL(p̂_target ‖ q̂_raw) − KL(p̂_target ‖ p̂_selected), DSIR's KL-reduction metric (> 0 is better)."""
    log_p = ngram_log_distribution(target_counts, smoothing=smoothing)
    p = np.exp(log_p)
    kl_raw = float((p * (log_p - ngram_log_distribution(raw_counts, smoothing=smoothing))).sum())
    kl_sel = float((p * (log_p - ngram_log_distribution(raw_counts[selected], smoothing=smoothing))).sum())
    return kl_raw - kl_sel


# ---------------------------------------------------------------------------------------------
# SMOTE


def smote(embeddings: np.ndarray, labels: np.ndarray, *, k_neighbors: int = 5, sampling_strategy="auto",
          undersample=None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (X_resampled, y_resampled, source, parents) by imbalanced-learn's SMOTE.

    The output equals ``SMOTE(k_neighbors=k, sampling_strategy=..., random_state=seed)
    .fit_resample(X, y)`` (then ``RandomUnderSampler(sampling_strategy=undersample)`` when given,
    the paper's combination with undersampling of the majority). `source[r]` is the input row of
    output row r, or −1 for a synthetic row; `parents[r]` the two input rows whose segment the
    synthetic row lies on (a minority row and one of its k nearest same-class neighbours),
    recovered geometrically; (−1, −1) for real rows.

    References: Chawla et al., "SMOTE: Synthetic Minority Over-sampling Technique", JAIR 2002.
    """
    from imblearn.over_sampling import SMOTE

    labels = np.asarray(labels)
    check_in_range(k_neighbors, "k_neighbors", "smote", low=1, kind="an int")
    sm = SMOTE(k_neighbors=k_neighbors, sampling_strategy=sampling_strategy, random_state=seed)
    try:
        X_res, y_res = sm.fit_resample(embeddings, labels)
    except ValueError as exc:
        values, counts = np.unique(labels, return_counts=True)
        grown = {v for v, n_new in getattr(sm, "sampling_strategy_", {}).items() if n_new > 0} or set(values)
        small = [(v, c) for v, c in zip(values, counts) if c <= k_neighbors and v in grown]
        if small and "n_neighbors" in str(exc):
            v, c = min(small, key=lambda t: t[1])
            raise LabelkitError(f"Class {v!r} has {c} rows; SMOTE with k_neighbors={k_neighbors} needs at least "
                                f"{k_neighbors + 1} (pass --k-neighbors {max(1, c - 1)} or fewer, or merge the class)."
                                ) from None
        raise LabelkitError(f"SMOTE cannot resample these labels: {exc}") from None
    n = len(labels)
    source = np.concatenate([np.arange(n), np.full(len(X_res) - n, -1)])
    parents = np.full((len(X_res), 2), -1)
    parents[n:] = _smote_parents(embeddings, labels, X_res[n:], y_res[n:], k_neighbors)
    if undersample is not None:
        from imblearn.under_sampling import RandomUnderSampler

        rus = RandomUnderSampler(sampling_strategy=undersample, random_state=seed)
        try:
            X_res, y_res = rus.fit_resample(X_res, y_res)
        except ValueError as exc:
            raise LabelkitError(f"Random undersampling with sampling_strategy={undersample!r} failed: {exc}") from None
        keep = rus.sample_indices_
        source, parents = source[keep], parents[keep]
    return X_res, y_res, source, parents


def _smote_parents(X: np.ndarray, y: np.ndarray, synth: np.ndarray, synth_y: np.ndarray, k: int) -> np.ndarray:
    """For each synthetic row, the (row, neighbour) pair of its class whose segment passes closest."""
    from sklearn.neighbors import NearestNeighbors

    out = np.full((len(synth), 2), -1)
    for c in np.unique(synth_y):
        rows = np.flatnonzero(y == c)
        Xc = X[rows].astype(np.float64)
        nbrs = NearestNeighbors(n_neighbors=min(k + 1, len(rows))).fit(Xc).kneighbors(Xc, return_distance=False)[:, 1:]
        todo = np.flatnonzero(synth_y == c)
        S = synth[todo].astype(np.float64)
        n_cand = min(len(rows), 2 * k + 2)
        cands = NearestNeighbors(n_neighbors=n_cand).fit(Xc).kneighbors(S, return_distance=False)
        everyone = np.arange(len(rows))
        for s_i, (s, cand) in enumerate(zip(S, cands)):
            tol = 1e-8 * max(1.0, float((s ** 2).sum()))
            for pool in (cand, everyone):  # nearby rows first; all rows of the class if none fits
                a = Xc[pool][:, None, :]  # (c, 1, d)
                ab = Xc[nbrs[pool]] - a  # (c, k, d)
                t = np.clip(((s - a) * ab).sum(-1) / np.maximum((ab ** 2).sum(-1), 1e-30), 0, 1)
                resid = ((a + t[..., None] * ab - s) ** 2).sum(-1)
                i, j = np.unravel_index(np.argmin(resid), resid.shape)
                if resid[i, j] <= tol:
                    break
            out[todo[s_i]] = (rows[pool[i]], rows[nbrs[pool[i], j]])
    return out


# ---------------------------------------------------------------------------------------------
# Pruning


def find_prune_mask(issues, *, drop: Sequence[str] = ("label_issues",), keep_fraction: float | None = None) -> np.ndarray:
    """Return the mask of rows to keep from an issues table (DataFrame of `labelkit issues`).

    `drop` removes label issues, later copies of duplicates and/or outliers; `keep_fraction`
    instead keeps that fraction of rows with the highest label quality.
    """
    if keep_fraction is not None:
        check_in_range(keep_fraction, "keep_fraction", "prune", low=0, high=1, low_closed=False)
        n_keep = math.ceil(keep_fraction * len(issues))
        order = np.argsort(-issues["label_quality"].to_numpy(), kind="stable")
        keep = np.zeros(len(issues), bool)
        keep[order[:n_keep]] = True
        return keep
    bad = sorted(set(drop) - set(PRUNE_DROP))
    if bad:
        raise LabelkitError(f"Cannot drop {bad[0]!r}; choose from {', '.join(PRUNE_DROP)}.")
    keep = np.ones(len(issues), bool)
    if "label_issues" in drop:
        keep &= ~issues["is_label_issue"].to_numpy(bool)
    if "duplicates" in drop:
        keep &= issues["duplicate_of"].isna().to_numpy()
    if "outliers" in drop:
        keep &= ~issues["is_outlier"].to_numpy(bool)
    return keep


# ---------------------------------------------------------------------------------------------
# The verb


@dataclass
class SelectResult:
    name: str
    method: str
    path: Path
    size: int
    class_counts_before: dict
    class_counts_after: dict
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "method": self.method, "path": str(self.path), "size": self.size,
                "class_counts_before": self.class_counts_before, "class_counts_after": self.class_counts_after,
                **self.details}


def _usable(ws: Workspace):
    items = ws.read_items(columns=["id", "label", "label_id", "text", "error"])
    return items[items["error"].isna() & (items["label_id"] >= 0)].reset_index(drop=True)


def _write_subset(ws: Workspace, name: str, method: str, columns: dict, before: dict, classes: list[str],
                  details: dict) -> SelectResult:
    n = len(columns["id"])
    table = pa.table({
        "id": pa.array(columns["id"], pa.string()),
        "label": pa.array(columns["label"], pa.string()),
        "synthetic": pa.array(columns.get("synthetic", [False] * n), pa.bool_()),
        "parent_ids": pa.array(columns.get("parent_ids", [[] for _ in range(n)]), pa.list_(pa.string())),
        "epoch": pa.array(columns.get("epoch", [None] * n), pa.int32()),
        **({"embedding": columns["embedding"]} if "embedding" in columns else {}),
        **({"log_weight": pa.array(columns["log_weight"], pa.float64())} if "log_weight" in columns else {}),
    })
    if "epoch" in columns:
        after = class_counts([lab for lab, e in zip(columns["label"], columns["epoch"]) if e == 0], classes)
        details = {"per_epoch": True, **details}
    else:
        after = class_counts(columns["label"], classes)
    return _record_subset(ws, name, method, table, before, after, details)


def _record_subset(ws: Workspace, name: str, method: str, table: pa.Table, before: dict, after: dict,
                   details: dict) -> SelectResult:
    """Write ``subsets/NAME.parquet`` and its manifest record; return the SelectResult."""
    items_fp = current_items_fingerprint(ws)
    path = write_table(with_fingerprint(table, items_fp), ws.subset_path(name))
    result = SelectResult(name=name, method=method, path=path.relative_to(ws.root), size=table.num_rows,
                          class_counts_before=before, class_counts_after=after, details=details)
    record = dict(ws.read_manifest().get("stages", {}).get("select", {}))
    record[name] = {k: v for k, v in result.to_dict().items() if k != "name"} | {"items_fingerprint": items_fp}
    ws.update_stage("select", record)
    return result


def select(workspace: Workspace | Path | str = "labelkit-out", method: str = "prune", *, name: str | None = None,
           **options) -> SelectResult:
    """Run one selection method on the workspace and write ``subsets/NAME.parquet``.

    `options` go to :func:`select_rs2`, :func:`select_dsir`, :func:`select_smote` or :func:`select_prune`.
    """
    funcs = {"rs2": select_rs2, "dsir": select_dsir, "smote": select_smote, "prune": select_prune}
    if method not in funcs:
        raise LabelkitError(f"Unknown selection method {method!r}; choose from {', '.join(METHODS)}.")
    stray = sorted(set(options) - set(METHOD_OPTIONS[method]))
    if stray:
        flag = OPTION_FLAGS.get(stray[0], "--" + stray[0].replace("_", "-"))
        raise LabelkitError(f"{flag} does not apply to {method}.")
    if method == "dsir" and ("target" not in options or "k" not in options):
        raise LabelkitError("dsir needs --target TARGET and --k N.")
    name = check_name(method if name is None else name, "select")
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    task = task_of_manifest(ws.read_manifest()) if ws.manifest_path.exists() else None
    if task is not None and method not in task.select_methods:
        raise LabelkitError(f"select {method} does not support --task {task.name} yet; use select prune.")
    return funcs[method](ws, name=name, **options)


def select_rs2(ws: Workspace, *, name: str = "rs2", fraction: float = 0.1, epochs: int = 10,
               class_balanced: bool = False, seed: int = 0) -> SelectResult:
    """Write an RS2 schedule: (epoch, id) rows, ⌈fraction·n⌉ per epoch (see :func:`rs2_schedule`)."""
    ws.require()
    classes = ws.classes()
    items = _usable(ws)
    schedule = rs2_schedule(items["label_id"].to_numpy(), fraction=fraction, epochs=epochs,
                            class_balanced=class_balanced, seed=seed)
    rows = np.concatenate(schedule)
    epoch = np.concatenate([np.full(len(s), e) for e, s in enumerate(schedule)])
    ids, labels = items["id"].to_numpy()[rows], items["label"].to_numpy()[rows]
    return _write_subset(ws, name, "rs2", {"id": ids.tolist(), "label": labels.tolist(), "epoch": epoch.tolist()},
                         class_counts(items["label"], classes), classes,
                         {"fraction": fraction, "epochs": epochs, "class_balanced": class_balanced, "seed": seed,
                          "rows_per_epoch": int(len(schedule[0]))})


def _read_target_texts(path: Path) -> list[str]:
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix in (".txt", ""):
            return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        frame = {".csv": pd.read_csv, ".tsv": lambda p: pd.read_csv(p, sep="\t"), ".jsonl": lambda p: pd.read_json(p, lines=True),
                 ".parquet": pd.read_parquet}.get(suffix)
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelkitError(f"Cannot read target file {path}: {exc}.") from None
    if frame is None:
        raise LabelkitError(f"Target {path} must be a workspace folder or a .txt/.csv/.tsv/.jsonl/.parquet file.")
    df = frame(path)
    if "text" not in df.columns:
        raise LabelkitError(f"Target table {path} has no 'text' column (columns: {', '.join(map(str, df.columns))}).")
    return df["text"].dropna().astype(str).tolist()


def select_dsir(ws: Workspace, *, name: str = "dsir", target: Path | str, k: int, n_buckets: int | None = None,
                smoothing: float = DSIR_SMOOTHING, seed: int = 0) -> SelectResult:
    """Write the k rows DSIR resamples towards `target` (a workspace folder or a file of texts).

    Text workspaces use hashed unigrams + bigrams (10,000 buckets by default); image workspaces use
    k-means clusters of the embeddings as buckets (64 by default; the target must be a workspace
    embedded with the same model).
    """
    from labelkit.features import load_workspace_embeddings

    ws.require()
    manifest = ws.read_manifest()
    classes = manifest["classes"]
    items = _usable(ws)
    check_in_range(k, "k", "dsir", low=1, high=len(items), kind="an int")
    target = Path(target)
    target_ws = Workspace(target) if target.is_dir() else None
    if target.is_dir() and not target_ws.exists():
        raise LabelkitError(f"Target {target} is a folder but not a labelkit workspace (no manifest.json/items.parquet).")
    if not target.exists():
        raise LabelkitError(f"Target {target} does not exist.")
    if manifest.get("modality") == "text" or items["text"].notna().all():
        texts = items["text"].fillna("").tolist()
        target_texts = (_usable(target_ws)["text"].dropna().tolist() if target_ws else _read_target_texts(target))
        if not target_texts:
            raise LabelkitError(f"Target {target} has no texts.")
        n_buckets = n_buckets or 10_000
        raw, tgt = hashed_ngram_counts(texts, n_buckets=n_buckets), hashed_ngram_counts(target_texts, n_buckets=n_buckets)
        features = "hashed unigrams+bigrams"
    else:
        if target_ws is None:
            raise LabelkitError("For an image workspace the DSIR target must be another workspace, embedded with the same model.")
        key, ids, X = load_workspace_embeddings(ws)
        row = {i: r for r, i in enumerate(ids)}
        try:
            _, _, Xt = load_workspace_embeddings(target_ws, key)
        except LabelkitError:
            raise LabelkitError(f"Target workspace {target} has no {key} embeddings; run "
                                f"`labelkit embed -w {target} --model {key}` first.") from None
        n_buckets = n_buckets or 64
        raw, tgt = cluster_bucket_counts(X[[row[i] for i in items["id"]]], Xt, n_buckets=n_buckets, seed=seed)
        features = f"k-means buckets of {key}"
    shared = np.asarray((raw.sum(0) > 0)).ravel() & np.asarray((tgt.sum(0) > 0)).ravel()
    if not shared.any():
        raise LabelkitError(f"Target {target} shares no {features.split(' of ')[0]} with the workspace; DSIR has "
                            "nothing to match (is it the right target?).")
    log_w = dsir_log_weights(raw, tgt, smoothing=smoothing)
    chosen = np.sort(gumbel_top_k(log_w, k, seed=seed))
    kl = kl_reduction(raw, tgt, chosen, smoothing=smoothing)
    return _write_subset(ws, name, "dsir", {"id": items["id"].to_numpy()[chosen].tolist(),
                                            "label": items["label"].to_numpy()[chosen].tolist(),
                                            "log_weight": log_w[chosen].tolist()},
                         class_counts(items["label"], classes), classes,
                         {"target": str(target), "k": k, "features": features, "n_buckets": n_buckets,
                          "kl_reduction": kl, "seed": seed})


def select_smote(ws: Workspace, *, name: str = "smote", k_neighbors: int = 5, sampling_strategy="auto",
                 undersample=None, seed: int = 0) -> SelectResult:
    """Write the real rows plus SMOTE's synthetic rows (embeddings and parent ids) of the workspace."""
    from labelkit.features import load_workspace_embeddings

    ws.require()
    classes = ws.classes()
    items = _usable(ws)
    key, ids, X = load_workspace_embeddings(ws)
    row = {i: r for r, i in enumerate(ids)}
    X = X[[row[i] for i in items["id"]]]
    labels = items["label"].to_numpy(dtype=object)
    X_res, y_res, source, parents = smote(X, labels, k_neighbors=k_neighbors, sampling_strategy=sampling_strategy,
                                          undersample=undersample, seed=seed)
    item_ids = items["id"].to_numpy()
    synthetic = source < 0
    out_ids = [item_ids[s] if s >= 0 else f"smote-{n}" for n, s in enumerate(source)]
    par = [[] if s >= 0 else [item_ids[p[0]], item_ids[p[1]]] for s, p in zip(source, parents)]
    emb = embedding_array(np.where(synthetic[:, None], X_res, 0).astype(np.float32))
    emb = pa.FixedSizeListArray.from_arrays(emb.values, X.shape[1], mask=pa.array(~synthetic))
    return _write_subset(ws, name, "smote", {"id": out_ids, "label": list(map(str, y_res)), "synthetic": synthetic.tolist(),
                                             "parent_ids": par, "embedding": emb},
                         class_counts(items["label"], classes), classes,
                         {"embedding_key": key, "synthetic_rows": int(synthetic.sum()), "k_neighbors": k_neighbors,
                          "sampling_strategy": sampling_strategy, "undersample": undersample, "seed": seed})


def select_prune(ws: Workspace, *, name: str = "prune", drop: Sequence[str] = ("label_issues",),
                 keep_fraction: float | None = None) -> SelectResult:
    """Write the rows that survive confident-learning pruning (see :func:`find_prune_mask`)."""
    import pyarrow.parquet as pq

    ws.require()
    if not ws.issues_path.exists():
        raise LabelkitError(f"No issues in {ws.root}; run `labelkit issues -w {ws.root}` first.")
    require_current(ws, ws.issues_path)
    issues = pq.read_table(ws.issues_path).to_pandas()
    keep = find_prune_mask(issues, drop=drop, keep_fraction=keep_fraction)
    rows = task_of_manifest(ws.read_manifest()).prune_rows(ws, issues, keep)
    n = int(keep.sum())
    table = pa.table({"id": pa.array(issues["id"][keep], pa.string(), from_pandas=True), "label": rows.label,
                      "synthetic": pa.array(np.zeros(n, bool)), "parent_ids": empty_lists(n),
                      "epoch": pa.nulls(n, pa.int32()), **rows.columns})
    details = {"dropped": int((~keep).sum()), "drop": list(drop) if keep_fraction is None else [],
               "keep_fraction": keep_fraction, **rows.details}
    return _record_subset(ws, name, "prune", table, rows.before, rows.after, details)
