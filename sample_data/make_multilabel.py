"""Generate the multi-label sample: tagged items as embeddings, with seeded tag errors and their answer key.

    python sample_data/make_multilabel.py      # writes sample_data/multilabel/

- multilabel/items.parquet: ``id``, ``tags`` (string, tags joined by ";"; empty = no tags) and
  ``embedding`` (list<float32>, 32 dims). Each of eight tags has a direction; an item's vector is
  the sum of its true tags' directions plus noise, unit-normalised, so a probe can learn every tag.
  Tags co-occur (``water`` mostly with ``outdoor``, ``night`` with ``vehicle``).
- A seeded 4% of the items lost one true tag and another 4% gained one false tag.
  multilabel/key.csv lists them: ``id``, ``kind`` (removed / added), ``tag``, ``true_tags``, ``given_tags``.

    labelkit audit sample_data/multilabel/items.parquet --task multilabel --labels-col tags \\
        --embedding-col embedding -w /tmp/ml

Nothing is downloaded. Re-running gives identical files.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 20261202
TAGS = ("animal", "food", "night", "outdoor", "people", "text", "vehicle", "water")
FREQ = (0.25, 0.15, 0.2, 0.4, 0.35, 0.12, 0.22, 0.18)


def make_multilabel(out: Path, *, n: int = 1200, dim: int = 32, noise_rate: float = 0.04, signal: float = 1.0,
                    noise: float = 0.15, seed: int = SEED) -> dict:
    """Write items.parquet and key.csv under `out`; return counts of planted errors."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    K = len(TAGS)
    true = rng.random((n, K)) < np.array(FREQ)
    t = {tag: k for k, tag in enumerate(TAGS)}
    # Co-occurrence: water mostly outdoors, night with vehicles.
    true[:, t["outdoor"]] |= true[:, t["water"]] & (rng.random(n) < 0.8)
    true[:, t["vehicle"]] |= true[:, t["night"]] & (rng.random(n) < 0.5)
    directions = rng.normal(size=(K, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    X = signal * true.astype(np.float64) @ directions + noise * rng.normal(size=(n, dim))
    X /= np.linalg.norm(X, axis=1, keepdims=True)

    given = true.copy()
    order = rng.permutation(n)
    n_each = round(noise_rate * n)
    has_tag = order[true[order].any(1)]
    removed_rows = has_tag[:n_each]
    rest = np.setdiff1d(order, removed_rows, assume_unique=True)
    added_rows = rng.choice(rest[~true[rest].all(1)], n_each, replace=False)
    key = []
    for row in removed_rows:
        k = int(rng.choice(np.flatnonzero(true[row])))
        given[row, k] = False
        key.append((row, "removed", TAGS[k]))
    for row in added_rows:
        k = int(rng.choice(np.flatnonzero(~true[row])))
        given[row, k] = True
        key.append((row, "added", TAGS[k]))

    ids = [f"item{i:04d}" for i in range(n)]
    join = lambda m: ";".join(TAGS[k] for k in np.flatnonzero(m))
    out.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": ids, "tags": [join(g) for g in given],
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(X.astype(np.float32).reshape(-1)),
                                                                     dim).cast(pa.list_(pa.float32()))})
    pq.write_table(table, out / "items.parquet")
    with open(out / "key.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "kind", "tag", "true_tags", "given_tags"])
        for row, kind, tag in sorted(key):
            writer.writerow([ids[row], kind, tag, join(true[row]), join(given[row])])
    return {"rows": n, "removed": len(removed_rows), "added": len(added_rows),
            "rows_without_tags": int((~given.any(1)).sum())}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "multilabel")
    args = parser.parse_args(argv)
    print(make_multilabel(args.out))


if __name__ == "__main__":
    main()
