"""Ingest throughput: `labelkit ingest` on N generated PNGs vs `sha1sum` over the same files.

    python bench/ingest.py [--n 100000]

Prints files/s for both, their ratio (labelkit / sha1sum; sha1sum only hashes, ingest also reads
image headers, verifies PNG chunks and writes Parquet) and labelkit's peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_files(root: Path, n: int, classes: int = 10) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8), mode="L").save(root / f"class{i % classes}" / f"{i:07d}.png")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        t = time.perf_counter()
        make_files(data, args.n)
        print(f"generated {args.n} PNGs in {time.perf_counter() - t:.1f}s")
        t = time.perf_counter()
        subprocess.run(f"find {data} -type f -print0 | xargs -0 sha1sum > /dev/null", shell=True, check=True)
        sha = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "labelkit", "ingest", str(data), "-w", str(Path(tmp) / "ws"),
                        "--json"], check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        ours = time.perf_counter() - t
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"sha1sum:  {args.n / sha:,.0f} files/s ({sha:.1f}s)")
    print(f"labelkit: {args.n / ours:,.0f} files/s ({ours:.1f}s, including interpreter start)")
    print(f"ratio labelkit/sha1sum throughput: {sha / ours:.2f}")
    print(f"peak RSS of the largest child (labelkit): {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
