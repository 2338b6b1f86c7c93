"""`labelkit ingest --embedding-col` + `labelkit issues` at 100k, 300k and 1M rows, against cleanlab Datalab.

Synthetic clustered embeddings: 100 classes, 512-d unit rows (a class centre plus a spread in a
16-d subspace of its own plus isotropic noise: neighbours are close, as in real embedding
spaces, not the near-equidistant points of isotropic noise), 5 % of labels flipped to another
class, 1 % of rows replaced by a near-copy (cosine ≥ 0.9997) of another row with its label.

    python bench/scale.py [--sizes 100000,300000,1000000] [--datalab-rows 100000] [--no-recall]

For each size, each command runs in its own process (peak RSS from wait4); printed: seconds per
phase (from the manifest's issues record), total seconds, peak RSS against the budget
3 x (embeddings + probabilities) + 1 GB, precision/recall of the planted flips and duplicate
pairs, the neighbour index used, recall@10 of that index against exact search on 1,000
query rows, the probe chosen and its fold cap, the seconds of each check (its run() timed in the
`issues` process; a check over 10 % of the total is named) and the 1-minute load average. Then the growth exponent of total time between the smallest and largest size, and
Datalab `find_issues(features=X)` on the same rows at `--datalab-rows` (if it runs past
`--datalab-timeout` seconds, at 20k and 50k instead, with labelkit at those sizes too).
Targets: 1M ≤ 600 s on 2 cores, exponent ≤ 1.15, flip and duplicate recall within 0.02 of the
smallest size, faster than Datalab.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
N_CLASSES, DIM, FLIP, DUP = 100, 512, 0.05, 0.01


def make_data(n: int, *, seed: int = 0, intrinsic: int = 16, spread: float = 0.6, noise: float = 0.1):
    """Return (X float32 (n, 512) unit rows, true labels, given labels, dup source rows, dup copy rows)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((N_CLASSES, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = rng.standard_normal((N_CLASSES, intrinsic, DIM), dtype=np.float32) / np.float32(np.sqrt(DIM * intrinsic))
    y = rng.integers(0, N_CLASSES, n)
    X = np.empty((n, DIM), np.float32)
    for c in range(N_CLASSES):
        rows = np.flatnonzero(y == c)
        z = rng.standard_normal((len(rows), intrinsic), dtype=np.float32)
        X[rows] = centres[c] + spread * (z @ bases[c])
        X[rows] += rng.standard_normal((len(rows), DIM), dtype=np.float32) * np.float32(noise / np.sqrt(DIM))
    n_dup = int(DUP * n)
    src = rng.choice(n, n_dup, replace=False)
    dst = rng.choice(np.setdiff1d(np.arange(n), src), n_dup, replace=False)
    scale = np.linalg.norm(X[src], axis=1, keepdims=True) * np.float32(0.02 / np.sqrt(DIM))
    X[dst] = X[src] + rng.standard_normal((n_dup, DIM), dtype=np.float32) * scale
    y[dst] = y[src]
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    given = y.copy()
    flipped = rng.choice(n, int(FLIP * n), replace=False)
    given[flipped] = (y[flipped] + rng.integers(1, N_CLASSES, len(flipped))) % N_CLASSES
    return X, y, given, src, dst


def write_table(path: Path, X: np.ndarray, given: np.ndarray) -> None:
    """Write (id, label, emb) as Parquet, in row groups, without a Python object per row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = pa.array([f"c{k:02d}" for k in range(N_CLASSES)])
    with pq.ParquetWriter(path, pa.schema([("id", pa.string()), ("label", pa.string()),
                                           ("emb", pa.list_(pa.float32(), DIM))])) as writer:
        for s in range(0, len(X), 131072):
            e = min(len(X), s + 131072)
            writer.write_table(pa.table({
                "id": pa.array([f"r{i:07d}" for i in range(s, e)]),
                "label": names.take(pa.array(given[s:e])),
                "emb": pa.FixedSizeListArray.from_arrays(pa.array(X[s:e].reshape(-1)), DIM),
            }))


def run(cmd: list[str], timeout: float | None = None) -> tuple[float, float, int]:
    """Return (wall seconds, peak RSS MB, exit code) of `cmd` run as its own process."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = None if timeout is None else t + timeout
    # The child's own high-water mark, polled from /proc: wait4's ru_maxrss of a forked child
    # starts from the parent's RSS at fork (measured: every run read as this bench's 2,099 MB).
    peak_kb = 0
    try:
        while True:
            with contextlib.suppress(OSError, ValueError, StopIteration):
                status_text = Path(f"/proc/{proc.pid}/status").read_text()
                peak_kb = max(peak_kb, int(next(l for l in status_text.splitlines() if l.startswith("VmHWM:")).split()[1]))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
                os.wait4(proc.pid, 0)
                return time.perf_counter() - t, float("nan"), -9
            time.sleep(0.05)
    except BaseException:  # Ctrl-C or a timeout kill of the bench must not leave a 1M-row run behind
        proc.kill()
        raise
    code = os.waitstatus_to_exitcode(status)
    if code:
        sys.stderr.write(proc.stderr.read()[-2000:])
    return time.perf_counter() - t, (peak_kb or usage.ru_maxrss) / 1024, code


def pr(flagged: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    hit = (flagged & truth).sum()
    return hit / max(1, flagged.sum()), hit / max(1, truth.sum())


def neighbour_recall(X: np.ndarray, n_queries: int = 1000, k: int = 10) -> tuple[float, str]:
    """Recall@k of labelkit's neighbour search (index as chosen for this n) against exact search.

    Above the exact threshold only the query rows are searched, with FAISS, in the cells
    `find_nearest_neighbors` uses (same k-means sample, seed and probes), whose cell-blocked search
    returns what FAISS does (tests/test_neighbors.py).
    """
    from labelkit.neighbors import (EXACT_MAX_ROWS_CPU, _drop_self, build_ivf_index, default_n_lists,
                                    default_n_probes, find_nearest_neighbors)

    q = np.random.default_rng(1).choice(len(X), min(n_queries, len(X)), replace=False)
    if len(X) <= EXACT_MAX_ROWS_CPU:
        idx, _, info = find_nearest_neighbors(X, k=k, return_info=True)
        idx, name = idx[q], info["index"]
    else:
        index = build_ivf_index(X, default_n_lists(len(X)), seed=0)
        index.nprobe = default_n_probes(len(X))
        sim, idx = index.search(X[q], k + 1)
        idx, name = _drop_self(idx, sim, q, k)[0], "faiss.IndexIVFFlat"
        del index
    cand_idx, cand_sim = [], []  # each block's top k, then the top k of those: no (queries x n) matrix
    for s in range(0, len(X), 131072):
        S = X[q] @ X[s:s + 131072].T
        mine = (q >= s) & (q < s + len(S[0]))
        S[np.flatnonzero(mine), q[mine] - s] = -2
        top = np.argpartition(-S, k - 1, axis=1)[:, :k] if S.shape[1] > k else np.argsort(-S, axis=1)
        cand_idx.append(top + s)
        cand_sim.append(np.take_along_axis(S, top, 1))
    cand_idx, cand_sim = np.concatenate(cand_idx, axis=1), np.concatenate(cand_sim, axis=1)
    truth = np.take_along_axis(cand_idx, np.argpartition(-cand_sim, k - 1, axis=1)[:, :k], 1)
    return float(np.mean([len(set(a) & set(t)) / k for a, t in zip(idx, truth)])), name


# `labelkit issues` with every registered check's run() timed, so the bench can name a check that
# dominates the `checks` phase; the seconds go to <workspace>/check_seconds.json.
TIMED_ISSUES = """
import json, sys, time
from labelkit.checks.base import get_checks
from labelkit.cli import main
seconds = {{}}
for check in get_checks():
    cls = type(check)
    def timed(self, ctx, _run=cls.run, _name=check.name):
        t = time.perf_counter()
        try:
            return _run(self, ctx)
        finally:
            seconds[_name] = round(time.perf_counter() - t, 3)
    cls.run = timed
code = main(["issues", "-w", {ws!r}, "--json"])
open({out!r}, "w").write(json.dumps(seconds))
sys.exit(code)
"""


def labelkit_run(n: int, tmp: Path, *, recall: bool) -> dict:
    import pyarrow.parquet as pq

    X, y_true, given, src, dst = make_data(n)
    table, ws = tmp / f"t{n}.parquet", tmp / f"ws{n}"
    write_table(table, X, given)
    py = [sys.executable, "-m", "labelkit"]
    ingest_s, ingest_rss, code = run(py + ["ingest", str(table), "-w", str(ws), "--embedding-col", "emb", "--json"])
    if code:
        raise SystemExit(f"labelkit ingest failed at {n:,} rows (exit {code})")
    issues_s, issues_rss, code = run([sys.executable, "-c", TIMED_ISSUES.format(ws=str(ws), out=str(ws / "check_seconds.json"))])
    if code:
        raise SystemExit(f"labelkit issues failed at {n:,} rows (exit {code})")
    record = json.loads((ws / "manifest.json").read_text())["stages"]["issues"]
    iss = pq.read_table(ws / "issues.parquet", columns=["id", "is_label_issue", "duplicate_of"]).to_pandas()
    row = iss["id"].str[1:].astype(int).to_numpy()
    flags = np.zeros(n, bool)
    flags[row] = iss["is_label_issue"].to_numpy()
    dup_of = np.full(n, -1)
    has = iss["duplicate_of"].notna().to_numpy()
    dup_of[row[has]] = iss["duplicate_of"][has].str[1:].astype(int).to_numpy()
    planted = np.zeros(n, bool)
    planted[dst] = True
    pair_found = (dup_of[dst] == src) | (dup_of[src] == dst)
    flagged_dup = dup_of >= 0
    probs_bytes = n * N_CLASSES * 4
    out = {"rows": n, "ingest_s": ingest_s, "issues_s": issues_s, "total_s": ingest_s + issues_s,
           "peak_rss_mb": max(ingest_rss, issues_rss), "budget_mb": (3 * (X.nbytes + probs_bytes) + (1 << 30)) / 2**20,
           "phases": record.get("phase_seconds", {}), "load": os.getloadavg()[0],
           "check_seconds": json.loads((ws / "check_seconds.json").read_text()),
           "probe": {key: (record.get("probe") or {}).get(key) for key in ("chosen", "max_fold_rows", "fold_train_rows")},
           "index": (record.get("neighbors") or {}).get("index"),
           "index_params": (record.get("neighbors") or {}).get("params"),
           "cl_path": (record.get("confident_learning") or {}).get("path"),
           "flip_pr": pr(flags, given != y_true),
           "dup_precision": float((flagged_dup & (planted | np.isin(np.arange(n), src))).sum() / max(1, flagged_dup.sum())),
           "dup_recall": float(pair_found.mean())}
    if recall:
        out["recall@10"], out["recall_index"] = neighbour_recall(X)
    return out


DATALAB = """
import sys, time, numpy as np
sys.path.insert(0, {bench!r})
from scale import make_data
from cleanlab import Datalab
X, _, given, _, _ = make_data({n})
t = time.perf_counter()
lab = Datalab(data={{"label": given}}, label_name="label", verbosity=0)
lab.find_issues(features=X)
print(time.perf_counter() - t)
"""


def datalab_run(n: int, timeout: float) -> tuple[float, float]:
    """Return (seconds, peak RSS MB) of Datalab.find_issues(features=X) on make_data(n); nan when timed out."""
    code_text = DATALAB.format(bench=str(Path(__file__).parent), n=n)
    seconds, rss, code = run([sys.executable, "-c", code_text], timeout=timeout)
    return (seconds if code == 0 else float("nan")), rss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,300000,1000000", help="comma-separated row counts")
    parser.add_argument("--datalab-rows", type=int, default=100_000, help="0: skip Datalab")
    parser.add_argument("--datalab-timeout", type=float, default=360)
    parser.add_argument("--no-recall", action="store_true", help="skip the recall@10 check (a second neighbour search)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    sizes = sorted(int(s) for s in args.sizes.split(","))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for n in sizes:
            r = labelkit_run(n, tmp, recall=not args.no_recall)
            results[n] = r
            phases = ", ".join(f"{k} {v:.1f}" for k, v in r["phases"].items())
            print(f"{n:>9,} rows: total {r['total_s']:.1f} s (ingest {r['ingest_s']:.1f}, issues {r['issues_s']:.1f}: "
                  f"{phases}); peak RSS {r['peak_rss_mb']:,.0f} MB (budget {r['budget_mb']:,.0f}); "
                  f"flips P/R {r['flip_pr'][0]:.3f}/{r['flip_pr'][1]:.3f}; duplicate pairs P/R "
                  f"{r['dup_precision']:.3f}/{r['dup_recall']:.3f}; index {r['index']} {r['index_params']}; "
                  f"CL {r['cl_path']}" + (f"; recall@10 {r['recall@10']:.4f} ({r['recall_index']})"
                                           if "recall@10" in r else "") + f"; load average {r['load']:.1f}", flush=True)
            print(f"    probe {r['probe']}; checks by seconds: " + ", ".join(
                f"{name} {sec:.1f}" for name, sec in sorted(r["check_seconds"].items(), key=lambda t: -t[1])
                if sec >= 0.05) + " (a check over 10 % of the total: "
                + (", ".join(name for name, sec in r["check_seconds"].items() if sec > 0.1 * r["total_s"]) or "none")
                + ")", flush=True)
            for f in tmp.glob("*"):  # free the disk: 1M x 512 is 2 GB per copy
                subprocess.run(["rm", "-rf", str(f)])
        if len(sizes) > 1:
            a, b = results[sizes[0]], results[sizes[-1]]
            exponent = np.log(b["total_s"] / a["total_s"]) / np.log(sizes[-1] / sizes[0])
            print(f"growth exponent of total time {sizes[0]:,} -> {sizes[-1]:,}: {exponent:.2f} (target <= 1.15); "
                  f"flip recall {a['flip_pr'][1]:.3f} -> {b['flip_pr'][1]:.3f}, duplicate recall "
                  f"{a['dup_recall']:.3f} -> {b['dup_recall']:.3f} (target: within 0.02)")
        if 1_000_000 in results:
            print(f"1M rows: {results[1_000_000]['total_s']:.0f} s (target <= 600)")
        if args.datalab_rows:
            seconds, rss = datalab_run(args.datalab_rows, args.datalab_timeout)
            if seconds == seconds:
                ours = results.get(args.datalab_rows) or labelkit_run(args.datalab_rows, tmp, recall=False)
                print(f"Datalab find_issues(features=X) at {args.datalab_rows:,}: {seconds:.1f} s, peak RSS {rss:,.0f} MB; "
                      f"labelkit ingest+issues {ours['total_s']:.1f} s (labelkit / Datalab time: {ours['total_s'] / seconds:.2f}; "
                      "target < 1)")
            else:
                print(f"Datalab at {args.datalab_rows:,} ran past {args.datalab_timeout:.0f} s; comparing at 20k and 50k:")
                for n in (20_000, 50_000):
                    seconds, rss = datalab_run(n, args.datalab_timeout)
                    ours = results.get(n) or labelkit_run(n, tmp, recall=False)
                    print(f"  {n:,} rows: Datalab {seconds:.1f} s (peak RSS {rss:,.0f} MB); labelkit {ours['total_s']:.1f} s "
                          f"(peak RSS {ours['peak_rss_mb']:,.0f} MB)")


if __name__ == "__main__":
    main()
