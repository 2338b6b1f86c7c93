"""Image properties: dark, light, blurry, low-information, grayscale, odd-aspect and odd-size images.

CleanVision's seven image-property issue types, with its names, score formulas and default
thresholds (see :mod:`labelkit.properties`). The per-image numbers come from ``ingest`` (the
``prop_*`` columns of items.parquet, measured on a thumbnail in the same pass that hashes the
file); this check only turns them into scores, which for odd size needs the whole dataset.
"""

from __future__ import annotations

import numpy as np

from labelkit import properties as P
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
                               (f"{t}_score", (f"in [0, 1], lower is more {t.replace('_', ' ')}; "
                                               f"flagged below {P.THRESHOLDS[t]}")))},
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
        # Absent (an older ingest) or null on every row (ingest --no-properties): not measured.
        items = ctx.items
        missing = [c for c in P.PROPERTY_COLUMNS if items is None or c not in items.column_names
                   or items.column(c).null_count == items.num_rows]
        unmeasured = int(np.isnan(col("prop_entropy")).sum())
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
        if mostly_gray:  # a grayscale dataset (scans, X-rays, MNIST): grayscale is its norm, not an issue, so
            thresholds["grayscale"] = 0.0  # no row is flagged grayscale (scores are 0 or 1, none is below 0)
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
        parts: dict[int, list[str]] = {}
        for t in P.ISSUE_TYPES:  # a loop over flagged rows only, in property order within a row
            rows = np.flatnonzero(flags[t])
            for row, text in zip(rows.tolist(), _evidence(t, rows, ctx, scores[t], thresholds[t], width, height,
                                                          median)):
                parts.setdefault(row, []).append(text)
        reasons = {row: "; ".join(texts) for row, texts in parts.items()}

        counts = {t: int(flags[t].sum()) for t in P.ISSUE_TYPES}
        table = {"title": "Image properties (CleanVision's definitions)",
                 "columns": ["property", "flagged", "rate", "threshold", "score"],
                 "rows": [[t.replace("_", " "), counts[t] if measured[t] else None,
                           round(float(flags[t].mean()), 4) if n and measured[t] else None,
                           thresholds[t], _SCORE_TEXT[t]] for t in P.ISSUE_TYPES]}
        details = {"counts": counts, "thresholds": thresholds, "thumbnail_px": P.THUMBNAIL_SIZE,
                   "blur_px": P.BLUR_SIZE, "missing_columns": missing, "unmeasured_rows": unmeasured,
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


def _evidence(t: str, rows: np.ndarray, ctx: CheckContext, score: np.ndarray, threshold: float,
              width: np.ndarray, height: np.ndarray, median: float) -> list[str]:
    """Return the evidence line of each of `rows` (flagged for issue type `t`)."""
    if not len(rows):
        return []
    if t == "grayscale":
        return ["image is grayscale"] * len(rows)
    if t == "dark":  # the score is the brightness of the brightest 1 % itself
        return [f"image is dark: dark score {s:.2f} (threshold {threshold:.2f}; the brightness its brightest 1% "
                "of pixels reach)" for s in score[rows].tolist()]
    head = f"{_LABELS[t]}: {t.replace('_', '-')} score {{:.2f}} (threshold {threshold:.2f}; "
    scores = score[rows].tolist()
    if t in ("odd_aspect_ratio", "odd_size"):
        tail = "{}×{})" if t == "odd_aspect_ratio" else "{}×{}, median image " + f"{median:.0f} px a side)"
        return [(head + tail).format(s, w, h)
                for s, w, h in zip(scores, width[rows].astype(np.int64).tolist(), height[rows].astype(np.int64).tolist())]
    column, tail = {"light": ("prop_brightness_p5", "95% of its pixels are brighter than {:.2f})"),
                    "blurry": ("prop_blurriness", "edge strength {:.1f} at 64 px)"),
                    "low_information": ("prop_entropy", "histogram entropy {:.2f} bits)")}[t]
    values = ctx.items.column(column).take(rows).to_numpy(zero_copy_only=False).tolist()
    return [(head + tail).format(s, v) for s, v in zip(scores, values)]
