"""Image-property checks vs. CleanVision on a planted set.

    python bench/properties.py [--n 360] [--borderline 80] [--seed 0] [--sizes 64:128,128:256] [--keep DIR]

Builds a folder of `--n` images (JPEG and PNG, varied sizes): normal photo crops, and planted
dark, light, blurry, low-information, grayscale, odd-aspect and odd-size ones (one kind per
planted image). Runs `labelkit ingest` (which measures the properties on a thumbnail) and the
`image_properties` check, and CleanVision's `Imagelab.find_issues` on the same files (full
images, its default thresholds). Prints, per property:

- recall and false-positive rate of labelkit and of CleanVision against the planted truth
  (FP rate = flagged among the images not planted with that property);
- labelkit's agreement with CleanVision's own flags: recall of CleanVision's flags, and FP rate
  among the images CleanVision does not flag.

The target is recall >= 0.9 at <= 5 % false positives. `--borderline` adds images near
CleanVision's thresholds (no planted truth; counted only against CleanVision's flags), and
`--sizes` recomputes labelkit's properties at other thumbnail / JPEG-draft sizes (in this
process, no ingest) and prints how far its scores land from CleanVision's: the evidence for
:data:`labelkit.properties.THUMBNAIL_SIZE` and ``DRAFT_SIZE``.

Needs the ``bench`` extra (``pip install -e .[bench]``: cleanvision).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KINDS = ("dark", "light", "blurry", "low_information", "grayscale", "odd_aspect_ratio", "odd_size")
TARGET_RECALL, TARGET_FP = 0.9, 0.05


def _photos() -> list[np.ndarray]:
    """Return the RGB photos that ship with scikit-learn and matplotlib (the normal images' texture)."""
    import matplotlib
    import sklearn
    from PIL import Image

    paths = [Path(sklearn.__file__).parent / "datasets" / "images" / name for name in ("china.jpg", "flower.jpg")]
    paths.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths if p.exists()]


