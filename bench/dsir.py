"""DSIR throughput: documents per second on N short texts (default 1M), against a read-only pass.

Generates N short texts (6–14 words from a 20k-word Zipf vocabulary; seeded), a 10k-text target from
a shifted vocabulary, then times labelkit's DSIR pipeline — hashed unigram+bigram counts of raw and
target, log importance weights, Gumbel top-k of 10 % — and, as the baseline in the same run, one
Python pass that only splits every text into words. Prints docs/s of each and their ratio.

    python bench/dsir.py [--n 1000000]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_texts(n: int, seed: int, shift: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(20_000)])
    ranks = np.minimum(rng.zipf(1.3, size=n * 14) - 1 + shift, len(vocab) - 1)
    lengths = rng.integers(6, 15, n)
    words = vocab[ranks]
    out, pos = [], 0
    for L in lengths:
        out.append(" ".join(words[pos:pos + L]))
        pos += L
    return out


def main(argv=None) -> None:
    from labelkit.selection import dsir_log_weights, gumbel_top_k, hashed_ngram_counts, kl_reduction

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    raw, target = make_texts(args.n, 0), make_texts(10_000, 1, shift=50)

    t = time.perf_counter()
    words = sum(len(s.split()) for s in raw)
    base = time.perf_counter() - t

    t = time.perf_counter()
    R = hashed_ngram_counts(raw)
    T = hashed_ngram_counts(target)
    t_hash = time.perf_counter() - t
    log_w = dsir_log_weights(R, T)
    chosen = gumbel_top_k(log_w, args.n // 10, seed=0)
    total = time.perf_counter() - t
    kl = kl_reduction(R, T, chosen)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"texts: {args.n:,} ({words / args.n:.1f} words each), target 10,000, selected {len(chosen):,}")
    print(f"baseline (split every text): {args.n / base:,.0f} docs/s")
    print(f"labelkit DSIR end to end:    {args.n / total:,.0f} docs/s  (hashing {t_hash:.1f}s of {total:.1f}s)")
    print(f"ratio DSIR / baseline: {base / total:.3f}; KL reduction {kl:.3f}; peak RSS {rss:,.0f} MB")


if __name__ == "__main__":
    main()
