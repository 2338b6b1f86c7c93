"""Generate labelkit's regression sample: numeric targets with seeded, known errors, and its answer key.

    python sample_data/make_regression.py      # writes sample_data/regression/

- regression/targets.csv: 1,200 rows of ``id``, ``embedding`` (a JSON array of 24 numbers: a
  random linear image of 6 latent factors plus noise, standing in for a model's embedding) and
  ``price``, a smooth function of the latent factors plus Gaussian noise (σ = 3). A seeded 5 % of
  the prices are shifted by 5 to 13 σ up or down (typing errors, wrong units of a few rows), and 4
  cells are not numbers ("n/a", "", "inf", "about 40"): ingest marks those rows unusable.
- regression/shifted.csv is the answer key: ``id``, ``true_price``, ``given_price``, ``shift``.

Nothing is downloaded. Re-running gives byte-identical files.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 20261202
NOISE = 3.0  # σ of the clean targets' noise, in price units
BAD_CELLS = ("n/a", "", "inf", "about 40")


def make_regression_data(n: int = 1200, *, dim: int = 24, latent: int = 6, shift_fraction: float = 0.05,
                         bad_cells: tuple[str, ...] = BAD_CELLS, seed: int = SEED) -> dict:
    """Return the sample as arrays: ids, embeddings (n, dim) float32, true and given targets, shifted mask,
    and the given target cells as text (a few not numeric)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, latent))
    A = rng.normal(size=(latent, dim)) / np.sqrt(latent)
    X = (z @ A + 0.15 * rng.normal(size=(n, dim))).astype(np.float32)
    true = 50 + 10 * (0.9 * z[:, 0] + 0.6 * z[:, 1] - 0.4 * z[:, 2] + 0.3 * np.tanh(2 * z[:, 3])) \
        + NOISE * rng.normal(size=n)
    given = true.copy()
    shifted = np.zeros(n, bool)
    rows = rng.choice(n, size=round(shift_fraction * n), replace=False)
    shifted[rows] = True
    given[rows] += rng.choice([-1, 1], size=len(rows)) * rng.uniform(5 * NOISE, 13 * NOISE, size=len(rows))
    cells = [f"{v:.2f}" for v in given]
    bad = rng.choice(np.flatnonzero(~shifted), size=len(bad_cells), replace=False)
    for r, text in zip(bad, bad_cells):
        cells[r] = text
    return {"ids": [f"r{i:05d}" for i in range(n)], "embeddings": X, "true": np.round(true, 2),
            "given": np.round(given, 2), "shifted": shifted, "cells": cells}


def write_regression(out: Path, data: dict) -> int:
    """Write targets.csv and shifted.csv under `out`; return the number of shifted targets."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "targets.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "embedding", "price"])
        for i, vec, cell in zip(data["ids"], data["embeddings"], data["cells"]):
            w.writerow([i, json.dumps([round(float(v), 4) for v in vec]), cell])
    with open(out / "shifted.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "true_price", "given_price", "shift"])
        for r in np.flatnonzero(data["shifted"]):
            w.writerow([data["ids"][r], f"{data['true'][r]:.2f}", f"{data['given'][r]:.2f}",
                        f"{data['given'][r] - data['true'][r]:+.2f}"])
    return int(data["shifted"].sum())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "regression")
    args = parser.parse_args(argv)
    n_shifted = write_regression(args.out, make_regression_data())
    print(f"{args.out}/targets.csv: 1200 rows, {n_shifted} shifted targets, {len(BAD_CELLS)} non-numeric cells")


if __name__ == "__main__":
    main()
