"""Multi-annotator consensus: labelkit (probe + CROWDLAB) vs majority vote vs Dawid–Skene vs plain cleanlab.

Data: scikit-learn's bundled 8x8 digits (1,797 rows, 10 classes; pixels as embeddings), labelled
by simulated annotators, `--per-item` of them per row drawn at random: five honest annotators
right with probability 0.85 … 0.65, and one that answers at random on a share of the rows
(`--bad-share`). Everything is seeded; nothing is downloaded.

Compared on the same annotations, against the true digits:

- majority vote (ties to the lowest class, as labelkit's ingest does);
- Dawid–Skene (crowd-kit's EM; annotations only, no model);
- labelkit: the whole pipeline — `ingest` (wide layout, `--embedding-col`) and `issues` (probe
  chosen by CV, out of sample, on the majority vote; then CROWDLAB);
- plain cleanlab: the script a cleanlab user would write — 5-fold `cross_val_predict` of a
  scikit-learn logistic regression on the majority vote, then
  `cleanlab.multiannotator.get_label_quality_multiannotator`.

Printed: accuracy of each consensus; precision/recall of the rows each CROWDLAB run flags
(consensus ≠ majority vote, or consensus quality below both 0.5 and Q1 − 1.5·IQR) against the rows the majority vote got
wrong; Spearman correlation of each method's annotator scores with the annotators' true accuracy;
where the bad annotator ranks; seconds.

    pip install -e '.[bench]'          # crowd-kit
    python bench/multiannotator.py [--seed 0] [--per-item 3] [--bad-share 0.5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HONEST = [0.85, 0.8, 0.75, 0.7, 0.65]


def simulate(true: np.ndarray, n_classes: int, *, per_item: int, bad_share: float, seed: int):
    """Return (labels (n, M) with -1 = not labelled, true accuracy per annotator)."""
    rng = np.random.default_rng(seed)
    n, M = len(true), len(HONEST) + 1
    labels = np.full((n, M), -1, np.int64)
    bad_rows = rng.random(n) < bad_share
    for i in range(n):
        pool = np.arange(M) if bad_rows[i] else np.arange(M - 1)
        chosen = rng.choice(pool, size=per_item, replace=False) if not bad_rows[i] else np.r_[
            M - 1, rng.choice(np.arange(M - 1), size=per_item - 1, replace=False)]
        for a in chosen:
            if a == M - 1:
                labels[i, a] = rng.integers(n_classes)
            elif rng.random() < HONEST[a]:
                labels[i, a] = true[i]
            else:
                labels[i, a] = rng.choice([k for k in range(n_classes) if k != true[i]])
    given = labels >= 0
    accuracy = np.array([(labels[given[:, a], a] == true[given[:, a]]).mean() for a in range(M)])
    return labels, accuracy


def pr(flags: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    tp = (flags & truth).sum()
    return float(tp / max(1, flags.sum())), float(tp / max(1, truth.sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-item", type=int, default=3)
    parser.add_argument("--bad-share", type=float, default=0.5)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from scipy.stats import spearmanr
    from sklearn.datasets import load_digits

    from labelkit.tasks.multiannotator import get_majority_vote

    digits = load_digits()
    X = (digits.data / np.linalg.norm(digits.data, axis=1, keepdims=True)).astype(np.float32)
    true = digits.target.astype(np.int64)
    K = 10
    labels, accuracy = simulate(true, K, per_item=args.per_item, bad_share=args.bad_share, seed=args.seed)
    names = [f"a{i + 1}" for i in range(labels.shape[1])]
    majority, _ = get_majority_vote(labels, K)
    majority_wrong = majority != true
    rows = []

    def row(method, consensus, seconds, scores=None, flags=None):
        rho = float(spearmanr(scores, accuracy)[0]) if scores is not None else None
        rank = len(scores) - int(np.argsort(np.argsort(scores))[-1]) if scores is not None else None
        p, r = pr(flags, majority_wrong) if flags is not None else (None, None)
        rows.append({"method": method, "accuracy": float((consensus == true).mean()), "flag_precision": p,
                     "flag_recall": r, "annotator_spearman": rho, "bad_annotator_rank": rank, "seconds": seconds})

    row("majority vote", majority, 0.0)

    # Dawid–Skene (crowd-kit): annotations only.
    from crowdkit.aggregation import DawidSkene

    r_, c_ = np.nonzero(labels >= 0)
    long = pd.DataFrame({"task": r_, "worker": [names[c] for c in c_], "label": labels[r_, c_]})
    t = time.perf_counter()
    ds = DawidSkene(n_iter=100).fit(long)
    ds_labels = ds.labels_.reindex(range(len(true))).to_numpy().astype(np.int64)
    seconds = time.perf_counter() - t
    # A worker's estimated accuracy: the diagonal of its confusion matrix weighted by the class priors.
    errors = ds.errors_  # index (worker, label), columns = true label: P(label | true, worker)
    ds_scores = np.array([float(sum(ds.priors_[k] * errors.loc[(w, k), k] for k in range(K)
                                    if (w, k) in errors.index)) for w in names])
    row("Dawid–Skene (crowd-kit)", ds_labels, seconds, ds_scores)

    # labelkit: the whole pipeline on a Parquet table (wide layout, embeddings in a column).
    from labelkit.ingest import ingest
    from labelkit.issues import issues

    with tempfile.TemporaryDirectory() as tmp:
        table = {"id": [f"d{i:04d}" for i in range(len(true))],
                 "embedding": pa.array(list(X), pa.list_(pa.float32()))}
        for a, name in enumerate(names):
            table[name] = pa.array([str(v) if v >= 0 else None for v in labels[:, a]], pa.string())
        pq.write_table(pa.table(table), Path(tmp) / "digits.parquet")
        t = time.perf_counter()
        ingest(Path(tmp) / "digits.parquet", Path(tmp) / "ws", annotator_cols=names, embedding_col="embedding")
        result = issues(Path(tmp) / "ws", seed=args.seed)
        seconds = time.perf_counter() - t
        iss = pq.read_table(Path(tmp) / "ws" / "issues.parquet").to_pandas()
    lk_consensus = iss["suggested_label"].astype(int).to_numpy()
    quality = {r["annotator"]: r["quality"] for r in result.summary["annotators"]}
    lk_scores = np.array([quality[n] for n in names])
    row(f"labelkit (probe {result.summary['probe'].get('chosen') or result.summary['probe']['features']} + CROWDLAB)",
        lk_consensus, seconds, lk_scores, iss["is_label_issue"].to_numpy())

    # Plain cleanlab: cross_val_predict on the majority vote, then CROWDLAB.
    from cleanlab.multiannotator import get_label_quality_multiannotator
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    t = time.perf_counter()
    probs = cross_val_predict(LogisticRegression(max_iter=1000), X, majority, cv=5, method="predict_proba")
    out = get_label_quality_multiannotator(pd.DataFrame(np.where(labels >= 0, labels, np.nan), columns=names), probs,
                                           verbose=False)
    seconds = time.perf_counter() - t
    cl = out["label_quality"]
    cl_consensus = cl["consensus_label"].to_numpy().astype(np.int64)
    q = cl["consensus_quality_score"].to_numpy()
    q1, q3 = np.quantile(q, [0.25, 0.75])
    cl_flags = (cl_consensus != majority) | (q < min(0.5, q1 - 1.5 * (q3 - q1)))  # labelkit's rule, cleanlab's numbers
    cl_scores = out["annotator_stats"]["annotator_quality"].reindex(names).to_numpy()
    row("plain cleanlab (logreg + CROWDLAB)", cl_consensus, seconds, cl_scores, cl_flags)

    print(f"digits: {len(true)} rows, {K} classes, {args.per_item} annotators per row, bad annotator on "
          f"{args.bad_share:.0%} of rows, seed {args.seed}")
    print("true annotator accuracy: " + ", ".join(f"{n} {a:.3f}" for n, a in zip(names, accuracy)))
    print(f"majority vote wrong on {int(majority_wrong.sum())} rows\n")
    header = f"{'method':52s} {'accuracy':>8s} {'flag P':>7s} {'flag R':>7s} {'ann. ρ':>7s} {'bad rank':>8s} {'seconds':>8s}"
    print(header)
    fmt = lambda v, w, d=3: f"{v:{w}.{d}f}" if isinstance(v, float) else f"{'—' if v is None else v:>{w}}"
    for r in rows:
        print(f"{r['method']:52s} {fmt(r['accuracy'], 8)} {fmt(r['flag_precision'], 7)} {fmt(r['flag_recall'], 7)} "
              f"{fmt(r['annotator_spearman'], 7)} {fmt(r['bad_annotator_rank'], 8)} {fmt(r['seconds'], 8, 2)}")
    print("\nbad rank: position of the random annotator when annotators are sorted best first (6 = ranked last).")


if __name__ == "__main__":
    main()
