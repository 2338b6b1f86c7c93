"""Image properties: dark, light, blurry, low-information, grayscale, odd-aspect and odd-size images.

CleanVision's seven image-property issue types, with its names, score formulas and default
thresholds (see :mod:`labelkit.properties`). The per-image numbers come from ``ingest`` (the
``prop_*`` columns of items.parquet, measured on a thumbnail in the same pass that hashes the
file); this check only turns them into scores, which for odd size needs the whole dataset.
"""

from __future__ import annotations

import numpy as np

from labelkit import properties as P
from labelkit.checks import reasons as R
from labelkit.checks.base import Check, CheckContext, CheckResult, register

# issue type → (what a flag says, the evidence shown after the score)
_LABELS = {
    "dark": "image is dark",
    "light": "image is light",
    "blurry": "image is blurry",
    "low_information": "image has low information",
    "grayscale": "image is grayscale",
    "odd_aspect_ratio": "image has an odd aspect ratio",
    "odd_size": "image has an odd size",
}
_PIXEL_TYPES = ("dark", "light", "blurry", "low_information", "grayscale")


_RELATIVE = ("dark", "light", "low_information", "blurry")  # thresholds relative to the dataset


@register
class ImageProperties(Check):
    """CleanVision's image-property issue types, one flag and one score (lower is worse) each.

    Thresholds are relative to the dataset for dark, light, low-information and blurry images: a
    row is flagged when its score is below CleanVision's threshold, or when its statistic (99th /
    5th brightness percentile, entropy, sharpness) is unusual for this dataset — more than 3.5
    robust standard deviations below the median (:func:`labelkit.properties.relative_cut`). When
    most rows are past CleanVision's threshold (8 px digits are all "low information" by it) that
    threshold is the dataset's norm: only the unusual rows are flagged, and one warning says why
    the whole set scores low. Blur is measured by :func:`labelkit.properties.sharpness` (interior
    Laplacian over contrast), which sees a radius-5 blur that CleanVision's edge std misses; a
    low-information image is not also called blurry.

    ``image_property_score`` puts the seven on one scale for ranking: each score divided by
    twice its threshold (so 0.5 at the threshold), clipped to [0, 1], and the smallest taken;
    a row is flagged (``is_image_property_issue``) exactly when it is below 0.5.

    When most images are grayscale, none is flagged grayscale: a dataset of scans or digits is
    not one of colour photos with a few grayscale strays.

    References
    ----------
    .. [1] CleanVision, https://github.com/cleanlab/cleanvision,
       ``cleanvision/issue_managers/image_property.py`` (version 0.3.7).
    """

    name = "image_properties"
    title = "Image properties"
    description = ("Images that are dark, light, blurry, low in information, grayscale, or of an odd aspect "
                   "ratio or size for the dataset (CleanVision's definitions; thresholds relative to the dataset).")
    needs = ("image",)
    metrics = {f"{t}_rate": f"fraction of rows flagged {t.replace('_', ' ')}" for t in P.ISSUE_TYPES}
    columns = {**{c: d for t in P.ISSUE_TYPES
                  for c, d in ((f"is_{t}", f"{_LABELS[t]} (CleanVision's is_{t}_issue"
                                + (", or unusual for the dataset)" if t in _RELATIVE else ")")),
                               (f"{t}_score", (f"in [0, 1], lower is more {t.replace('_', ' ')}; flagged below "
                                               + (f"{P.THRESHOLDS[t]} or the dataset's relative threshold"
                                                  if t in ("dark", "light", "low_information") else
                                                  "the dataset's threshold" if t == "blurry" else
                                                  str(P.THRESHOLDS[t])))))},
               "image_property_score": "smallest property score relative to its threshold (0.5 = at the threshold)",
               "is_image_property_issue": "any of the seven image-property flags"}
    flag = "is_image_property_issue"
    score = "image_property_score"
    order = 60

    def run(self, ctx: CheckContext) -> CheckResult:
        n = ctx.n
        items = ctx.items
        # Absent (an older ingest) or null on every row (ingest --no-properties): not measured.
        missing = [c for c in P.PROPERTY_COLUMNS if items is None or c not in items.column_names
                   or items.column(c).null_count == items.num_rows]
        scores, thresholds, records, evidence = property_scores(ctx, missing)
        flags = {t: np.asarray(scores[t] < thresholds[t]) for t in P.ISSUE_TYPES}  # NaN compares False
        flags["blurry"] &= ~flags["low_information"]  # a flat image has no detail to blur
        columns = _columns(scores, flags, thresholds, n)
        measured = {t: not (set(missing) - {"prop_sharpness"} and t in _PIXEL_TYPES) for t in P.ISSUE_TYPES}
        metrics = {f"{t}_rate": (float(flags[t].mean()) if n else 0.0) if measured[t] else None
                   for t in P.ISSUE_TYPES}
        warnings = _dataset_warnings(records, n)
        if set(missing) - {"prop_sharpness"}:
            warnings.append("image properties were not measured by this workspace's ingest "
                            f"(items.parquet lacks {', '.join(missing)}): re-run `labelkit ingest` "
                            "(without --no-properties) to check dark, light, blurry, low-information "
                            "and grayscale images")
        counts = {t: int(flags[t].sum()) for t in P.ISSUE_TYPES}
        table = {"title": "Image properties (CleanVision's definitions, thresholds relative to the dataset)",
                 "columns": ["property", "flagged", "rate", "threshold", "score"],
                 "rows": [[t.replace("_", " "), counts[t] if measured[t] else None,
                           round(float(flags[t].mean()), 4) if n and measured[t] else None,
                           round(thresholds[t], 4), _SCORE_TEXT[t] if t != "blurry" or evidence["blurry"][0]
                           == "prop_sharpness" else _CV_BLUR_TEXT] for t in P.ISSUE_TYPES]}
        details = {"counts": counts, "thresholds": thresholds, "relative": records, "thumbnail_px": P.THUMBNAIL_SIZE,
                   "blur_px": P.BLUR_SIZE, "missing_columns": missing,
                   "unmeasured_rows": int(np.isnan(_col(ctx, "prop_entropy")).sum()),
                   "grayscale_images": int((scores["grayscale"] == 0).sum()),
                   "mostly_grayscale": thresholds["grayscale"] == 0.0}
        return CheckResult(columns=columns, metrics=metrics, reasons=_reasons(ctx, flags, scores, thresholds, evidence),
                           details=details, tables=[table], warnings=warnings)


