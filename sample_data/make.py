"""Generate labelkit's sample data with known, seeded label errors and their answer keys.

    python sample_data/make.py            # writes sample_data/digits/ and sample_data/text/

- digits/: scikit-learn's bundled 8x8 digits (1797 images) as PNGs in class folders; a seeded 5%
  of them sit in a wrong class folder. digits/flipped.csv lists them (id, true_label, given_label).
- text/reviews.csv: short texts in four topics written here from templates; a seeded 6% carry a
  wrong label. text/flipped.csv is the answer key.

Nothing is downloaded. Re-running gives byte-identical files.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import shutil
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 20261123


def make_digits(out: Path, *, noise: float = 0.05, seed: int = SEED) -> int:
    """Write the digits folder and its answer key; return the number of flipped labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    n = len(digits.target)
    flipped = set(rng.choice(n, size=round(noise * n), replace=False).tolist())
    if out.exists():
        shutil.rmtree(out)
    key = []
    for i, (image, true) in enumerate(zip(digits.images, digits.target)):
        given = int(true)
        if i in flipped:
            given = int(rng.choice([c for c in range(10) if c != true]))
        folder = out / str(given)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.round(image * (255 / 16)).astype(np.uint8)
        name = f"{i:04d}.png"
        Image.fromarray(pixels, mode="L").save(folder / name, optimize=True)
        if given != true:
            key.append((f"{given}/{name}", int(true), given))
    with open(out / "flipped.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "true_label", "given_label"])
        writer.writerows(key)
    return len(key)


TOPICS = {
    "sports": (["The striker", "Our goalkeeper", "The home team", "The coach", "The sprinter", "The captain",
                "The tennis champion", "The rookie"],
               ["scored twice in the second half", "won the championship final on penalties",
                "broke the national record in the 100 metres", "was sent off after a late tackle",
                "signed a new contract with the club", "trained all week for the derby",
                "lifted the trophy in front of the fans", "missed the match with a knee injury"]),
    "weather": (["Tomorrow", "This weekend", "Tonight", "By Monday", "Across the coast", "In the mountains",
                 "Over the valley", "Later today"],
                ["heavy rain and thunderstorms are expected", "temperatures will drop below freezing",
                 "a strong wind warning is in place", "the forecast calls for sunshine and clear skies",
                 "thick fog will reduce visibility on the roads", "snow is likely to fall overnight",
                 "humidity will rise ahead of a heatwave", "scattered showers will clear by the evening"]),
    "cooking": (["Simmer the sauce", "Whisk the eggs", "Knead the dough", "Roast the vegetables",
                 "Season the soup", "Marinate the chicken", "Bake the bread", "Chop the onions"],
                ["for ten minutes before adding the garlic", "with a pinch of salt and black pepper",
                 "until it is golden and crisp", "in olive oil over a medium heat",
                 "and serve it warm with fresh herbs", "then let it rest before slicing",
                 "with butter and a splash of cream", "in a hot oven at 200 degrees"]),
    "technology": (["The new laptop", "This smartphone update", "The cloud service", "Our database server",
                    "The graphics card", "The open-source library", "The operating system", "The wireless router"],
                   ["ships with a faster processor and more memory", "fixes a security bug in the login screen",
                    "crashed after the latest software patch", "now supports encrypted backups",
                    "doubles the battery life of the device", "lets developers deploy code in seconds",
                    "improves download speeds over wifi", "needs a firmware upgrade to boot"]),
}


TAILS = ["", " this week", ", people said", " once again"]


def make_text(out: Path, *, noise: float = 0.06, seed: int = SEED) -> int:
    """Write text/reviews.csv (id,text,label) and text/flipped.csv; return the number flipped."""
    rng = np.random.default_rng(seed)
    rows = []
    for topic, (subjects, predicates) in TOPICS.items():
        triples = list(itertools.product(subjects, predicates, TAILS))
        for j in rng.choice(len(triples), size=100, replace=False):
            s, p, t = triples[j]
            rows.append([f"{s} {p}{t}.", topic])
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    topics = list(TOPICS)
    flipped = rng.choice(len(rows), size=round(noise * len(rows)), replace=False)
    key = []
    for i in sorted(flipped.tolist()):
        true = rows[i][1]
        given = str(rng.choice([t for t in topics if t != true]))
        rows[i][1] = given
        key.append((f"t{i:04d}", true, given))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with open(out / "reviews.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "text", "label"])
        writer.writerows([f"t{i:04d}", text, label] for i, (text, label) in enumerate(rows))
    with open(out / "flipped.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "true_label", "given_label"])
        writer.writerows(key)
    return len(key)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write digits/ and text/ into")
    args = parser.parse_args(argv)
    n_digits = make_digits(args.out / "digits")
    n_text = make_text(args.out / "text")
    print(f"digits: 1797 images, {n_digits} flipped; text: 400 rows, {n_text} flipped -> {args.out}")


if __name__ == "__main__":
    main()
