"""`labelkit issues --pred-probs` at scale: 1,000,000 × 100-class probabilities.

Compares the whole labelkit verb (read the .npy, validate, cleanlab, noise matrix, write Parquet)
with a bare `cleanlab.filter.find_label_issues` call on the same arrays, in the same run.
Goal: time ratio ≤ 1.2. Also prints peak RSS of each.

    python bench/issues.py [--n 1000000] [--k 100]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CLEANLAB_ONLY = """
import sys, time, resource, numpy as np
from cleanlab.filter import find_label_issues
import pyarrow.parquet as pq
t0 = time.perf_counter(); p = np.load(sys.argv[1]); y = np.load(sys.argv[2])
t = time.perf_counter(); m = find_label_issues(y, p); dt = time.perf_counter() - t
print(dt, m.sum(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - t0)
"""
LABELKIT = """
import sys, time, resource
from labelkit.issues import issues
import cleanlab.filter, cleanlab.rank, cleanlab.count, pyarrow.parquet  # imported before timing, as for cleanlab alone
t = time.perf_counter(); r = issues(sys.argv[1], pred_probs=sys.argv[2]); dt = time.perf_counter() - t
print(dt, r.summary["label_issues"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the fastest counts")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import pandas as pd

    from labelkit.ingest import ingest

    rng = np.random.default_rng(0)
    y_true = rng.integers(0, args.k, args.n)
    noisy = np.where(rng.random(args.n) < 0.1, rng.integers(0, args.k, args.n), y_true)
    logits = rng.normal(0, 1, (args.n, args.k)).astype(np.float32)
    logits[np.arange(args.n), y_true] += 3.0
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "p.npy", probs)
        np.save(tmp / "y.npy", noisy)
        pd.DataFrame({"text": np.char.add("row ", np.arange(args.n).astype(str)), "label": noisy.astype(str)}).to_parquet(tmp / "t.parquet")
        t = time.perf_counter()
        ingest(tmp / "t.parquet", tmp / "ws")
        print(f"ingest of the {args.n:,}-row table (not timed below): {time.perf_counter() - t:.1f}s")
        del probs, logits
        runs_b, runs_o = [], []
        for _ in range(args.repeat):  # interleaved, so drift in machine load hits both alike
            runs_b.append(subprocess.run([sys.executable, "-c", CLEANLAB_ONLY, str(tmp / "p.npy"), str(tmp / "y.npy")],
                                         capture_output=True, text=True, check=True).stdout.split())
            runs_o.append(subprocess.run([sys.executable, "-c", LABELKIT, str(tmp / "ws"), str(tmp / "p.npy")],
                                         capture_output=True, text=True, check=True, cwd=ROOT).stdout.split())
        base = min(runs_b, key=lambda r: float(r[0]))
        ours = min(runs_o, key=lambda r: float(r[0]))
    b, o = float(base[0]), float(ours[0])
    print(f"cleanlab find_label_issues alone: {b:.1f}s, {int(base[1]):,} flagged, peak RSS {float(base[2]):,.0f} MB")
    print(f"labelkit issues --pred-probs:     {o:.1f}s, {int(ours[1]):,} flagged, peak RSS {float(ours[2]):,.0f} MB")
    print("all runs (s): cleanlab " + " ".join(f"{float(r[0]):.2f}" for r in runs_b)
          + " | labelkit " + " ".join(f"{float(r[0]):.2f}" for r in runs_o))
    print(f"time ratio labelkit / cleanlab: {o / b:.2f} (goal <= 1.2; fastest of {args.repeat} runs each)")
    med_b, med_o = (float(np.median([float(r[0]) for r in runs])) for runs in (runs_b, runs_o))
    print(f"ratio of medians: {med_o / med_b:.2f} ({med_o:.1f}s / {med_b:.1f}s)")
    loaded = min(float(r[3]) for r in runs_b)
    print(f"for reference, np.load of the .npy + find_label_issues: {loaded:.1f}s (ratio {o / loaded:.2f})")


if __name__ == "__main__":
    main()