def make_planted(root: Path, n: int, *, seed: int = 0, share: float = 0.065,
                 borderline: int = 0) -> dict[str, str | None]:
    """Write `n` images under ``root/<label>/`` and return {path: planted kind or None (normal)}.

    About `share` of the images per kind are planted (at least 20 each); the rest are normal
    crops of the photos, 100-260 px a side, aspect within 2:3..3:2, half JPEG, half PNG.
    `borderline` more images (kinds ``near_dark``, ``near_light``, ``near_low_information``,
    ``near_blurry``; a third of them 500-1200 px) sit near CleanVision's thresholds: they have
    no planted truth and measure how closely labelkit's thumbnail scores follow CleanVision's.
    """
    from PIL import Image, ImageFilter, ImageOps

    rng = np.random.default_rng(seed)
    photos = _photos()
    per_kind = max(20, round(share * n))
    kinds = [k for k in KINDS for _ in range(per_kind)]
    kinds += [None] * max(0, n - len(kinds))
    kinds += [f"near_{k}" for k in ("dark", "light", "low_information", "blurry")] * (borderline // 4)
    rng.shuffle(kinds)
    truth: dict[str, str | None] = {}

    def crop(w: int, h: int) -> Image.Image:
        photo = photos[rng.integers(len(photos))]
        ph, pw = photo.shape[:2]
        scale = rng.uniform(0.35, 0.9)
        cw = int(min(pw, ph * w / h) * scale)
        ch = int(cw * h / w)
        y, x = rng.integers(0, ph - ch + 1), rng.integers(0, pw - cw + 1)
        return Image.fromarray(photo[y:y + ch, x:x + cw]).resize((w, h), Image.Resampling.LANCZOS)

    for i, kind in enumerate(kinds):
        side = rng.uniform(100, 260)
        aspect = np.exp(rng.uniform(np.log(2 / 3), np.log(3 / 2)))
        w, h = max(1, int(side * np.sqrt(aspect))), max(1, int(side / np.sqrt(aspect)))
        if kind == "odd_aspect_ratio":
            ratio = rng.uniform(4, 6)
            w, h = (int(side * ratio / 2), int(side / 2)) if rng.random() < 0.5 else (int(side / 2), int(side * ratio / 2))
        elif kind == "odd_size" or (kind or "").startswith("near_") and rng.random() < 1 / 3:
            w, h = int(rng.uniform(700, 1000)), int(rng.uniform(700, 1000))
        if kind == "low_information":
            # A flat colour with one flat rectangle: two colours per band, entropy well under 3 bits.
            colours = rng.integers(60, 220, (2, 3))
            arr = np.empty((h, w, 3), np.uint8)
            arr[:] = colours[0]
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
            arr[y0:y0 + h // 3, x0:x0 + w // 3] = colours[1]
            im = Image.fromarray(arr)
        elif kind == "near_low_information":  # a flat colour with faint noise: entropy near 3 bits
            noise = rng.normal(0, rng.uniform(0.3, 2.5), (h, w, 3))
            im = Image.fromarray(np.clip(rng.integers(60, 220, 3) + noise, 0, 255).astype(np.uint8))
        else:
            im = crop(w, h)
        if kind == "dark":
            im = Image.fromarray((np.asarray(im, np.float32) * rng.uniform(0.08, 0.27)).astype(np.uint8))
        elif kind == "light":
            im = Image.fromarray((245 + np.asarray(im, np.float32) * rng.uniform(5, 10) / 255).astype(np.uint8))
        elif kind == "blurry":
            # Blurred, then spread over the gray levels and dimmed: CleanVision's blur score adds a
            # term for peaked histograms, and PIL's FIND_EDGES keeps the border pixels unfiltered,
            # so a smooth image counts as blurry only with a spread histogram and a dim border.
            im = ImageOps.equalize(im.filter(ImageFilter.GaussianBlur(radius=max(w, h) / rng.uniform(8, 16))))
            im = Image.fromarray((np.asarray(im, np.float32) * rng.uniform(0.5, 0.7)).astype(np.uint8))
        elif kind == "near_dark":
            im = Image.fromarray((np.asarray(im, np.float32) * rng.uniform(0.25, 0.5)).astype(np.uint8))
        elif kind == "near_light":
            a = rng.uniform(0.88, 0.98)
            im = Image.fromarray((255 * a + np.asarray(im, np.float32) * (1 - a)).astype(np.uint8))
        elif kind == "near_blurry":
            im = ImageOps.equalize(im.filter(ImageFilter.GaussianBlur(radius=max(w, h) / rng.uniform(8, 40))))
        elif kind == "grayscale":
            im = im.convert("L")
        label = "ab"[int(rng.integers(2))]
        ext = "png" if kind == "low_information" and rng.random() < 0.7 else ("jpg" if i % 2 else "png")
        path = root / label / f"{i:05d}_{kind or 'normal'}.{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        im.save(path, quality=92) if ext == "jpg" else im.save(path)
        truth[str(path.resolve())] = kind
    return truth


def _check_columns(items) -> dict[str, np.ndarray]:
    """Return the image_properties check's columns over an items table (every row usable)."""
    import pyarrow as pa

    from labelkit.checks.base import CheckContext
    from labelkit.checks.image_properties import ImageProperties

    n = items.num_rows
    ctx = CheckContext(ids=pa.array([str(i) for i in range(n)]), labels=np.zeros(n, np.int64), classes=["a"],
                       modality="image", items=items)
    return ImageProperties().run(ctx).columns


def labelkit_columns(ws: Path) -> tuple[list[str], dict[str, np.ndarray], float]:
    """Return (image paths, the check's columns, seconds of the check) for an ingested workspace."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    items = pq.read_table(ws / "items.parquet")
    items = items.filter(pc.is_null(items.column("error")))
    t0 = time.perf_counter()
    columns = _check_columns(items)
    return items.column("image_path").to_pylist(), columns, time.perf_counter() - t0


def columns_at_size(paths: list[str], size: int, draft: int | None) -> dict[str, np.ndarray]:
    """Return the check's columns with the properties recomputed at thumbnail `size`, JPEG draft `draft`."""
    import pyarrow as pa
    from PIL import Image

    from labelkit.properties import PROPERTY_COLUMNS, image_properties

    rows = []
    for p in paths:
        with Image.open(p) as im:
            rows.append({"width": im.size[0], "height": im.size[1], **image_properties(im, size=size, draft=draft)})
    return _check_columns(pa.table({c: pa.array([r[c] for r in rows], pa.float32())
                                    for c in ("width", "height", *PROPERTY_COLUMNS)}))


def cleanvision_issues(paths: list[str], jobs: int):
    """Return (CleanVision's issues frame in `paths` order, seconds), with its default parameters."""
    import contextlib
    import io

    from cleanvision import Imagelab

    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):  # progress bars
        lab = Imagelab(filepaths=list(paths), verbose=False)
        lab.find_issues({k: {} for k in KINDS}, n_jobs=jobs, verbose=False)
    return lab.issues.loc[list(paths)], time.perf_counter() - t0


def rates(flags: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Return (recall, false-positive rate) of `flags` against the boolean `truth`."""
    recall = float(flags[truth].mean()) if truth.any() else float("nan")
    fp = float(flags[~truth].mean()) if (~truth).any() else float("nan")
    return recall, fp


# ---------------------------------------------------------------------------------------------
# Relative thresholds: planted near-white, blurred and dark images among normal ones, several kinds
# and sizes of image (all generated here), labelkit vs CleanVision.

RELATIVE_KINDS = ("texture", "shapes", "glyph")
PLANTS = {"near_white": "light", "blurred": "blurry", "dark": "dark"}  # planted kind -> the property that should flag it
RELATIVE_RECALL, RELATIVE_FP = 0.8, 0.05


def _normal_image(rng, kind: str, side: int):
    """Return a normal image of `kind`: smoothed colour noise, flat shapes with sensor noise, or a pen stroke."""
    from PIL import Image, ImageDraw, ImageFilter, ImageOps

    if kind == "texture":
        noise = rng.normal(0, 1, (side, side, 3)).astype(np.float32)
        im = Image.fromarray(((noise - noise.min()) / np.ptp(noise) * 255).astype(np.uint8))
        return ImageOps.autocontrast(im.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0))))
    if kind == "shapes":
        im = Image.new("RGB", (side, side), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(3, 9))):
            x0, y0 = rng.integers(0, side, 2)
            w, h = rng.integers(side // 8, side // 2, 2)
            box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        arr = np.asarray(im, np.float32) + rng.normal(0, 4, (side, side, 3))
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    im = Image.new("L", (side, side), int(rng.integers(0, 40)))  # glyph: a digit-like stroke, grayscale
    points = [tuple(int(v) for v in rng.integers(side // 6, 5 * side // 6, 2)) for _ in range(int(rng.integers(3, 6)))]
    ImageDraw.Draw(im).line(points, fill=int(rng.integers(180, 256)), width=max(1, side // 10))
    return im.filter(ImageFilter.GaussianBlur(side / 64))


def _plant(rng, im, plant: str | None):
    """Return `im` made near-white (80-92 % white), blurred (Gaussian radius 5 at 64 px) or dark (8-25 %)."""
    from PIL import Image, ImageFilter

    if plant == "near_white":
        a = rng.uniform(0.8, 0.92)
        return Image.fromarray((255 * a + np.asarray(im, np.float32) * (1 - a)).astype(np.uint8))
    if plant == "blurred":
        side = im.size[0]
        small = im if side == 64 else im.resize((64, 64), Image.Resampling.LANCZOS)
        small = small.filter(ImageFilter.GaussianBlur(5))
        return small if side == 64 else small.resize((side, side), Image.Resampling.BICUBIC)
    if plant == "dark":
        return Image.fromarray((np.asarray(im, np.float32) * rng.uniform(0.08, 0.25)).astype(np.uint8))
    return im


def make_relative_set(root: Path, kind: str, side: int, n_normal: int, n_plant: int, seed: int) -> dict[str, str | None]:
    """Write `n_normal` normal and `n_plant` of each planted kind under `root`; return {path: plant or None}."""
    rng = np.random.default_rng(seed)
    plan = [None] * n_normal + [p for p in PLANTS for _ in range(n_plant)]
    rng.shuffle(plan)
    truth = {}
    for i, plant in enumerate(plan):
        path = root / "ab"[i % 2] / f"{i:05d}_{plant or 'normal'}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        _plant(rng, _normal_image(rng, kind, side), plant).save(path)
        truth[str(path.resolve())] = plant
    return truth


def relative_bench(kinds, sides, n_normal: int, n_plant: int, seed: int, jobs: int) -> bool:
    """Print recall per planted property and normal images flagged, labelkit vs CleanVision; return whether met."""
    from labelkit.ingest import ingest

    print(f"{'set':<14} {'rows':>5} | " + " ".join(f"{p + ' (' + PLANTS[p] + ')':>22}" for p in PLANTS)
          + f" | {'normal flagged':>15} | labelkit / CleanVision")
    ok = True
    for kind in kinds:
        for side in sides:
            with tempfile.TemporaryDirectory() as tmp:
                truth = make_relative_set(Path(tmp) / "data", kind, side, n_normal, n_plant, seed)
                ingest(Path(tmp) / "data", Path(tmp) / "ws", workers=0)
                paths, ours, _ = labelkit_columns(Path(tmp) / "ws")
                cv, _ = cleanvision_issues(paths, jobs)
            plant = np.array([truth[p] or "" for p in paths])
            cells = []
            for p, prop in PLANTS.items():
                r, cr = ours[f"is_{prop}"][plant == p].mean(), cv[f"is_{prop}_issue"].to_numpy(bool)[plant == p].mean()
                ok &= r >= RELATIVE_RECALL and r >= cr
                cells.append(f"{r:.2f} / {cr:.2f}".rjust(22))
            normal = plant == ""
            fp = ours["is_image_property_issue"][normal].mean()
            cv_any = cv[[f"is_{k}_issue" for k in KINDS if k != "grayscale"]].to_numpy(bool).any(1)
            ok &= fp <= RELATIVE_FP
            print(f"{kind + ' ' + str(side) + 'px':<14} {len(paths):>5} | " + " ".join(cells)
                  + f" | {fp:>6.3f} / {cv_any[normal].mean():.3f}")
    print(f"target: recall >= {RELATIVE_RECALL} and >= CleanVision's per planted property, normal images flagged "
          f"<= {RELATIVE_FP} (CleanVision's column: any issue but grayscale): {'met' if ok else 'NOT met'}")
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=360, help="images with planted truth")
    ap.add_argument("--borderline", type=int, default=80, help="images near CleanVision's thresholds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", default="64:128,128:256,256:512,128:0",
                    help="thumbnail:draft sizes to compare with CleanVision's scores (draft 0: full JPEG decode)")
    ap.add_argument("--keep", type=Path, default=None, help="build the planted set here and keep it")
    ap.add_argument("--jobs", type=int, default=1, help="CleanVision's n_jobs")
    ap.add_argument("--relative", action="store_true",
                    help="only the relative-threshold bench: planted near-white, blurred and dark images")
    ap.add_argument("--kinds", default=",".join(RELATIVE_KINDS))
    ap.add_argument("--sides", default="32,64,128")
    ap.add_argument("--normal", type=int, default=300, help="normal images per relative set")
    ap.add_argument("--plant", type=int, default=20, help="images per planted kind per relative set")
    args = ap.parse_args(argv)
    if args.relative:
        return 0 if relative_bench(args.kinds.split(","), [int(x) for x in args.sides.split(",")], args.normal,
                                   args.plant, args.seed, args.jobs) else 1

    from labelkit.ingest import ingest
    from labelkit.properties import DRAFT_SIZE, THUMBNAIL_SIZE

    configs = [tuple(int(x) for x in c.split(":")) for c in args.sizes.split(",") if c.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        data = args.keep or Path(tmp) / "data"
        truth_map = make_planted(data, args.n, seed=args.seed, borderline=args.borderline)
        t0 = time.perf_counter()
        ingest(data, Path(tmp) / "ws", workers=0)
        ingest_s = time.perf_counter() - t0
        paths, ours, check_s = labelkit_columns(Path(tmp) / "ws")
        kind = np.array([truth_map[p] or "" for p in paths])
        cv, cv_s = cleanvision_issues(paths, args.jobs)
        by_size = {(size, draft): columns_at_size(paths, size, draft or None) for size, draft in configs}

    near = np.char.startswith(kind.astype(str), "near_")
    print(f"{len(paths)} images: {int((kind == '').sum())} normal, {int(((kind != '') & ~near).sum())} planted, "
          f"{int(near.sum())} borderline (no truth); labelkit ingest {ingest_s:.1f} s (one process; thumbnail "
          f"{THUMBNAIL_SIZE} px, JPEG draft {DRAFT_SIZE} px) + check {check_s * 1000:.0f} ms; "
          f"CleanVision {cv_s:.1f} s (n_jobs={args.jobs})")
    print("vs planted truth: normal + planted rows; vs CleanVision: all rows. FP = flagged among the negatives.")
    header = (f"{'property':<17} {'planted':>7} | {'labelkit recall':>15} {'FP':>6} | {'CV recall':>9} {'FP':>6} | "
              f"{'CV flags':>8} {'recall vs CV':>12} {'FP vs CV':>8}")
    print(header)
    print("-" * len(header))
    ok = True
    for k in KINDS:
        flags, cv_flags = ours[f"is_{k}"], cv[f"is_{k}_issue"].to_numpy(bool)
        truth = kind[~near] == k
        r, fp = rates(flags[~near], truth)
        cr, cfp = rates(cv_flags[~near], truth)
        ar, afp = rates(flags, cv_flags)
        ok &= r >= TARGET_RECALL and fp <= TARGET_FP and (np.isnan(ar) or ar >= TARGET_RECALL) and afp <= TARGET_FP
        print(f"{k:<17} {int(truth.sum()):>7} | {r:>15.3f} {fp:>6.3f} | {cr:>9.3f} {cfp:>6.3f} | "
              f"{int(cv_flags.sum()):>8} {ar:>12.3f} {afp:>8.3f}")
    print(f"target: recall >= {TARGET_RECALL} at FP <= {TARGET_FP} (vs planted and vs CleanVision): "
          f"{'met' if ok else 'NOT met'}")

    if by_size:
        scored = ("dark", "light", "low_information", "blurry")
        print("\nscores vs CleanVision's (full images) by thumbnail:draft px — max |difference| over all rows, "
              "and rows whose flag differs:")
        print(f"{'thumb:draft':>11} " + " ".join(f"{k:>17}" for k in scored))
        for (size, draft), cols in by_size.items():
            cells = []
            for k in scored:
                diff = np.abs(cols[f"{k}_score"] - cv[f"{k}_score"].to_numpy(np.float32))
                flips = int((cols[f"is_{k}"] != cv[f"is_{k}_issue"].to_numpy(bool)).sum())
                cells.append(f"{diff.max():.4f} / {flips}".rjust(17))
            print(f"{size:>5}:{draft or 'full':<5} " + " ".join(cells))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
