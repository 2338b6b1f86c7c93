"""Label-error detection quality: labelkit vs a plain cleanlab + logistic-regression baseline.

Protocol of the confident-learning paper (Northcutt et al., JAIR 2021, section 5): noisy labels
drawn from a random noise matrix with a given trace (noise rate 10/20/40 %) and fraction of
zero off-diagonal entries (sparsity 0 and 0.4), seeded. Both methods use the same features and
cleanlab's default filter; they differ only in the probe producing out-of-sample probabilities:

- baseline: plain 5-fold `cross_val_predict(LogisticRegression(max_iter=1000))` on raw features,
  then `cleanlab.filter.find_label_issues`;
- labelkit: `labelkit.issues.get_out_of_sample_probs` (standardised features, C chosen by
  cross-validated log-loss) then `labelkit.issues.find_label_issues`.

Also scores sample_data/digits (pixel-baseline embeddings) against its answer key.

    python bench/detect.py            # prints a Markdown table; ~2 min on 2 cores
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def prf(flagged: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    tp = int((flagged & truth).sum())
    p = tp / max(1, int(flagged.sum()))
    r = tp / max(1, int(truth.sum()))
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def baseline(X: np.ndarray, noisy: np.ndarray, seed: int = 0) -> np.ndarray:
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    probs = cross_val_predict(LogisticRegression(max_iter=1000), X, noisy, cv=cv, method="predict_proba")
    return find_label_issues(noisy, probs)


def labelkit_flags(X: np.ndarray, noisy: np.ndarray, seed: int = 0) -> np.ndarray:
    from labelkit.issues import find_label_issues, get_out_of_sample_probs

    probs, _, _ = get_out_of_sample_probs(X, noisy, seed=seed)
    return find_label_issues(noisy, probs)["is_label_issue"]


def synthetic_rows(seed: int = 0):
    from cleanlab.benchmarking.noise_generation import generate_noise_matrix_from_trace, generate_noisy_labels
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    K = 10
    py = np.bincount(y, minlength=K) / len(y)
    for rate in (0.1, 0.2, 0.4):
        for sparsity in (0.0, 0.4):
            nm = generate_noise_matrix_from_trace(K, K * (1 - rate), frac_zero_noise_rates=sparsity, py=py,
                                                  valid_noise_matrix=True, seed=seed)
            np.random.seed(seed)  # generate_noisy_labels draws from numpy's global generator
            noisy = generate_noisy_labels(y, nm)
            yield f"sklearn digits, noise {rate:.0%}, sparsity {sparsity}", X.astype(np.float32), noisy, noisy != y


def sample_digits_row():
    import pandas as pd

    from labelkit.embed import embed
    from labelkit.ingest import ingest
    from labelkit.workspace import Workspace, read_embeddings
    import tempfile

    ws = Path(tempfile.mkdtemp()) / "ws"
    ingest(ROOT / "sample_data" / "digits", ws)
    embed(ws, model="pixels")
    items = Workspace(ws).read_items()
    ids, X = read_embeddings(Workspace(ws).embeddings_path("pixels-16-std"))
    planted = set(pd.read_csv(ROOT / "sample_data" / "digits" / "flipped.csv")["id"])
    truth = np.array([i in planted for i in items["id"]])
    return "sample_data/digits (pixel baseline)", X, items["label_id"].to_numpy(), truth


def main() -> None:
    warnings.filterwarnings("ignore")
    rows = [sample_digits_row(), *synthetic_rows()]
    print("| data | true errors | baseline P / R / F1 | labelkit P / R / F1 | F1 gain |")
    print("|---|---:|---|---|---:|")
    worse = 0
    t0 = time.perf_counter()
    for name, X, noisy, truth in rows:
        b = prf(baseline(X, noisy), truth)
        o = prf(labelkit_flags(X, noisy), truth)
        worse += o[2] < b[2]
        fmt = lambda t: " / ".join(f"{v:.3f}" for v in t)
        print(f"| {name} | {int(truth.sum())} | {fmt(b)} | {fmt(o)} | {o[2] - b[2]:+.3f} |", flush=True)
    print(f"\nrows where labelkit's F1 is below the baseline's: {worse} of {len(rows)}; {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
