"""Per-row reasons built with Arrow string kernels: no Python loop over the flagged rows.

A check that flags many rows (a million one-character texts that all conflict) would spend
seconds formatting one f-string per row. These helpers format whole columns at once —
integers with thousands separators, fixed-point numbers, percentages — and join the pieces
element-wise; :class:`RowReasons` holds the result as one Arrow array while still reading as
the ``{row: text}`` mapping that :attr:`labelkit.checks.base.CheckResult.reasons` documents.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class RowReasons(Mapping):
    """The reasons of flagged rows: ``rows`` (sorted positions) and one Arrow string per row.

    Reads as a ``{row: text}`` mapping (``reasons[i]``, ``set(reasons)``, ``reasons == {...}``);
    :func:`as_arrow` scatters it to a length-n column without Python objects. A null text (a
    row whose pieces were all absent) is left out.
    """

    def __init__(self, rows: np.ndarray, texts):
        rows = np.asarray(rows, np.int64)
        texts = texts.combine_chunks() if isinstance(texts, pa.ChunkedArray) else texts
        valid = np.asarray(texts.is_valid().to_numpy(zero_copy_only=False), bool) if len(rows) else np.zeros(0, bool)
        if not valid.all():
            texts = texts.filter(pa.array(valid))
            rows = rows[valid]
        order = np.argsort(rows, kind="stable")
        if len(order) and (order != np.arange(len(order))).any():
            rows, texts = rows[order], texts.take(pa.array(order))
        self.rows, self.texts = rows, texts

    def __getitem__(self, row) -> str:
        pos = int(np.searchsorted(self.rows, row))
        if pos == len(self.rows) or self.rows[pos] != row:
            raise KeyError(row)
        return self.texts[pos].as_py()

    def __iter__(self):
        return iter(self.rows.tolist())

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"RowReasons({len(self)} rows)"


def as_arrow(reasons, n: int) -> pa.Array:
    """Return a check's reasons (a :class:`RowReasons` or a ``{row: text}`` dict) as n strings, null if none."""
    if isinstance(reasons, RowReasons):
        rows, texts = reasons.rows, reasons.texts
    else:
        rows = np.fromiter(reasons.keys(), np.int64, len(reasons))
        order = np.argsort(rows, kind="stable")
        rows, texts = rows[order], pa.array(list(reasons.values()), pa.string()).take(pa.array(order))
    where = np.zeros(n, bool)
    where[rows] = True
    return scatter(texts, where)  # rows are sorted (RowReasons) or, from a dict, taken in key order


def join_reasons(parts, sep: str = "; ") -> pa.Array:
    """Return the element-wise join of equal-length string arrays with `sep`, skipping nulls (all null: null)."""
    out = None
    for part in parts:
        if part is None or (out is not None and part.null_count == len(part)):
            continue
        if out is None:
            out = part
        else:
            # coalesce: where one side is null the other stands alone (join_element_wise emits null there).
            out = pc.coalesce(pc.binary_join_element_wise(out, part, sep), out, part)
    return out


def concat(*pieces, where: np.ndarray | None = None) -> pa.Array:
    """Return the element-wise concatenation of string arrays and constant strings.

    Pieces are Arrow string arrays, numpy arrays (cast to str), or Python strings repeated on
    every row. With `where` (a bool mask over n rows), array pieces hold only the rows where it
    is True, and the result has n rows, null where it is False: each part of a reason is
    formatted only for the rows it applies to.
    """
    arrays = [pa.scalar(p) if isinstance(p, str) else _strings(p) for p in pieces]
    if all(isinstance(a, pa.Scalar) for a in arrays):
        raise ValueError("concat needs at least one array piece")
    out = pc.binary_join_element_wise(*arrays, "")
    if where is None:
        return out
    return scatter(out, where)


def _strings(values) -> pa.Array:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
        return values if pa.types.is_string(values.type) else values.cast(pa.string())
    return pa.array(np.asarray(values).astype(str) if np.asarray(values).dtype.kind != "O" else values, pa.string())