def _col(ctx: CheckContext, name: str) -> np.ndarray:
    values = ctx.column(name)
    return np.full(ctx.n, np.nan, np.float32) if values is None else np.asarray(values, np.float64).astype(np.float32)


def property_scores(ctx: CheckContext, missing: list[str]) -> tuple[dict, dict, dict, dict]:
    """Return (scores, thresholds, relative-threshold records, evidence column per type) of the rows of `ctx`."""
    width, height = _col(ctx, "width"), _col(ctx, "height")
    entropy = _col(ctx, "prop_entropy")
    scores = {"dark": P.get_dark_scores(_col(ctx, "prop_brightness_p99")),
              "light": P.get_light_scores(_col(ctx, "prop_brightness_p5")),
              "low_information": P.get_low_information_scores(entropy),
              "grayscale": P.get_grayscale_scores(_col(ctx, "prop_grayscale")),
              "odd_aspect_ratio": P.get_odd_aspect_ratio_scores(width, height)}
    scores["odd_size"], size_threshold = P.get_odd_size_scores(width, height)
    # (statistic, higher is more normal; its cut turned into a score cut; the absolute score threshold)
    # Brightness on a log scale: what makes an image dark is its brightness as a ratio of the others'.
    with np.errstate(divide="ignore", invalid="ignore"):
        log_dark, log_light = np.log(np.maximum(scores["dark"], 1e-3)), np.log(np.maximum(scores["light"], 1e-3))
    stats = {"dark": (log_dark, lambda c: float(np.exp(c)), P.THRESHOLDS["dark"]),
             "light": (log_light, lambda c: float(np.exp(c)), P.THRESHOLDS["light"]),
             "low_information": (entropy, lambda c: min(c * P.LOW_INFORMATION_NORMALIZING_FACTOR, 1.0),
                                 P.THRESHOLDS["low_information"])}
    if "prop_sharpness" not in missing:  # an older ingest lacks it: CleanVision's blur score, its threshold
        sharp = _col(ctx, "prop_sharpness")
        scores["blurry"] = P.get_sharpness_scores(sharp)
        with np.errstate(divide="ignore", invalid="ignore"):
            stats["blurry"] = (np.log(np.maximum(sharp, 1e-3)), lambda c: float(np.exp(c) / (1 + np.exp(c))),
                               P.SHARPNESS_THRESHOLD)
        blur_evidence = ("prop_sharpness", "sharpness {:.2f} at 64 px)")
    else:
        scores["blurry"] = P.get_blurry_scores(_col(ctx, "prop_blurriness"), _col(ctx, "prop_blurriness_grayscale_std"))
        stats["blurry"] = (scores["blurry"], lambda c: c, P.THRESHOLDS["blurry"])
        blur_evidence = ("prop_blurriness", "edge strength {:.1f} at 64 px)")
    thresholds = {**P.THRESHOLDS, "odd_size": size_threshold}
    records = {}
    for t, (stat, to_score, absolute) in stats.items():
        cut = P.relative_cut(stat, P.MIN_SPREAD[t])
        thresholds[t], records[t] = P.dataset_threshold(scores[t], absolute, to_score(cut) if np.isfinite(cut)
                                                        else float("nan"))
    gray = scores["grayscale"] == 0
    if gray.sum() * 2 > np.isfinite(scores["grayscale"]).sum() > 0:  # a grayscale dataset (scans, X-rays, MNIST):
        thresholds["grayscale"] = 0.0  # grayscale is its norm, so no row is flagged (scores are 0 or 1)
    evidence = {"light": ("prop_brightness_p5", "95% of its pixels are brighter than {:.2f})"),
                "blurry": blur_evidence, "low_information": ("prop_entropy", "histogram entropy {:.2f} bits)")}
    return scores, thresholds, records, evidence


