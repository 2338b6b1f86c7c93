"""Image properties: the per-image numbers behind CleanVision's image issue types, and their scores.

Two halves, kept apart because they run at different times:

- :func:`image_properties` turns one decoded image into raw numbers (brightness percentiles,
  edge strength, histogram entropy, a grayscale flag). ``ingest`` calls it once per image file,
  on a small thumbnail, and stores the numbers as the ``prop_*`` columns of ``items.parquet``.
- The ``get_*_scores`` functions turn those columns (and ``width`` / ``height``) into scores in
  [0, 1], lower is more severe, vectorised over rows. The check
  (:mod:`labelkit.checks.image_properties`) applies them at ``issues`` time, because some need
  the whole dataset (odd size is relative to the dataset's quartiles).

Names, formulas and default thresholds are CleanVision's (``cleanvision/issue_managers/
image_property.py`` and ``image_property_issue_manager.py``, version 0.3.7); the code is our
own. Where labelkit computes on a thumbnail instead of the full image, or differs otherwise,
the function says so.

References
----------
.. [1] CleanVision, Cleanlab Inc., https://github.com/cleanlab/cleanvision (AGPL-3.0), issue
   types ``dark``, ``light``, ``odd_aspect_ratio``, ``low_information``, ``blurry``,
   ``grayscale``, ``odd_size``.
"""

from __future__ import annotations

import io

import numpy as np

# The raw numbers stored per image (items.parquet, nullable float32); width/height are there already.
PROPERTY_COLUMNS = {
    "prop_brightness": "mean brightness in [0, 1] (CleanVision's 'brightness', from the channel means)",
    "prop_brightness_p5": "5th percentile of pixel brightness in [0, 1] (light score = 1 - this)",
    "prop_brightness_p99": "99th percentile of pixel brightness in [0, 1] (dark score = this)",
    "prop_entropy": "entropy in bits of the image's histogram (all bands together, as PIL's Image.entropy)",
    "prop_blurriness": "standard deviation of the edge image (PIL FIND_EDGES) of the <=64 px grayscale image",
    "prop_blurriness_grayscale_std": "standard deviation of the 256-bin histogram of the <=64 px grayscale image",
    "prop_grayscale": "1 if the image is grayscale (a one-band file, or equal colour channels), else 0",
    "prop_sharpness": "RMS of the interior 4-neighbour Laplacian over the gray-level std, of the <=64 px grayscale image",
}

ISSUE_TYPES = ("dark", "light", "blurry", "low_information", "grayscale", "odd_aspect_ratio", "odd_size")

# CleanVision's defaults (ImagePropertyIssueManager.get_default_params): a row is flagged when
# its score is below the threshold. odd_size's threshold is 0.5 (1.0 when all sizes are equal).
THRESHOLDS = {"dark": 0.32, "light": 0.05, "odd_aspect_ratio": 0.35, "low_information": 0.3, "blurry": 0.29,
              "grayscale": 0.5, "odd_size": 0.5}
LOW_INFORMATION_NORMALIZING_FACTOR = 0.1
BLURRY_NORMALIZING_FACTOR = 0.01
BLURRY_COLOR_THRESHOLD = 0.18
ODD_SIZE_IQR_FACTOR = 3.0

