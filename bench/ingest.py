"""Ingest throughput: `labelkit ingest` on N generated PNGs vs `sha1sum` over the same files,
and `ingest --embedding-col` on a synthetic table of user embeddings.

    python bench/ingest.py [--n 100000] [--repeat 2] [--workers K] [--embedding-rows 1000000 --dim 512]

Prints files/s for both tools run side by side (best of `--repeat`, each run's wall and CPU
seconds, so a busy machine shows as wall ≫ CPU), their ratio (labelkit / sha1sum; sha1sum only
hashes, ingest also lists, checks image headers and PNG CRCs, and writes Parquet) against the
0.3× target, and labelkit's peak RSS. `--embedding-rows N` also times `labelkit ingest TABLE
--embedding-col emb` on an N × dim float32 Parquet table (id, label, embedding), end to end.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TARGET = 0.3


def _write_pngs(args: tuple[str, int, int, int]) -> None:
    from PIL import Image

    root, start, stop, classes = args
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), mode="L").save(
            Path(root) / f"class{i % classes}" / f"{i:07d}.png")


def make_files(root: Path, n: int, classes: int = 10) -> None:
    """Write n 16×16 random greyscale PNGs into `classes` class folders (in parallel)."""
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
    step = 5000
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_pngs, [(str(root), s, min(s + step, n), classes) for s in range(0, n, step)]))


def make_embedding_table(path: Path, n: int, dim: int, classes: int = 100) -> None:
    """Write an n × dim float32 embedding table (id, label, emb) in row groups of 65,536 rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    schema = pa.schema([("id", pa.string()), ("label", pa.string()), ("emb", pa.list_(pa.float32(), dim))])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, n, 65536):
            rows = np.arange(start, min(start + 65536, n))
            x = rng.standard_normal((len(rows), dim), dtype=np.float32)
            writer.write_table(pa.table({
                "id": pa.array(rows).cast(pa.string()),
                "label": pa.array(rows % classes).cast(pa.string()),
                "emb": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)}, schema=schema))


def timed(cmd, **kwargs) -> tuple[float, float]:
    """Return (wall seconds, CPU seconds of the child processes) of running `cmd`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, **kwargs)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000, help="image files to generate and ingest")
    parser.add_argument("--repeat", type=int, default=2, help="side-by-side runs; the best of each is reported")
    parser.add_argument("--workers", type=int, default=None, help="labelkit ingest --workers (default: cores)")
    parser.add_argument("--embedding-rows", type=int, default=0, help="also time ingest --embedding-col at this size")
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory() as tmp:
        if args.n:
            data = Path(tmp) / "data"
            t = time.perf_counter()
            make_files(data, args.n)
            print(f"generated {args.n} PNGs in {time.perf_counter() - t:.1f}s")
            ours_cmd = [sys.executable, "-m", "labelkit", "ingest", str(data), "-w", str(Path(tmp) / "ws"), "--json"]
            if args.workers is not None:
                ours_cmd += ["--workers", str(args.workers)]
            sha_runs, our_runs = [], []
            for _ in range(args.repeat):  # interleaved, so both see the same machine
                sha_runs.append(timed(f"find {data} -type f -print0 | xargs -0 sha1sum > /dev/null", shell=True))
                our_runs.append(timed(ours_cmd, stdout=subprocess.DEVNULL, cwd=ROOT))
            peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            for name, runs in (("sha1sum", sha_runs), ("labelkit", our_runs)):
                best = min(w for w, _ in runs)
                each = ", ".join(f"{w:.2f}s wall / {c:.2f}s CPU" for w, c in runs)
                print(f"{name + ':':10}{args.n / best:>9,.0f} files/s (best {best:.2f}s; runs: {each})")
            ratio = min(w for w, _ in sha_runs) / min(w for w, _ in our_runs)
            print(f"ratio labelkit/sha1sum throughput: {ratio:.2f} (target >= {TARGET}: "
                  f"{'met' if ratio >= TARGET else 'NOT met'}; labelkit includes interpreter start)")
            print(f"peak RSS of the largest child (labelkit): {peak_mb:.0f} MB")
        if args.embedding_rows:
            table = Path(tmp) / "emb.parquet"
            t = time.perf_counter()
            make_embedding_table(table, args.embedding_rows, args.dim)
            print(f"generated a {args.embedding_rows:,} x {args.dim} embedding table "
                  f"({table.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t:.1f}s")
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            wall, cpu = timed([sys.executable, "-m", "labelkit", "ingest", str(table), "-w", str(Path(tmp) / "wse"),
                               "--embedding-col", "emb", "--json"], stdout=subprocess.DEVNULL, cwd=ROOT)
            peak = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 2**20
            print(f"ingest --embedding-col: {args.embedding_rows:,} rows x {args.dim} in {wall:.1f}s wall "
                  f"({cpu:.1f}s CPU), {args.embedding_rows / wall:,.0f} rows/s, peak RSS {peak:.1f} GiB")


if __name__ == "__main__":
    main()
