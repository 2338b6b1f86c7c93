"""Image properties: dark, light, blurry, low-information, grayscale, odd-aspect and odd-size images.

CleanVision's seven image-property issue types, with its names, score formulas and default
thresholds (see :mod:`labelkit.properties`). The per-image numbers come from ``ingest`` (the
``prop_*`` columns of items.parquet, measured on a thumbnail in the same pass that hashes the
file); this check only turns them into scores, which for odd size needs the whole dataset.
"""

from __future__ import annotations

import numpy as np

from labelkit.checks.base import Check, CheckContext, CheckResult, register
from labelkit import properties as P

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


@register
class ImageProperties(Check):
    """CleanVision's image-property issue types, one flag and one score (lower is worse) each.

    ``image_property_score`` puts the seven on one scale for ranking: each score divided by
    twice its threshold (so 0.5 at the threshold), clipped to [0, 1], and the smallest taken;
    a row is flagged (``is_image_property_issue``) exactly when it is below 0.5.

    One departure from CleanVision: when most images are grayscale, none is flagged grayscale
    (its threshold becomes 0): a dataset of scans or digits is not one of colour photos with a
    few grayscale strays, and flagging every row would bury the other findings.

    References
    ----------
    .. [1] CleanVision, https://github.com/cleanlab/cleanvision,
       ``cleanvision/issue_managers/image_property.py`` (version 0.3.7).
    """

    name = "image_properties"
    title = "Image properties"
    description = ("Images that are dark, light, blurry, low in information, grayscale, or of an odd aspect "
                   "ratio or size for the dataset (CleanVision's definitions and thresholds).")
    needs = ("image",)
    metrics = {f"{t}_rate": f"fraction of rows flagged {t.replace('_', ' ')}" for t in P.ISSUE_TYPES}
    columns = {**{c: d for t in P.ISSUE_TYPES
                  for c, d in ((f"is_{t}", f"{_LABELS[t]} (CleanVision's is_{t}_issue)"),
                               (f"{t}_score", f"in [0, 1], lower is more {t.replace('_', ' ')}; "
                                              f"flagged below {P.THRESHOLDS[t]}"))},
               "image_property_score": "smallest property score relative to its threshold (0.5 = at the threshold)",
               "is_image_property_issue": "any of the seven image-property flags"}
    flag = "is_image_property_issue"
    score = "image_property_score"
    order = 60

    def run(self, ctx: CheckContext) -> CheckResult:
        n = ctx.n
        nan = np.full(n, np.nan, np.float32)

        def col(name: str) -> np.ndarray:
            values = ctx.column(name)
            return nan if values is None else np.asarray(values, np.float64).astype(np.float32)

        width, height = col("width"), col("height")
        missing = [c for c in P.PROPERTY_COLUMNS if ctx.column(c) is None]
        scores = {
            "dark": P.get_dark_scores(col("prop_brightness_p99")),
            "light": P.get_light_scores(col("prop_brightness_p5")),
            "blurry": P.get_blurry_scores(col("prop_blurriness"), col("prop_blurriness_grayscale_std")),
            "low_information": P.get_low_information_scores(col("prop_entropy")),
            "grayscale": P.get_grayscale_scores(col("prop_grayscale")),
            "odd_aspect_ratio": P.get_odd_aspect_ratio_scores(width, height),
        }
        scores["odd_size"], size_threshold = P.get_odd_size_scores(width, height)
        thresholds = {**P.THRESHOLDS, "odd_size": size_threshold}
        gray = scores["grayscale"] == 0
        mostly_gray = bool(gray.sum() * 2 > np.isfinite(scores["grayscale"]).sum() > 0)
        if mostly_gray:  # a grayscale dataset (scans, X-rays, MNIST): its odd ones out are the colour images
            thresholds["grayscale"] = 0.0
        flags = {t: np.asarray(scores[t] < thresholds[t]) for t in P.ISSUE_TYPES}  # NaN compares False

        columns: dict[str, np.ndarray] = {}
        relative = []
        for t in P.ISSUE_TYPES:
            columns[f"is_{t}"], columns[f"{t}_score"] = flags[t], scores[t].astype(np.float32)
            relative.append(np.clip(scores[t] / np.float32(2 * thresholds[t]), 0, 1) if thresholds[t] > 0
                            else np.ones(n, np.float32))
        with np.errstate(invalid="ignore"):
            overall = np.fmin.reduce(relative).astype(np.float32) if n else np.zeros(0, np.float32)
        any_flag = np.logical_or.reduce([flags[t] for t in P.ISSUE_TYPES]) if n else np.zeros(0, bool)
        columns["image_property_score"], columns["is_image_property_issue"] = overall, any_flag

        measured = {t: not (missing and t in _PIXEL_TYPES) for t in P.ISSUE_TYPES}
        metrics = {f"{t}_rate": (float(flags[t].mean()) if n else 0.0) if measured[t] else None
                   for t in P.ISSUE_TYPES}
        warnings = []
        if missing:
            warnings.append("image properties were not measured by this workspace's ingest "
                            f"(items.parquet lacks {', '.join(missing)}): re-run `labelkit ingest` "
                            "(without --no-properties) to check dark, light, blurry, low-information "
                            "and grayscale images")

        sizes = np.sqrt(width.astype(np.float64) * height)
        median = float(np.nanmedian(sizes)) if np.isfinite(sizes).any() else float("nan")
        evidence = _evidence(ctx, scores, thresholds, width, height, median)
        reasons = {}
        for row in np.flatnonzero(any_flag):
            reasons[int(row)] = "; ".join(evidence[t](int(row)) for t in P.ISSUE_TYPES if flags[t][row])

        counts = {t: int(flags[t].sum()) for t in P.ISSUE_TYPES}
        table = {"title": "Image properties (CleanVision's definitions)",
                 "columns": ["property", "flagged", "rate", "threshold", "score"],
                 "rows": [[t.replace("_", " "), counts[t] if measured[t] else None,
                           round(float(flags[t].mean()), 4) if n and measured[t] else None,
                           thresholds[t], _SCORE_TEXT[t]] for t in P.ISSUE_TYPES]}
        details = {"counts": counts, "thresholds": thresholds, "thumbnail_px": P.THUMBNAIL_SIZE,
                   "blur_px": P.BLUR_SIZE, "missing_columns": missing,
                   "grayscale_images": int(gray.sum()), "mostly_grayscale": mostly_gray}
        return CheckResult(columns=columns, metrics=metrics, reasons=reasons, details=details,
                           tables=[table], warnings=warnings)


