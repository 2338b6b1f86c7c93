"""Text properties: empty, unusually short or long, garbled, and the same text with different labels."""

from __future__ import annotations

import numpy as np

from labelkit.checks import reasons as R
from labelkit.checks.base import Check, CheckContext, CheckResult, register

Z_THRESHOLD = 3.5  # Iglewicz & Hoaglin's cut for the modified z-score
MIN_LOG_SPREAD = float(np.log(2.0)) / Z_THRESHOLD  # never flag a length within a factor 2 of the median
GARBLED_THRESHOLD = 0.3  # share of unreadable characters from which a text counts as garbled
# C0/C1 control characters other than tab, newline and carriage return; DEL; private use; the
# non-characters U+FFFE/U+FFFF; and U+FFFD, which decoders put where bytes were not valid text.
UNREADABLE = r"[\x{0}-\x{8}\x{B}\x{C}\x{E}-\x{1F}\x{7F}-\x{9F}\p{Co}\x{FFFD}-\x{FFFF}]"
# What a text may consist of and still say nothing: Unicode whitespace, and the invisible format
# characters (soft hyphen, zero-width space / non-joiner / joiner, word joiner, byte-order mark) that
# Python's str.strip() and so ingest's own empty-text test keep.
BLANK = "".join(c for c in map(chr, range(0x3001)) if c.isspace()) + "\u00ad\u200b\u200c\u200d\u2060\ufeff"
# Unicode whitespace other than the plain space (RE2's \s is ASCII only).
OTHER_SPACE = r"\t\n\x{B}\f\r\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000}"


def get_text_length_zscores(lengths: np.ndarray) -> tuple[np.ndarray, float]:
    """Return the robust z-score of each length's logarithm, and the median length.

    Parameters
    ----------
    lengths : ndarray of shape (n_samples,)
        Character counts; rows with length 0 get a z-score of 0 and do not enter the median.

    Returns
    -------
    z : ndarray of shape (n_samples,), float32
        ``0.6745 * (log L - median) / MAD`` over the non-empty rows (Iglewicz & Hoaglin's modified
        z-score). Lengths are compared on a log scale because text lengths are right-skewed and a
        ratio ("ten times the typical length") is what makes a text odd. When the MAD is 0 (more
        than half the texts share one length) the mean absolute deviation times 1.2533 is used
        instead, and the scale is floored at ``log(2) / 3.5`` so that a text within a factor 2 of
        the median length is never flagged, however uniform the other lengths are.
    median : float
        The median length of the non-empty rows (0 when every row is empty).

    References
    ----------
    B. Iglewicz and D. C. Hoaglin, "How to Detect and Handle Outliers", ASQC Basic References in
    Quality Control 16, 1993 (the modified z-score and its 3.5 cut).
    """
    lengths = np.asarray(lengths)
    z = np.zeros(len(lengths), np.float32)
    nonempty = lengths > 0
    if not nonempty.any():
        return z, 0.0
    logs = np.log(lengths[nonempty].astype(np.float64))
    median = float(np.median(logs))
    dev = np.abs(logs - median)
    mad = float(np.median(dev))
    scale = mad / 0.6745 if mad > 0 else 1.2533 * float(dev.mean())
    z[nonempty] = (logs - median) / max(scale, MIN_LOG_SPREAD)
    return z, float(np.median(lengths[nonempty]))


def get_text_length_scores(z: np.ndarray) -> np.ndarray:
    """Return ``0.5 ** (z / 3.5) ** 2``: 1 at the median length, 0.5 at the flag cut, lower is odder."""
    return np.power(np.float32(0.5), np.square(np.asarray(z, np.float32) / np.float32(Z_THRESHOLD)))


def normalize_texts(texts):
    """Return the Arrow array of texts lower-cased, whitespace runs made one space, ends trimmed.

    The regex replacement is ten times slower than a match, so it runs only on the rows that
    hold a run of spaces or another whitespace character.
    """
    import pyarrow.compute as pc

    needs = pc.fill_null(pc.match_substring_regex(texts, f"[{OTHER_SPACE}]|  "), False)
    if pc.any(needs).as_py():
        fixed = pc.replace_substring_regex(pc.filter(texts, needs), f"[ {OTHER_SPACE}]+", " ")
        texts = pc.replace_with_mask(texts, needs, fixed)
    return pc.utf8_trim_whitespace(pc.utf8_lower(texts))