# CleanVision measures blur on the image shrunk to at most 64 px (MAX_RESOLUTION_FOR_BLURRY_DETECTION,
# bicubic, sizes from the full image): labelkit shrinks to exactly that size, so blur needs no
# larger image than that, and matches CleanVision's to 0.002 (0 without the JPEG draft).
BLUR_SIZE = 64
# Brightness percentiles, entropy and the grayscale test read a sample of at most this many
# pixels a side, taken by nearest-neighbour (a subset of the pixels, not averages of them:
# averaging narrows the histogram and dims the brightest 1 %: an averaged 128-px thumbnail
# flagged 35 of 240 faintly noisy flat images low-information that CleanVision passes). JPEGs decode
# at the smallest DCT scale that keeps DRAFT_SIZE px (Image.draft). bench/properties.py, 440
# images incl. 80 near CleanVision's thresholds, largest |score - CleanVision's score|:
#   thumbnail:draft   dark    light   low-info  blurry   (flags that differ)
#   64:128            0.118   0.025   0.106     0.005    1
#   128:256           0.049   0.009   0.040     0.002    1 (a dark flag)
#   256:512           0.028   0.002   0.001     0.000    0
# The dark gap is sampling: the brightest 1 % of a 16k-pixel sample. 128:256 is the default:
# 256:512 costs three times as much on 1000-px JPEGs (15.6 vs 5.2 ms each, measured).
THUMBNAIL_SIZE = 128
DRAFT_SIZE = 256

_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
# Brightness weights of CleanVision's calculate_brightness (a perceived-brightness formula).
_BRIGHTNESS_WEIGHTS = (0.241, 0.691, 0.068)
# Channels equal within this (in 0..255) count as grayscale: JPEG's colour conversion of a gray
# pixel comes back within one or two levels, not always exactly equal.
_GRAY_TOLERANCE = 2


def image_properties(image, *, size: int = THUMBNAIL_SIZE, draft: int | None = DRAFT_SIZE) -> dict[str, float]:
    """Return the ``prop_*`` values of one image (a PIL image opened but not yet loaded).

    Decodes once: a JPEG at a reduced DCT scale (``Image.draft``) no smaller than `draft` px,
    any other file in full. A nearest-neighbour sample of at most `size` px a side gives the
    brightness percentiles, the entropy and the grayscale test; the decoded image shrunk as
    CleanVision shrinks it (bicubic, to at most 64 px, sizes from the full image's) gives
    blurriness.

    Parameters
    ----------
    image : PIL.Image.Image
        As returned by ``Image.open``; modified in place (draft mode, then loaded).
    size : int
        Longest side of the pixel sample.
    draft : int or None
        Smallest side a JPEG is decoded at; None decodes JPEGs in full.

    Returns
    -------
    dict
        One float per :data:`PROPERTY_COLUMNS` key.

    Notes
    -----
    Differences from CleanVision, which reads the file in its own mode: palette, CMYK and
    alpha images are converted to RGB first (CleanVision reads a palette image's indices as
    brightness and an alpha band into the entropy), and an RGB image whose channels are equal
    counts as grayscale (CleanVision flags only one-band files).
    """
    from PIL import Image

    full_w, full_h = image.size
    gray = image.mode in _GRAY_MODES
    if image.format in ("JPEG", "MPO") and draft:
        image.draft(image.mode, (draft, draft))
    image.load()
    if image.mode in ("L", "RGB"):
        im = image
    elif image.mode.startswith("I") or image.mode == "F":  # 16-bit / 32-bit gray: PIL's convert clips at 255
        im = Image.fromarray(_to_uint8(np.asarray(image)))
    else:
        im = image.convert("L" if gray else "RGB")
    if max(im.size) > size:
        # A sample of pixels, not an average of them: averaging narrows the histogram and lowers
        # the brightest percentile, which moves the entropy and dark scores of noisy images.
        scale = size / max(im.size)
        thumb = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))),
                          Image.Resampling.NEAREST)
    else:
        thumb = im
    pixels = np.asarray(thumb)
    if not gray and _channels_equal(pixels):
        gray = True
    props = brightness_properties(pixels)
    props["prop_entropy"] = histogram_entropy(pixels)
    blur = _blur_image(im, pixels, full_w, full_h)
    props["prop_blurriness"], props["prop_blurriness_grayscale_std"] = blur_properties(blur)
    props["prop_sharpness"] = sharpness(blur)
    props["prop_grayscale"] = float(gray)
    return props