_SCORE_TEXT = {
    "dark": "99th percentile of pixel brightness",
    "light": "1 - 5th percentile of pixel brightness",
    "blurry": "1 - exp(-0.01 · edge std), plus the flat-histogram term",
    "low_information": "0.1 · histogram entropy (bits), capped at 1",
    "grayscale": "0 for a grayscale image, else 1",
    "odd_aspect_ratio": "min(w/h, h/w)",
    "odd_size": "distance of sqrt(w·h) from the dataset's quartiles (IQR × 3)",
}


def _evidence(ctx: CheckContext, scores: dict, thresholds: dict, width, height, median: float) -> dict:
    """Return issue type → function(row) → the evidence string of a flagged row."""
    def col(name):
        values = ctx.column(name)
        return None if values is None else np.asarray(values, np.float64)

    p99, p5, blur, entropy = (col("prop_brightness_p99"), col("prop_brightness_p5"), col("prop_blurriness"),
                              col("prop_entropy"))

    def head(t: str, row: int) -> str:
        return f"{_LABELS[t]}: {t.replace('_', '-')} score {scores[t][row]:.2f} (threshold {thresholds[t]:.2f}"

    def dims(row: int) -> str:
        return f"{int(width[row])}×{int(height[row])}"

    return {
        "dark": lambda r: head("dark", r) + f"; its brightest 1% of pixels reach only {p99[r]:.2f})",
        "light": lambda r: head("light", r) + f"; 95% of its pixels are brighter than {p5[r]:.2f})",
        "blurry": lambda r: head("blurry", r) + f"; edge strength {blur[r]:.1f} at 64 px)",
        "low_information": lambda r: head("low_information", r) + f"; histogram entropy {entropy[r]:.2f} bits)",
        "grayscale": lambda r: "image is grayscale",
        "odd_aspect_ratio": lambda r: head("odd_aspect_ratio", r) + f"; {dims(r)})",
        "odd_size": lambda r: head("odd_size", r) + f"; {dims(r)}, median image {median:.0f} px a side)",
    }
