"""Generate the multi-annotator sample: the sample text rows labelled by six simulated annotators.

    python sample_data/make_multiannotator.py     # writes sample_data/multiannotator/

- multiannotator/annotations.csv: id, text, ann_1 … ann_6 (wide layout; an empty cell = that
  annotator did not label the row). The texts are sample_data/text/reviews.csv's 400 rows; their
  true topics are that file's labels corrected by text/flipped.csv.
- Each row is labelled by three annotators drawn at random, ann_6 more often than the others.
  ann_1 … ann_5 are right with probability 0.92, 0.88, 0.85, 0.80, 0.75 (a wrong label is a
  uniformly drawn other topic); **ann_6 answers at random** (right one time in four): the planted
  bad annotator.
- multiannotator/truth.csv: id, true_label, majority_label (the majority vote labelkit computes,
  ties to the first topic alphabetically), majority_correct — the answer key.

Nothing is downloaded. Re-running gives byte-identical files.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 20261217
ACCURACY = {"ann_1": 0.92, "ann_2": 0.88, "ann_3": 0.85, "ann_4": 0.80, "ann_5": 0.75, "ann_6": None}  # None: random
PICK_WEIGHT = {"ann_1": 1.0, "ann_2": 1.0, "ann_3": 1.0, "ann_4": 1.0, "ann_5": 1.0, "ann_6": 3.0}
PER_ITEM = 3
BAD_ANNOTATOR = "ann_6"


def read_texts(text_dir: Path) -> tuple[list[str], list[str], list[str]]:
    """Return (ids, texts, true labels) of the sample text rows."""
    with open(text_dir / "reviews.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(text_dir / "flipped.csv", newline="") as f:
        truth = {r["id"]: r["true_label"] for r in csv.DictReader(f)}
    return [r["id"] for r in rows], [r["text"] for r in rows], [truth.get(r["id"], r["label"]) for r in rows]


def simulate(true: np.ndarray, n_classes: int, *, seed: int = SEED) -> np.ndarray:
    """Return (n, 6) class indices, -1 where the annotator did not label the row."""
    rng = np.random.default_rng(seed)
    n, names = len(true), list(ACCURACY)
    weights = np.array([PICK_WEIGHT[a] for a in names])
    labels = np.full((n, len(names)), -1, np.int64)
    for i in range(n):
        chosen = rng.choice(len(names), size=PER_ITEM, replace=False, p=weights / weights.sum())
        for a in chosen:
            acc = ACCURACY[names[a]]
            if acc is None:
                labels[i, a] = rng.integers(n_classes)
            elif rng.random() < acc:
                labels[i, a] = true[i]
            else:
                labels[i, a] = rng.choice([k for k in range(n_classes) if k != true[i]])
    return labels


def make(out: Path, text_dir: Path = HERE / "text", *, seed: int = SEED) -> dict:
    """Write annotations.csv and truth.csv under `out`; return a few counts."""
    import sys

    sys.path.insert(0, str(HERE.parent))
    from labelkit.tasks.multiannotator import get_majority_vote

    ids, texts, true_names = read_texts(text_dir)
    classes = sorted(set(true_names))
    true = np.array([classes.index(t) for t in true_names])
    labels = simulate(true, len(classes), seed=seed)
    majority, _ = get_majority_vote(labels, len(classes))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "annotations.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "text", *ACCURACY])
        for i, (row_id, text) in enumerate(zip(ids, texts)):
            writer.writerow([row_id, text, *(classes[k] if k >= 0 else "" for k in labels[i])])
    with open(out / "truth.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "true_label", "majority_label", "majority_correct"])
        for i, row_id in enumerate(ids):
            writer.writerow([row_id, classes[true[i]], classes[majority[i]], int(majority[i] == true[i])])
    return {"rows": len(ids), "majority_accuracy": float((majority == true).mean()),
            "majority_wrong": int((majority != true).sum())}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "multiannotator")
    args = parser.parse_args(argv)
    counts = make(args.out)
    print(f"multiannotator: {counts['rows']} rows, majority vote wrong on {counts['majority_wrong']} "
          f"(accuracy {counts['majority_accuracy']:.3f}) -> {args.out}")


if __name__ == "__main__":
    main()
