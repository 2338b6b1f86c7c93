"""Regression target errors: labelkit's pipeline against a plain cleanlab script on the same inputs.

Data: ``sample_data/make_regression.py`` (24-d vectors, price = smooth function of 6 latent
factors + N(0, 3²)), with a seeded fraction of the targets shifted by 5–13 σ, at several sizes
and shift rates. Inputs are identical for every method: the usable rows' vectors and given targets.

Methods, scored against the answer key (precision, recall, F1 of the flagged set; precision@k of
the ranking with k = number of shifted targets; seconds):

- ``labelkit``: ``labelkit ingest --task regression`` + ``labelkit issues`` (ridge / kNN probe
  chosen by CV, robust residual threshold, cleanlab's residual label quality). The held-out 20 %
  split is predicted by a model fit on the other rows, so every row is judged.
- ``cleanlab CL(Ridge)`` / ``cleanlab CL(kNN)``: what a cleanlab user writes,
  ``cleanlab.regression.learn.CleanLearning(model).find_label_issues(X, y)`` (its own k-fold
  predictions, search over the fraction of issues by refitting, bootstrapped uncertainty).
- ``outre(labelkit preds)``: cleanlab's default ``get_label_quality_scores(..., method='outre')``
  on labelkit's out-of-sample predictions, ranking only (it has no threshold).

    python bench/regression.py            # sizes 1,200 and 5,000; shift rates 5 % and 10 %
    python bench/regression.py --quick    # 1,200 rows only
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing


def _make():
    spec = importlib.util.spec_from_file_location("make_regression", ROOT / "sample_data" / "make_regression.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _scores(flags: np.ndarray | None, ranking: np.ndarray | None, truth: np.ndarray) -> dict:
    out = {}
    if flags is not None:
        tp = int((flags & truth).sum())
        p = tp / max(1, int(flags.sum()))
        r = tp / max(1, int(truth.sum()))
        out |= {"flagged": int(flags.sum()), "precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}
    if ranking is not None:  # lower = worse
        k = int(truth.sum())
        out["p_at_k"] = float(truth[np.argsort(ranking, kind="stable")[:k]].mean())
    return out


def run(n: int, shift_fraction: float, seed: int) -> list[tuple[str, dict]]:
    import pyarrow.parquet as pq
    from cleanlab.regression.learn import CleanLearning
    from cleanlab.regression.rank import get_label_quality_scores
    from sklearn.linear_model import Ridge
    from sklearn.neighbors import KNeighborsRegressor

    from labelkit.ingest import ingest
    from labelkit.issues import issues

    make = _make()
    data = make.make_regression_data(n, shift_fraction=shift_fraction, bad_cells=(), seed=seed)
    X, y, truth = data["embeddings"], data["given"], data["shifted"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        make.write_regression(Path(tmp) / "data", data)
        t = time.perf_counter()
        ingest(Path(tmp) / "data" / "targets.csv", Path(tmp) / "ws", task="regression", label_col="price",
               embedding_col="embedding")
        issues(Path(tmp) / "ws")
        seconds = time.perf_counter() - t
        table = pq.read_table(Path(tmp) / "ws" / "issues.parquet").to_pandas().set_index("id").loc[data["ids"]]
    rows.append(("labelkit", _scores(table["is_label_issue"].to_numpy(), table["label_quality"].to_numpy(), truth)
                 | {"seconds": seconds}))
    t = time.perf_counter()
    outre = get_label_quality_scores(y, table["predicted_value"].to_numpy(), method="outre")
    rows.append(("outre(labelkit preds)", _scores(None, outre, truth) | {"seconds": time.perf_counter() - t}))
    for name, model in (("cleanlab CL(Ridge)", Ridge()), ("cleanlab CL(kNN)", KNeighborsRegressor(n_neighbors=10))):
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            df = CleanLearning(model=model, seed=seed).find_label_issues(X, y)
        rows.append((name, _scores(df["is_label_issue"].to_numpy(), df["label_quality"].to_numpy(), truth)
                     | {"seconds": time.perf_counter() - t}))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=20261202)
    args = parser.parse_args(argv)
    sizes = (1200,) if args.quick else (1200, 5000)
    import cleanlab.regression.learn  # noqa: F401  (imports out of the first row's seconds)
    import torch  # noqa: F401

    import labelkit.checks  # noqa: F401
    import labelkit.tasks.regression  # noqa: F401
    print(f"{'rows':>6} {'shift':>6}  {'method':<22} {'flagged':>7} {'prec':>6} {'recall':>6} {'F1':>6} {'P@k':>6} "
          f"{'sec':>7}")
    for n in sizes:
        for frac in (0.05, 0.10):
            for name, s in run(n, frac, args.seed):
                cell = lambda k, f="{:6.3f}": f.format(s[k]) if k in s else f"{'—':>6}"
                print(f"{n:>6} {frac:>6.0%}  {name:<22} {cell('flagged', '{:7d}') if 'flagged' in s else '—':>7} "
                      f"{cell('precision')} {cell('recall')} {cell('f1')} {cell('p_at_k')} {s['seconds']:7.2f}")


if __name__ == "__main__":
    main()
