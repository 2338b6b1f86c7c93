"""Multi-label label issues: labelkit's pipeline against a plain cleanlab script on the same inputs.

For each generator noise level, the seeded sample of ``sample_data/make_multilabel.py`` (1,200
rows, 8 tags, 4 % of rows with a removed tag and 4 % with an added tag) is

- ingested and checked by labelkit (``ingest --task multilabel`` + ``issues``: the one-vs-rest
  probe chosen by CV, held-out rows predicted by a model that never saw them, cleanlab per tag);
- given to a plain cleanlab script: scikit-learn ``OneVsRestClassifier(LogisticRegression())``,
  5-fold ``cross_val_predict`` probabilities, then
  ``cleanlab.multilabel_classification.filter.find_label_issues`` and
  ``find_multilabel_issues_per_class`` on the same embeddings and given tags.

Printed per method: rows flagged, row precision / recall against the answer key, tag recall
(the planted tag named as suspect, in the right direction) and seconds.

    python bench/multilabel.py [--noise 0.15 0.3] [--rows 1200]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("make_multilabel", ROOT / "sample_data" / "make_multilabel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plain_cleanlab(X: np.ndarray, Y: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (row mask, per-tag suspect mask) from the script a cleanlab user would write."""
    from cleanlab.multilabel_classification.filter import find_label_issues, find_multilabel_issues_per_class
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.multiclass import OneVsRestClassifier

    probs = cross_val_predict(OneVsRestClassifier(LogisticRegression(max_iter=1000)), X, Y.astype(int),
                              cv=KFold(5, shuffle=True, random_state=seed), method="predict_proba")
    labels = [np.flatnonzero(row).tolist() for row in Y]
    return (np.asarray(find_label_issues(labels, probs, n_jobs=1), bool),
            np.asarray(find_multilabel_issues_per_class(labels, probs, n_jobs=1), bool))


def score(ids: list[str], tags: list[str], flagged: np.ndarray, suspect: np.ndarray, given: np.ndarray, key) -> dict:
    row = {i: r for r, i in enumerate(ids)}
    planted = np.zeros(len(ids), bool)
    planted[[row[i] for i in key["id"]]] = True
    tp = int((flagged & planted).sum())
    named = [suspect[row[i], tags.index(t)] and (given[row[i], tags.index(t)] == (kind == "added"))
             for i, t, kind in zip(key["id"], key["tag"], key["kind"])]
    return {"flagged": int(flagged.sum()), "precision": tp / max(1, flagged.sum()), "recall": tp / planted.sum(),
            "tag_recall": float(np.mean(named))}


def run(noise: float, rows: int) -> None:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from labelkit.ingest import ingest
    from labelkit.issues import issues
    from labelkit.tasks.multilabel import multi_hot, parse_labels

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        counts = _generator().make_multilabel(tmp / "data", n=rows, noise=noise)
        key = pd.read_csv(tmp / "data" / "key.csv")
        table = pq.read_table(tmp / "data" / "items.parquet")
        ids = table.column("id").to_pylist()
        lists, tags = parse_labels(table.column("tags").to_pandas())
        Y = multi_hot(lists, tags)
        X = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)

        started = time.perf_counter()
        ingest(tmp / "data" / "items.parquet", tmp / "ws", labels_col="tags", embedding_col="embedding")
        result = issues(tmp / "ws", device="cpu")
        lk_seconds = time.perf_counter() - started
        iss = pq.read_table(tmp / "ws" / "issues.parquet").to_pandas().set_index("id").loc[ids]
        lk_suspect = multi_hot(pa.array(iss["suspect_labels"].map(list).tolist(), pa.list_(pa.string())), tags)
        lk = score(ids, tags, iss["is_label_issue"].to_numpy(bool), lk_suspect, Y, key)

        started = time.perf_counter()
        mask, per_tag = plain_cleanlab(X, Y)
        cl_seconds = time.perf_counter() - started
        cl = score(ids, tags, mask, per_tag, Y, key)

    print(f"\nnoise {noise} · {counts['rows']} rows, {len(tags)} tags, {counts['removed']} removed + "
          f"{counts['added']} added tags planted; labelkit probe: {result.summary['probe']['chosen']}")
    print(f"{'method':<34}{'flagged':>8}{'precision':>11}{'recall':>8}{'tag recall':>12}{'seconds':>9}")
    for name, s, sec in (("labelkit (ingest + issues)", lk, lk_seconds),
                         ("plain cleanlab (OvR logreg, 5-fold)", cl, cl_seconds)):
        print(f"{name:<34}{s['flagged']:>8}{s['precision']:>11.3f}{s['recall']:>8.3f}{s['tag_recall']:>12.3f}{sec:>9.1f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, nargs="+", default=[0.15, 0.3])
    parser.add_argument("--rows", type=int, default=1200)
    args = parser.parse_args(argv)
    for noise in args.noise:
        run(noise, args.rows)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