def image_properties_from_bytes(data: bytes, *, size: int = THUMBNAIL_SIZE) -> dict[str, float | None]:
    """Return :func:`image_properties` of an encoded image, or all None when Pillow cannot decode it.

    Also None for an image that would decode to more than Pillow's ``MAX_IMAGE_PIXELS`` (89
    Mpx) at full size and cannot be decoded smaller (anything but JPEG): a worker's memory
    stays bounded by the thumbnail, not by the largest file.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if (image.format not in ("JPEG", "MPO") and Image.MAX_IMAGE_PIXELS
                    and image.size[0] * image.size[1] > Image.MAX_IMAGE_PIXELS):
                return dict.fromkeys(PROPERTY_COLUMNS)
            return image_properties(image, size=size)
    except Exception:  # noqa: BLE001 - a file the header check passed but the decoder refuses: no properties
        return dict.fromkeys(PROPERTY_COLUMNS)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Return 16-bit (or 32-bit, float) gray levels as 0..255: by 257 from 16 bits, 0..1 floats times 255."""
    v = values.astype(np.float32)
    top = 1.0 if values.dtype.kind == "f" and v.max(initial=0) <= 1 else 65535.0 if v.max(initial=0) > 255 else 255.0
    return np.clip(np.rint(v * (255 / top)), 0, 255).astype(np.uint8)