def _columns(scores: dict, flags: dict, thresholds: dict, n: int) -> dict[str, np.ndarray]:
    """Return the check's columns: a flag and a score per type, and the combined score and flag."""
    columns: dict[str, np.ndarray] = {}
    relative = []
    for t in P.ISSUE_TYPES:
        columns[f"is_{t}"], columns[f"{t}_score"] = flags[t], scores[t].astype(np.float32)
        if t == "blurry":  # a low-information row is not blurry: its blur score does not rank it
            scores_t = np.where(flags["low_information"], np.float32(1), scores[t])
        else:
            scores_t = scores[t]
        relative.append(np.clip(scores_t / np.float32(2 * thresholds[t]), 0, 1) if thresholds[t] > 0
                        else np.ones(n, np.float32))
    with np.errstate(invalid="ignore"):
        columns["image_property_score"] = np.fmin.reduce(relative).astype(np.float32) if n else np.zeros(0, np.float32)
    columns["is_image_property_issue"] = (np.logical_or.reduce([flags[t] for t in P.ISSUE_TYPES]) if n
                                          else np.zeros(0, bool))
    return columns


def _dataset_warnings(records: dict, n: int) -> list[str]:
    """Return one line per property that most of the dataset has by CleanVision's threshold (not flagged per row)."""
    out = []
    for t, r in records.items():
        if r["dataset_level"]:
            out.append(f"{r['absolute_share']:.0%} of the images are {t.replace('_', '-')} by CleanVision's "
                       f"threshold ({r['absolute']}): that is this dataset's norm (e.g. small or simple images), "
                       f"so only images unusual for it are flagged {t.replace('_', '-')}")
    return out


def _reasons(ctx: CheckContext, flags: dict, scores: dict, thresholds: dict, evidence: dict):
    """Return the flagged rows' reasons, one part per property in property order (Arrow kernels, no row loop)."""
    import pyarrow as pa

    width, height = _col(ctx, "width"), _col(ctx, "height")
    sizes = np.sqrt(width.astype(np.float64) * height)
    median = float(np.nanmedian(sizes)) if np.isfinite(sizes).any() else float("nan")
    parts = [_evidence(t, flags[t], ctx, scores[t], thresholds[t], width, height, median, evidence)
             for t in P.ISSUE_TYPES if flags[t].any()]
    rows = np.flatnonzero(np.logical_or.reduce([flags[t] for t in P.ISSUE_TYPES])) if ctx.n else np.zeros(0, np.int64)
    if not parts:
        return R.RowReasons(rows, pa.array([], pa.string()))
    return R.RowReasons(rows, R.join_reasons([p.take(pa.array(rows)) for p in parts]))


_SCORE_TEXT = {
    "dark": "99th percentile of pixel brightness",
    "light": "1 - 5th percentile of pixel brightness",
    "blurry": "s / (1 + s), s = interior Laplacian RMS / gray-level std at 64 px",
    "low_information": "0.1 · histogram entropy (bits), capped at 1",
    "grayscale": "0 for a grayscale image, else 1",
    "odd_aspect_ratio": "min(w/h, h/w)",
    "odd_size": "distance of sqrt(w·h) from the dataset's quartiles (IQR × 3)",
}
_CV_BLUR_TEXT = "1 - exp(-0.01 · edge std), plus the flat-histogram term"


def _evidence(t: str, flag: np.ndarray, ctx: CheckContext, score: np.ndarray, threshold: float,
              width: np.ndarray, height: np.ndarray, median: float, evidence: dict):
    """Return the evidence text of issue type `t` for every row (null where `flag` is False)."""
    rows = np.flatnonzero(flag)
    if t == "grayscale":
        return R.concat("image is grayscale", np.full(len(rows), ""), where=flag)
    s = R.fmt_fixed(score[rows], 2)
    if t == "dark":  # the score is the brightness of the brightest 1 % itself
        return R.concat("image is dark: dark score ", s, f" (threshold {threshold:.2f}; the brightness its "
                        "brightest 1% of pixels reach)", where=flag)
    head = f"{_LABELS[t]}: {t.replace('_', '-')} score "
    if t in ("odd_aspect_ratio", "odd_size"):
        w, h = R.fmt_int(width[rows], sep=False), R.fmt_int(height[rows], sep=False)
        tail = (")",) if t == "odd_aspect_ratio" else (f", median image {median:.0f} px a side)",)
        return R.concat(head, s, f" (threshold {threshold:.2f}; ", w, "×", h, *tail, where=flag)
    column, text = evidence[t]
    before, after = text.split("{", 1)
    decimals = int(after.split(".", 1)[1][0])
    values = ctx.items.column(column).take(rows).to_numpy(zero_copy_only=False)
    return R.concat(head, s, f" (threshold {threshold:.2f}; {before}", R.fmt_fixed(values, decimals),
                    after.split("}", 1)[1], where=flag)