def find_conflicting_texts(keys, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return, per row, whether another row with the same key has a different label, and which.

    Parameters
    ----------
    keys : pyarrow Array of shape (n_samples,)
        Normalised texts (see :func:`normalize_texts`); null rows never conflict.
    labels : ndarray of shape (n_samples,)
        Class index per row.
    n_classes : int

    Returns
    -------
    conflicting : ndarray of bool
    other : ndarray of int64
        For a conflicting row, the first row of its group whose label differs from its own; -1 elsewhere.
    agreement : ndarray of float32
        The share of rows with the same key that carry this row's label (1 for unique texts).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(labels)
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    codes = pc.dictionary_encode(keys).indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    labels = np.asarray(labels, np.int64)
    valid = codes >= 0
    pair = np.where(valid, codes * n_classes + labels, -1)
    # Distinct (text, label) pairs, sorted by text then label, with each pair's first row and size.
    pair_keys, first, pair_inverse, pair_count = np.unique(pair[valid], return_index=True, return_inverse=True,
                                                           return_counts=True)
    group_of_pair = pair_keys // n_classes
    label_of_pair = pair_keys % n_classes
    n_groups = int(codes.max()) + 1 if valid.any() else 0
    labels_in_group = np.bincount(group_of_pair, minlength=n_groups)
    rows_in_group = np.bincount(codes[valid], minlength=n_groups)
    start = np.searchsorted(group_of_pair, np.arange(n_groups))  # pairs are sorted by group, then label

    conflicting = np.zeros(n, bool)
    other = np.full(n, -1, np.int64)
    agreement = np.ones(n, np.float32)
    rows = np.flatnonzero(valid)
    g = codes[rows]
    conflicting[rows] = labels_in_group[g] >= 2
    agreement[rows] = pair_count[pair_inverse] / rows_in_group[g]
    hit = conflicting[rows]
    rows, g = rows[hit], g[hit]
    s = start[g]
    # The group's first label, or its second for rows that carry the first.
    use = np.where(label_of_pair[s] == labels[rows], s + 1, s)
    other[rows] = np.flatnonzero(valid)[first[use]]
    return conflicting, other, agreement


@register
class TextProperties(Check):
    """Per-row text properties, in one vectorised pass of Arrow string kernels.

    - empty: nothing but whitespace and invisible characters such as U+200B (or a missing text).
      ``ingest`` already marks texts that ``str.strip()`` empties as unusable rows; what reaches
      this check is, in practice, text made of zero-width characters.
    - short / long: the robust z-score of log length beyond ±3.5 (Iglewicz & Hoaglin's cut; at
      most about 1 in 2,000 rows of a log-normal length distribution passes it), and never within a
      factor 2 of the median length (:func:`get_text_length_zscores`).
    - garbled: at least 30 % of the characters are control characters, private-use or U+FFFD
      replacement characters. Natural text has essentially none; UTF-16 read as UTF-8 has about
      50 % NULs and a wrongly decoded binary file mostly U+FFFD, both far above the cut.
    - conflicting: the same text up to case and whitespace carries another label elsewhere
      (the content-hash duplicates check only sees byte-identical texts).
    """

    name = "text_properties"
    title = "Text properties"
    description = ("Texts that are empty, unusually short or long for the dataset, mostly unreadable characters, "
                   "or the same as another row's text with a different label.")
    needs = ("text",)
    metrics = {"empty_text_rate": "share of rows whose text is empty or only whitespace and invisible characters",
               "short_text_rate": "share of rows whose text is unusually short (robust z of log length < -3.5)",
               "long_text_rate": "share of rows whose text is unusually long (robust z of log length > 3.5)",
               "garbled_text_rate": "share of rows whose text is at least 30% control or replacement characters",
               "conflicting_text_rows": "rows whose text (up to case and whitespace) appears with another label"}
    columns = {"is_empty_text": "the text is empty or only whitespace and invisible characters (e.g. U+200B)",
               "text_length_score": "in [0, 1], 1 at the median length, 0.5 at the flag cut, 0 for empty texts",
               "is_short_text": "the text is unusually short for the dataset",
               "is_long_text": "the text is unusually long for the dataset",
               "garbled_score": "in [0, 1], the share of readable characters (lower is more garbled)",
               "is_garbled_text": "at least 30% of the characters are control or U+FFFD replacement characters",
               "is_conflicting_text": "another row has the same text (up to case and whitespace) and another label",
               "text_property_score": "in [0, 1], the lowest of the length, garbled and label-agreement scores",
               "is_text_property_issue": "any of the text property flags"}
    flag = "is_text_property_issue"
    score = "text_property_score"
    order = 60

    def run(self, ctx: CheckContext) -> CheckResult:
        import pyarrow as pa

        # The items column itself rather than ctx.column("text"): Arrow's string kernels, no Python objects.
        texts = ctx.items.column("text")
        texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
        if pa.types.is_dictionary(texts.type):
            texts = texts.cast(texts.type.value_type)
        f = text_flags(texts, ctx.labels, len(ctx.classes), comparable=ctx.task in ("multiclass", "multiannotator"))
        n = max(ctx.n, 1)
        return CheckResult(
            columns={"is_empty_text": f["empty"], "text_length_score": f["length_score"], "is_short_text": f["short"],
                     "is_long_text": f["long"], "garbled_score": f["garbled_score"], "is_garbled_text": f["garbled"],
                     "is_conflicting_text": f["conflicting"], "text_property_score": f["score"],
                     "is_text_property_issue": f["flagged"]},
            metrics={"empty_text_rate": float(f["empty"].sum() / n), "short_text_rate": float(f["short"].sum() / n),
                     "long_text_rate": float(f["long"].sum() / n), "garbled_text_rate": float(f["garbled"].sum() / n),
                     "conflicting_text_rows": int(f["conflicting"].sum()) if f["comparable"] else None},
            reasons=text_reasons(f, ctx.ids, ctx.labels, ctx.classes),
            details={"median_length": f["median"], "z_threshold": Z_THRESHOLD, "garbled_threshold": GARBLED_THRESHOLD})


def text_flags(texts, labels: np.ndarray, n_classes: int, *, comparable: bool) -> dict:
    """Return the per-row numbers and flags of :class:`TextProperties` for an Arrow string array.

    Keys: ``length``, ``raw_length``, ``empty``, ``z``, ``median``, ``length_score``, ``short``,
    ``long``, ``bad_share``, ``garbled_score``, ``garbled``, ``conflicting``, ``other``,
    ``agreement``, ``score``, ``flagged``, ``comparable`` (whether labels could conflict).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(texts)
    stripped = pc.utf8_trim(texts, characters=BLANK)
    length = pc.utf8_length(stripped).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    raw_length = pc.utf8_length(texts).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    empty = length == 0
    z, median = get_text_length_zscores(length)
    length_score = np.where(empty, np.float32(0), get_text_length_scores(z)).astype(np.float32)
    bad = pc.count_substring_regex(texts, UNREADABLE).fill_null(0).to_numpy(zero_copy_only=False)
    bad_share = np.divide(bad, raw_length, out=np.zeros(n, np.float64), where=raw_length > 0)
    # Labels are comparable class indices for multiclass and multi-annotator data only.
    if comparable:
        keys = normalize_texts(texts)
        keys = pc.if_else(pa.array(empty), pa.scalar(None, keys.type), keys)
        conflicting, other, agreement = find_conflicting_texts(keys, labels, n_classes)
    else:
        conflicting, other, agreement = np.zeros(n, bool), np.full(n, -1), np.ones(n, np.float32)
    f = {"length": length, "raw_length": raw_length, "empty": empty, "z": z, "median": median,
         "length_score": length_score, "short": ~empty & (z < -Z_THRESHOLD), "long": ~empty & (z > Z_THRESHOLD),
         "bad_share": bad_share, "garbled_score": (1.0 - bad_share).astype(np.float32),
         "garbled": ~empty & (bad_share >= GARBLED_THRESHOLD), "conflicting": conflicting, "other": other,
         "agreement": agreement, "comparable": comparable}
    f["flagged"] = empty | f["short"] | f["long"] | f["garbled"] | conflicting
    f["score"] = np.minimum(np.minimum(length_score, f["garbled_score"]), agreement).astype(np.float32)
    return f


def text_reasons(f: dict, ids, labels: np.ndarray, classes: list[str]) -> R.RowReasons:
    """Return the reasons of the rows :func:`text_flags` flagged, formatted column-wise (Arrow kernels)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = np.flatnonzero(f["flagged"])
    at = {k: f[k][rows] for k in ("empty", "short", "long", "garbled", "conflicting", "raw_length", "length", "z",
                                  "bad_share", "other", "agreement")}
    parts = []
    if at["empty"].any():
        raw = at["raw_length"][at["empty"]]
        blank = R.concat("text is blank: ", R.fmt_int(raw), " whitespace or invisible characters")
        parts.append(R.scatter(pc.if_else(pa.array(raw == 0), pa.scalar("text is empty"), blank), at["empty"]))
    odd = at["short"] | at["long"]
    if odd.any():
        parts.append(R.concat("text is very ", np.where(at["short"][odd], "short", "long"), ": ",
                              R.fmt_int(at["length"][odd]), f" characters (median {f['median']:,.0f}, robust z ",
                              R.fmt_fixed(at["z"][odd], 1, sign=True), ")", where=odd))
    g = at["garbled"]
    if g.any():
        parts.append(R.concat("text is garbled: ", R.fmt_percent(at["bad_share"][g]), " of ",
                              R.fmt_int(at["raw_length"][g]),
                              " characters are control or U+FFFD replacement characters", where=g))
    c = at["conflicting"]
    if c.any():
        names = np.array([repr(name) for name in classes], dtype=object)  # one repr per class, not per row
        other = at["other"][c]
        parts.append(R.concat("same text as ", ids.take(pa.array(other)), " labelled ", names[labels[other]], " (",
                              R.fmt_percent(at["agreement"][c]), " of its copies labelled ", names[labels[rows[c]]],
                              ")", where=c))
    return R.RowReasons(rows, R.join_reasons(parts) if parts else pa.array([], pa.string()))