def _blur_image(im, pixels: np.ndarray, full_w: int, full_h: int) -> np.ndarray:
    """Return the grayscale array CleanVision measures blur on: at most 64 px, sized from the full image.

    CleanVision resizes the colour image (bicubic) and then converts it to L; so does this,
    reusing `pixels` (the thumbnail's array) when no resize is needed.
    """
    ratio = max(full_w, full_h) / BLUR_SIZE
    if ratio > 1:
        target = (max(int(full_w // ratio), 1), max(int(full_h // ratio), 1))
        if im.size != target:
            return to_gray(np.asarray(im.resize(target)))
    if pixels.shape[:2] != (im.size[1], im.size[0]):  # a sample smaller than the image: not what CleanVision reads
        pixels = np.asarray(im)
    return to_gray(pixels)


def to_gray(pixels: np.ndarray) -> np.ndarray:
    """Return PIL's ``convert("L")`` of an (h, w, 3) uint8 array (ITU-R 601-2 luma, PIL's fixed point)."""
    if pixels.ndim == 2:
        return pixels
    p = pixels.astype(np.uint32)
    return ((p[..., 0] * 19595 + p[..., 1] * 38470 + p[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


def _channels_equal(pixels: np.ndarray) -> bool:
    """Return whether every pixel of an (h, w, 3) uint8 array has its channels within the gray tolerance."""
    p = pixels.astype(np.int16)
    return bool(np.abs(p[..., 0] - p[..., 1]).max(initial=0) <= _GRAY_TOLERANCE
                and np.abs(p[..., 1] - p[..., 2]).max(initial=0) <= _GRAY_TOLERANCE)


def pixel_brightness(pixels: np.ndarray) -> np.ndarray:
    """Return each pixel's brightness in [0, 1]: sqrt(0.241 R² + 0.691 G² + 0.068 B²) / 255, or L / 255.

    Parameters
    ----------
    pixels : ndarray of shape (h, w, 3) or (h, w), uint8
    """
    if pixels.ndim == 2:
        return pixels.astype(np.float64) / 255.0
    # Table lookups of the weighted squares: no float conversion of the whole image.
    return np.sqrt(_SQUARES[0][pixels[..., 0]] + _SQUARES[1][pixels[..., 1]] + _SQUARES[2][pixels[..., 2]])


_SQUARES = [w * (np.arange(256, dtype=np.float64) / 255.0) ** 2 for w in _BRIGHTNESS_WEIGHTS]


def percentiles(values: np.ndarray, q) -> np.ndarray:
    """Return the `q` percentiles of a flat array with linear interpolation (``np.percentile``'s default).

    One ``np.partition`` for all of them: the small thumbnails of ingest pay numpy's call
    overhead, not the arithmetic.
    """
    values = values.reshape(-1)
    pos = np.asarray(q, np.float64) / 100 * (len(values) - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, len(values) - 1)
    part = np.partition(values, sorted({*lo.tolist(), *hi.tolist()}))
    return part[lo] + (part[hi] - part[lo]) * (pos - lo)


def brightness_properties(pixels: np.ndarray) -> dict[str, float]:
    """Return mean brightness and the 5th / 99th percentiles of pixel brightness (linear interpolation).

    The mean is CleanVision's ``calc_avg_brightness``: the brightness formula applied to the
    channel means (so not the mean of :func:`pixel_brightness`).
    """
    p5, p99 = percentiles(pixel_brightness(pixels), (5, 99))
    means = pixels.reshape(-1, pixels.shape[-1] if pixels.ndim == 3 else 1).mean(0, dtype=np.float64)
    r, g, b = (means[0],) * 3 if len(means) == 1 else means[:3]
    wr, wg, wb = _BRIGHTNESS_WEIGHTS
    mean = np.sqrt(wr * r * r + wg * g * g + wb * b * b) / 255.0
    return {"prop_brightness": float(mean), "prop_brightness_p5": float(p5), "prop_brightness_p99": float(p99)}


def histogram_entropy(pixels: np.ndarray) -> float:
    """Return the entropy in bits of the image's histogram: 256 bins per band, all bands in one histogram.

    This is what PIL's ``Image.entropy()`` computes (and CleanVision's low-information
    property): for an RGB image, the mean of the three band entropies plus log2(3).
    """
    bands = pixels.shape[-1] if pixels.ndim == 3 else 1
    codes = pixels.reshape(-1, bands).astype(np.intp) + 256 * np.arange(bands)
    counts = np.bincount(codes.reshape(-1))
    p = counts[counts > 0] / codes.size
    return float(-(p * np.log2(p)).sum()) + 0.0 if len(p) else 0.0  # + 0.0: no "-0.0" for a flat image


def find_edges(gray: np.ndarray) -> np.ndarray:
    """Return PIL's ``ImageFilter.FIND_EDGES`` of a uint8 grayscale array.

    The 3x3 kernel (8 in the centre, -1 around), clipped to 0..255; the border rows and
    columns keep their input values, as PIL's 3x3 filter does.
    """
    out = gray.copy()
    if gray.shape[0] < 3 or gray.shape[1] < 3:
        return out
    g = gray.astype(np.int16)
    rows = g[:-2] + g[1:-1] + g[2:]  # 3x3 box sum, separably
    window = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
    out[1:-1, 1:-1] = np.clip(9 * g[1:-1, 1:-1] - window, 0, 255)
    return out


def blur_properties(gray: np.ndarray) -> tuple[float, float]:
    """Return (blurriness, grayscale histogram std) of the <= 64 px grayscale uint8 image.

    Blurriness is the standard deviation of :func:`find_edges` (CleanVision's ``calc_blurriness``);
    the histogram std (population, 256 bins) is CleanVision's ``calc_std_grayscale``, which keeps
    flat, low-information images from counting as blurry.
    """
    edges = find_edges(gray).reshape(-1).astype(np.float64)
    hist = np.bincount(gray.reshape(-1), minlength=256).astype(np.float64)
    return _std(edges), _std(hist)


def sharpness(gray: np.ndarray) -> float:
    """Return the RMS of the 4-neighbour Laplacian inside the <= 64 px grayscale image, over its gray-level std.

    Unlike CleanVision's blurriness (the std of an edge image whose border rows keep their input
    values, so a blurred image with a bright border scores sharp) this reads only interior pixels,
    and dividing by the contrast makes it a property of the image's detail, not of its brightness
    or contrast: a near-white or dark copy of an image keeps its sharpness, a Gaussian blur of
    radius 5 on a 64 px image divides it by 5 to 10 (bench/properties.py). The std is floored at
    one gray level, so a flat image has a sharpness near 0 rather than an undefined one.
    """
    if gray.shape[0] < 3 or gray.shape[1] < 3:
        return float("nan")
    g = gray.astype(np.float32)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(np.sqrt(np.mean(lap * lap, dtype=np.float64)) / max(float(g.std(dtype=np.float64)), 1.0))


def _std(x: np.ndarray) -> float:
    """Return the population standard deviation of a flat float64 array (``np.std`` less its call overhead)."""
    d = x - x.sum() / len(x)
    return float(np.sqrt(d @ d / len(x)))


# ---------------------------------------------------------------------------------------------
# Scores (vectorised over rows; NaN where a property is missing)


def get_dark_scores(brightness_p99: np.ndarray) -> np.ndarray:
    """Return dark scores in [0, 1] (lower is darker): the 99th percentile of pixel brightness."""
    return np.clip(np.asarray(brightness_p99, np.float32), 0, 1)


def get_light_scores(brightness_p5: np.ndarray) -> np.ndarray:
    """Return light scores in [0, 1] (lower is lighter): 1 - the 5th percentile of pixel brightness."""
    return np.clip(1 - np.asarray(brightness_p5, np.float32), 0, 1)


def get_low_information_scores(entropy: np.ndarray, *,
                               normalizing_factor: float = LOW_INFORMATION_NORMALIZING_FACTOR) -> np.ndarray:
    """Return low-information scores in [0, 1]: min(normalizing_factor · entropy, 1)."""
    return np.minimum(np.asarray(entropy, np.float32) * np.float32(normalizing_factor), 1).astype(np.float32)


def get_blurry_scores(blurriness: np.ndarray, grayscale_std: np.ndarray, *,
                      normalizing_factor: float = BLURRY_NORMALIZING_FACTOR,
                      color_threshold: float = BLURRY_COLOR_THRESHOLD) -> np.ndarray:
    """Return blurry scores in [0, 1] (lower is blurrier).

    ``1 - exp(-f · blurriness)``, plus ``1 - exp(-f · grayscale_std)`` where that exceeds
    `color_threshold` (an image whose gray levels crowd into few histogram bins is flat, not
    blurred), capped at 1 — CleanVision's ``BlurrinessProperty.get_scores``.
    """
    f = np.float32(normalizing_factor)
    blur = 1 - np.exp(-np.asarray(blurriness, np.float32) * f)
    std = 1 - np.exp(-np.asarray(grayscale_std, np.float32) * f)
    std = np.where(std > color_threshold, std, np.float32(0))
    return np.minimum(blur + std, 1).astype(np.float32)


def get_sharpness_scores(sharpness: np.ndarray) -> np.ndarray:
    """Return blurry scores in [0, 1) from :func:`sharpness` (lower is blurrier): ``s / (1 + s)``."""
    s = np.asarray(sharpness, np.float32)
    return (s / (1 + s)).astype(np.float32)


def get_grayscale_scores(grayscale: np.ndarray) -> np.ndarray:
    """Return grayscale scores: 0 for a grayscale image, 1 otherwise (NaN stays NaN)."""
    return (1 - np.asarray(grayscale, np.float32)).astype(np.float32)


def get_odd_aspect_ratio_scores(width: np.ndarray, height: np.ndarray) -> np.ndarray:
    """Return aspect-ratio scores in [0, 1]: min(w / h, h / w) (1 = square)."""
    w, h = np.asarray(width, np.float32), np.asarray(height, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.minimum(w / h, h / w).astype(np.float32)


def get_odd_size_scores(width: np.ndarray, height: np.ndarray, *,
                        iqr_factor: float = ODD_SIZE_IQR_FACTOR) -> tuple[np.ndarray, float]:
    """Return (odd-size scores in [0, 1], the threshold below which a row is odd).

    The size is sqrt(w · h). With its quartiles Q1, Q3 over the rows that have one, sizes
    outside ``[Q1 - k·IQR, Q3 + k·IQR]`` score below 0.5: the score is ``1 - |size - mid| / gap``
    (clipped), ``mid`` and ``gap`` the middle and width of that range. When every size is equal
    (gap 0) the distance is measured relative to that size and any other size is odd
    (threshold 1.0). CleanVision's ``SizeProperty``.
    """
    size = np.sqrt(np.asarray(width, np.float64) * np.asarray(height, np.float64))
    known = size[np.isfinite(size)]
    if not len(known):
        return np.full(len(size), np.nan, np.float32), THRESHOLDS["odd_size"]
    q1, q3 = np.percentile(known, [25, 75])
    low, high = q1 - iqr_factor * (q3 - q1), q3 + iqr_factor * (q3 - q1)
    mid, gap = (low + high) / 2, high - low
    norm, threshold = (gap, 0.5) if gap > 0 else (mid, 1.0)
    return (1 - np.clip(np.abs(size - mid) / norm, 0, 1)).astype(np.float32), threshold


# ---------------------------------------------------------------------------------------------
# Thresholds relative to the dataset

# A row is unusual for a property when its statistic lies more than Z_CUT robust standard
# deviations (1.4826 x MAD) below the dataset's median: Iglewicz & Hoaglin's 3.5, about 1 row in
# 4,000 of a normal sample. The spread is floored (in the statistic's units) so that a dataset
# of near-identical images does not flag trifles. Brightness and sharpness are compared as
# logarithms (ratios): a dark flag needs a 99th-percentile brightness under 0.35 times the
# median's (a saturated red image, 0.41 of a white one, is not dark), a light flag the same of
# 1 - the 5th percentile, a blur flag a sharpness 1.7 times lower, a low-information flag 0.9
# bits less entropy.
Z_CUT = 3.5
MIN_SPREAD = {"dark": 0.3, "light": 0.3, "low_information": 0.25, "blurry": 0.15}
# When more than this share of the rows is past CleanVision's absolute threshold, that is what
# the dataset is like (8 px digits are all low-information by it), not a finding about rows.
MOST = 0.5
# The absolute cut of the sharpness-based blurry score: sharpness 0.1, a radius-5 blur of a
# 64 px drawing; normal photos, drawings and textures measure 0.25 to 3 (bench/properties.py).
SHARPNESS_THRESHOLD = 0.09


def relative_cut(stat: np.ndarray, min_spread: float, *, z: float = Z_CUT) -> float:
    """Return the value of `stat` (higher is more normal) below which a row is unusual for this dataset.

    ``median - z * max(1.4826 * MAD, min_spread)`` over the finite values; NaN when there are none.

    References
    ----------
    B. Iglewicz and D. C. Hoaglin, "How to Detect and Handle Outliers", ASQC Basic References in
    Quality Control 16, 1993 (the modified z-score and its 3.5 cut).
    """
    x = np.asarray(stat, np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return float("nan")
    median = float(np.median(x))
    mad = float(np.median(np.abs(x - median)))
    return median - z * max(1.4826 * mad, min_spread)


def dataset_threshold(score: np.ndarray, absolute: float, relative: float) -> tuple[float, dict]:
    """Return (the score threshold for the dataset, its record) from CleanVision's and the relative one.

    The absolute threshold holds unless most rows are past it (then the dataset is like that and
    only the relative one flags rows); the relative one raises it where the dataset makes a row
    stand out sooner (a near-white image among normal ones).
    """
    known = np.isfinite(score)
    share = float((score[known] < absolute).mean()) if known.any() else 0.0
    dataset_level = share > MOST
    rel = relative if np.isfinite(relative) else -np.inf
    threshold = rel if dataset_level else max(rel, absolute)
    return float(max(threshold, 0.0)), {"absolute": absolute, "relative": round(float(relative), 4)
                                        if np.isfinite(relative) else None,
                                        "absolute_share": round(share, 4), "dataset_level": dataset_level}