def _group(values: np.ndarray) -> pa.Array:
    """Return non-negative int64 values with thousands separators ("1,234,567")."""
    values = np.asarray(values, np.int64)
    out = _pad3(values % 1000)
    scale = 1000
    while (values >= scale).any():
        out = pc.if_else(pa.array(values >= scale),
                         pc.binary_join_element_wise(_pad3(values // scale % 1000), out, ","), out)
        scale *= 1000
    # Every group was padded to three digits; the leading one keeps none of its zeros ("0" stays "0").
    out = pc.utf8_ltrim(out, "0")
    return pc.if_else(pc.equal(out, ""), pa.scalar("0"), out)


def _pad3(values: np.ndarray) -> pa.Array:
    return pc.utf8_lpad(pc.cast(pa.array(values), pa.string()), 3, "0")


def fmt_int(values, *, sep: bool = True, sign: bool = False) -> pa.Array:
    """Return integers as strings, as ``f"{v:,}"`` (``sep``) or ``f"{v}"``; ``sign`` adds "+" to v >= 0."""
    v = np.asarray(values, np.int64)
    digits = _group(np.abs(v)) if sep else pc.cast(pa.array(np.abs(v)), pa.string())
    return _signed(digits, v < 0, sign)


def fmt_fixed(values, decimals: int, *, sep: bool = False, sign: bool = False) -> pa.Array:
    """Return floats as ``f"{v:.{decimals}f}"`` (``sep``: ``:,.{d}f``; ``sign``: ``:+.{d}f``); NaN as "nan"."""
    v = np.asarray(values, np.float64)
    finite = np.isfinite(v)
    exact = np.abs(np.where(finite, v, 0.0)) * 10.0 ** decimals
    scaled = np.rint(exact).astype(np.int64)
    # Near a half the scaled float may sit on the other side of it than the value itself (0.005 is
    # 0.005000000000000000104, yet 0.005 * 100 == 0.5): those few rows are rounded by Python's format.
    tie = np.flatnonzero(np.abs(exact - np.floor(exact) - 0.5) < 1e-6)
    if len(tie):
        scaled[tie] = [int(format(abs(x), f".{decimals}f").replace(".", "")) for x in v[tie].tolist()]
    negative = finite & np.signbit(v)  # Python keeps the sign of what rounds to zero ("-0.00")
    whole = scaled // 10 ** decimals
    digits = _group(whole) if sep else pc.cast(pa.array(whole), pa.string())
    if decimals:
        frac = pc.utf8_lpad(pc.cast(pa.array(scaled % 10 ** decimals), pa.string()), decimals, "0")
        digits = pc.binary_join_element_wise(digits, frac, ".")
    out = _signed(digits, negative, sign)
    if not finite.all():
        text = np.where(np.isnan(v), "+nan" if sign else "nan", np.where(v > 0, "+inf" if sign else "inf", "-inf")).astype(object)
        out = pc.if_else(pa.array(finite), out, pa.array(text, pa.string()))
    return out


def _signed(digits: pa.Array, negative: np.ndarray, plus: bool) -> pa.Array:
    """Return `digits` with "-" before the `negative` rows (and "+" before the others when `plus`)."""
    if not plus and not negative.any():
        return digits
    signs = pc.if_else(pa.array(negative), pa.scalar("-"), pa.scalar("+" if plus else ""))
    return pc.binary_join_element_wise(signs, digits, "")


def fmt_percent(values, decimals: int = 0) -> pa.Array:
    """Return shares as ``f"{v:.{decimals}%}"`` ("37%")."""
    return pc.binary_join_element_wise(fmt_fixed(np.asarray(values, np.float64) * 100, decimals), pa.scalar("%"), "")


def scatter(texts: pa.Array, where: np.ndarray) -> pa.Array:
    """Return `texts` (one per True row of `where`) spread over ``len(where)`` rows, null elsewhere."""
    where = np.asarray(where, bool)
    if len(texts) == len(where):  # every row: nothing to spread
        return texts.cast(pa.string())
    index = np.full(len(where), len(texts), np.int64)
    index[where] = np.arange(len(texts))
    return pa.concat_arrays([texts.cast(pa.string()), pa.nulls(1, pa.string())]).take(pa.array(index))


def merge_reasons(n: int, results: dict) -> pa.Array:
    """Return one reason per row: the checks' reasons (dicts or :class:`RowReasons`) joined by "; ", null if none."""
    return join_reasons([as_arrow(r.reasons, n) for r in results.values() if len(r.reasons)]) \
        if any(len(r.reasons) for r in results.values()) else pa.nulls(n, pa.string())
