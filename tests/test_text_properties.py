import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import SAMPLE
from labelkit.checks import REGISTRY, CheckContext
from labelkit.checks.text_properties import (find_conflicting_texts, get_text_length_scores, get_text_length_zscores,
                                             normalize_texts)

WORDS = ("the plot was slow but the actors carried it well and the ending surprised everyone in the room "
         "music camera light story dialogue pacing scene").split()


def reviews(n=300, seed=0):
    """Ordinary review-like texts of 6 to 20 words, with random labels 'neg'/'pos'."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, rng.integers(6, 21))).capitalize() + "." for _ in range(n)]
    return texts, rng.integers(0, 2, n)


def context(texts, labels, classes=("neg", "pos")):
    items = pa.table({"id": [f"r{i}" for i in range(len(texts))], "text": pa.array(texts, pa.string())})
    return CheckContext(ids=items.column("id").combine_chunks(), labels=np.asarray(labels, np.int64),
                        classes=list(classes), modality="text", items=items)


def run(texts, labels):
    return REGISTRY["text_properties"].run(context(texts, labels))


def test_planted_text_problems_are_found_with_their_reasons():
    texts, labels = reviews()
    planted = {3: "", 4: " \u200b\t\ufeff\n", 5: "\ufffd" * 60, 6: "\x00".join("a good film, well acted"),
               7: "Ok", 8: " ".join(["the plot was slow"] * 200), 9: "Great movie, loved it!",
               10: "great   MOVIE,\tloved it!", 11: "GREAT movie, loved it!"}
    for row, text in planted.items():
        texts[row] = text
    labels[[9, 11]], labels[10] = 1, 0
    median = np.median([len(t.strip()) for i, t in enumerate(texts) if i not in (3, 4)])
    r = run(texts, labels)
    c = r.columns
    assert np.flatnonzero(c["is_empty_text"]).tolist() == [3, 4]
    assert np.flatnonzero(c["is_garbled_text"]).tolist() == [5, 6]
    assert np.flatnonzero(c["is_short_text"]).tolist() == [7]
    assert np.flatnonzero(c["is_long_text"]).tolist() == [8]
    assert np.flatnonzero(c["is_conflicting_text"]).tolist() == [9, 10, 11]
    assert np.flatnonzero(c["is_text_property_issue"]).tolist() == list(range(3, 12))
    assert r.metrics == {"empty_text_rate": 2 / 300, "short_text_rate": 1 / 300, "long_text_rate": 1 / 300,
                         "garbled_text_rate": 2 / 300, "conflicting_text_rows": 3}
    assert r.reasons[3] == "text is empty" and r.reasons[4] == "text is blank: 5 whitespace or invisible characters"
    assert r.reasons[5] == "text is garbled: 100% of 60 characters are control or U+FFFD replacement characters"
    assert r.reasons[6].startswith("text is garbled: 49% of 45 characters")
    assert r.reasons[7].startswith(f"text is very short: 2 characters (median {median:.0f}, robust z -")
    assert r.reasons[8].startswith("text is very long: 3,599 characters")
    assert r.reasons[10] == "same text as r9 labelled 'pos' (33% of its copies labelled 'neg')"
    assert r.reasons[9] == r.reasons[11] == "same text as r10 labelled 'neg' (67% of its copies labelled 'pos')"
    assert set(r.reasons) == set(range(3, 12))
    # Worst first: empty rows score 0, the minority label of a conflict scores its agreement.
    assert c["text_property_score"][3] == c["text_property_score"][4] == 0
    assert c["text_property_score"][10] == pytest.approx(1 / 3)
    assert c["garbled_score"][5] == 0 and c["garbled_score"][6] == pytest.approx(23 / 45)


def test_ordinary_texts_are_clean():
    texts, labels = reviews(seed=1)
    texts[0] = texts[1]  # a repeated text with the same label is no conflict
    labels[0] = labels[1]
    texts[2] = "Café crème — naïve façade, 日本語のレビュー 🎬 with\ttabs\nand newlines."
    r = run(texts, labels)
    assert not r.columns["is_text_property_issue"].any()
    assert r.reasons == {}
    assert r.metrics == {"empty_text_rate": 0.0, "short_text_rate": 0.0, "long_text_rate": 0.0,
                         "garbled_text_rate": 0.0, "conflicting_text_rows": 0}
    for col in ("text_length_score", "garbled_score", "text_property_score"):
        assert r.columns[col].dtype == np.float32
        assert ((r.columns[col] > 0.5) & (r.columns[col] <= 1)).all()


def test_length_zscore_is_robust_and_never_flags_within_a_factor_two():
    # More than half the texts have one length: the MAD is 0 and the floor decides.
    lengths = np.array([40] * 90 + [70, 79, 81, 200, 0])
    z, median = get_text_length_zscores(lengths)
    assert median == 40
    assert z[-1] == 0  # empty rows do not take part
    assert (np.abs(z[:-3]) < 3.5).all()  # 1.75x and 1.98x the median: not odd
    assert z[-3] > 3.5 and z[-2] > 3.5  # 2.03x and 5x
    # Spread lengths: the modified z-score of log length, 0.6745 (x - median) / MAD.
    rng = np.random.default_rng(0)
    lengths = np.round(np.exp(rng.normal(4, 0.5, 1001))).astype(int)
    z, _ = get_text_length_zscores(lengths)
    logs = np.log(lengths)
    expected = 0.6745 * (logs - np.median(logs)) / np.median(np.abs(logs - np.median(logs)))
    np.testing.assert_allclose(z, expected, rtol=1e-5)
    assert get_text_length_scores(np.array([0.0, 3.5, -7.0])).tolist() == [1.0, 0.5, 0.0625]


def test_conflicts_are_found_per_normalised_text():
    keys = normalize_texts(pa.array(["A  b", "a b", "a\u00a0B ", "c", "c", None, "d", "d"]))
    assert keys.to_pylist() == ["a b", "a b", "a b", "c", "c", None, "d", "d"]
    labels = np.array([0, 1, 2, 0, 0, 1, 1, 0])
    conflicting, other, agreement = find_conflicting_texts(keys, labels, 3)
    assert conflicting.tolist() == [True, True, True, False, False, False, True, True]
    assert other.tolist() == [1, 0, 0, -1, -1, -1, 7, 6]
    np.testing.assert_allclose(agreement, [1 / 3, 1 / 3, 1 / 3, 1, 1, 1, 0.5, 0.5])


def test_check_is_skipped_for_images_and_declares_its_columns():
    check = REGISTRY["text_properties"]
    texts, labels = reviews(20)
    ctx = context(texts, labels)
    assert check.applies(ctx) is None
    ctx.modality = "image"
    assert check.applies(ctx) == "needs text rows"
    assert set(run(texts, labels).columns) == set(check.columns)


def test_audit_of_a_text_csv_reports_planted_rows_and_gates_on_them(cli, tmp_path):
    """End to end: ingest, MiniLM embedding, issues, report, gate on the text-property metrics."""
    df = pd.read_csv(SAMPLE / "text" / "reviews.csv").head(80)
    df.loc[5, "text"] = "\u200b\u200b\ufeff"  # survives ingest's str.strip(), says nothing
    df.loc[6, "text"] = "\ufffd" * 60  # a file decoded with the wrong codec
    df.loc[7, "text"] = "  " + df.loc[8, "text"].upper()
    df.loc[7, "label"] = next(c for c in sorted(set(df["label"])) if c != df.loc[8, "label"])
    df.to_csv(tmp_path / "t.csv", index=False)
    code, out, _ = cli("audit", tmp_path / "t.csv", "-w", tmp_path / "ws", "--json",
                       "--fail-on", "garbled_text_rate>0,conflicting_text_rows>1,empty_text_rate>0.05")
    result = json.loads(out)
    gate = {r["rule"]: r["verdict"] for r in result["gate"]["results"]}
    assert gate == {"garbled_text_rate>0": "fail", "conflicting_text_rows>1": "fail", "empty_text_rate>0.05": "pass"}
    assert code == 1
    summary = result["summary"]
    assert summary["empty_text_rate"] == summary["garbled_text_rate"] == 1 / 80
    assert summary["conflicting_text_rows"] == 2 and summary["short_text_rate"] == summary["long_text_rate"] == 0
    assert summary["checks"]["text_properties"]["flagged"] == 4
    assert summary["spurious_correlations"] == 0  # text length says nothing about the topic

    issues = pq.read_table(tmp_path / "ws" / "issues.parquet").to_pandas().set_index("id")
    flagged = issues.index[issues["is_text_property_issue"]].tolist()
    assert flagged == ["t0005", "t0006", "t0007", "t0008"]
    assert "text is blank: 3 whitespace or invisible characters" in issues.loc["t0005", "reason"]
    assert "text is garbled: 100% of 60 characters" in issues.loc["t0006", "reason"]
    assert f"same text as t0008 labelled {df.loc[8, 'label']!r}" in issues.loc["t0007", "reason"]
    assert f"same text as t0007 labelled {df.loc[7, 'label']!r}" in issues.loc["t0008", "reason"]


def test_regression_rows_get_the_text_checks_but_no_label_conflicts():
    texts, _ = reviews(50)
    texts[1] = texts[0]
    ctx = context(texts, np.arange(50))  # labels as a regression task would have them: not classes
    ctx.task = "regression"
    texts_check = REGISTRY["text_properties"]
    assert texts_check.applies(ctx) is None and REGISTRY["spurious_correlations"].applies(ctx) == "not for regression data"
    r = texts_check.run(ctx)
    assert r.metrics["conflicting_text_rows"] is None and not r.columns["is_conflicting_text"].any()


# ---------------------------------------------------------------------------------------------
# The vectorised check against a straightforward per-row reference (the oracle below is the
# check as it was written before its reasons were built with Arrow kernels: one Python pass per row).

_ORACLE_BLANK = "".join(c for c in map(chr, range(0x3001)) if c.isspace()) + "\u00ad\u200b\u200c\u200d\u2060\ufeff"
_ORACLE_SPACE = "[ \t\n\x0b\x0c\r\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+"


def _oracle_unreadable(ch):
    import unicodedata

    o = ord(ch)
    return (o <= 8 or o in (0xB, 0xC) or 0xE <= o <= 0x1F or 0x7F <= o <= 0x9F or 0xFFFD <= o <= 0xFFFF
            or unicodedata.category(ch) == "Co")


def _oracle(texts, labels, classes, ids):
    """Return (columns, reasons) of text_properties computed row by row in plain Python."""
    import math
    import re
    import statistics

    n = len(texts)
    length = [len(t.strip(_ORACLE_BLANK)) if t is not None else 0 for t in texts]
    raw = [len(t) if t is not None else 0 for t in texts]
    empty = [L == 0 for L in length]
    logs = [math.log(L) for L in length if L > 0]
    med = statistics.median(logs)
    dev = [abs(x - med) for x in logs]
    mad = statistics.median(dev)
    scale = max(mad / 0.6745 if mad > 0 else 1.2533 * statistics.fmean(dev), math.log(2.0) / 3.5)
    z = [(math.log(L) - med) / scale if L > 0 else 0.0 for L in length]
    median = statistics.median([L for L in length if L > 0])
    bad = [sum(map(_oracle_unreadable, t)) / len(t) if t else 0.0 for t in texts]
    keys = [None if e or t is None else re.sub(_ORACLE_SPACE, " ", t).lower().strip() for t, e in zip(texts, empty)]
    groups = {}
    for i, k in enumerate(keys):
        if k is not None:
            groups.setdefault(k, []).append(i)
    conflicting, other, agreement = [False] * n, [-1] * n, [1.0] * n
    for rows in groups.values():
        present = sorted({labels[i] for i in rows})
        for i in rows:
            agreement[i] = sum(labels[j] == labels[i] for j in rows) / len(rows)
            if len(present) > 1:
                conflicting[i] = True
                want = present[1] if labels[i] == present[0] else present[0]
                other[i] = next(j for j in rows if labels[j] == want)
    short = [not e and v < -3.5 for e, v in zip(empty, z)]
    long = [not e and v > 3.5 for e, v in zip(empty, z)]
    garbled = [not e and b >= 0.3 for e, b in zip(empty, bad)]
    reasons = {}
    for i in range(n):
        parts = []
        if empty[i]:
            parts.append("text is empty" if raw[i] == 0 else
                         f"text is blank: {raw[i]} whitespace or invisible characters")
        if short[i] or long[i]:
            parts.append(f"text is very {'short' if short[i] else 'long'}: {length[i]:,} characters "
                         f"(median {median:,.0f}, robust z {z[i]:+.1f})")
        if garbled[i]:
            parts.append(f"text is garbled: {bad[i]:.0%} of {raw[i]:,} characters "
                         "are control or U+FFFD replacement characters")
        if conflicting[i]:
            parts.append(f"same text as {ids[other[i]]} labelled {classes[labels[other[i]]]!r}"
                         f" ({agreement[i]:.0%} of its copies labelled {classes[labels[i]]!r})")
        if parts:
            reasons[i] = "; ".join(parts)
    columns = {"is_empty_text": empty, "is_short_text": short, "is_long_text": long, "is_garbled_text": garbled,
               "is_conflicting_text": conflicting}
    return columns, reasons, {"z": z, "bad": bad, "agreement": agreement}


def _awkward_texts(n, seed):
    """Seeded texts with the awkward cases: None, empty, blank, unicode, control characters, conflicts."""
    rng = np.random.default_rng(seed)
    pool = ["Café crème", "naïve FAÇADE", "日本語のレビュー", "🎬🎬", "x", "Ok", "the  plot\twas slow", "THE PLOT was slow",
            "", " \u200b ", "\u00ad", "\ufffd\ufffd\ufffd", "a\x00b\x00c", "\ue000 private", "ÜBER   größe",
            " ".join(["long review text"] * 60), "y", "1234567", "\u3000full width\u3000"]
    texts = [None if rng.random() < 0.03 else str(rng.choice(pool)) if rng.random() < 0.5
             else " ".join(rng.choice(WORDS, rng.integers(1, 12))) for _ in range(n)]
    return texts, rng.integers(0, 3, n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_text_properties_equal_the_per_row_reference(seed):
    texts, labels = _awkward_texts(2000, seed)
    classes = ["neg", "pos", "it's"]  # a name whose repr uses double quotes
    ids = [f"r{i}" for i in range(len(texts))]
    r = run_classes(texts, labels, classes)
    columns, reasons, numbers = _oracle(texts, labels.tolist(), classes, ids)
    for name, expected in columns.items():
        assert r.columns[name].tolist() == expected, name
    assert r.columns["garbled_score"] == pytest.approx(1 - np.array(numbers["bad"]), abs=1e-6)
    assert dict(r.reasons) == reasons
    assert r.reasons == reasons and len(r.reasons) == len(reasons)
    assert sum(r.columns["is_conflicting_text"]) > 100 and sum(r.columns["is_empty_text"]) > 50


def run_classes(texts, labels, classes):
    return REGISTRY["text_properties"].run(context(texts, labels, classes))


def test_reason_number_formats_equal_pythons():
    from labelkit.checks import reasons as R

    rng = np.random.default_rng(0)
    ints = np.concatenate([[0, 1, -1, 999, 1000, -1000, 10 ** 6, 999_999, 1_234_567_890], rng.integers(-10 ** 10, 10 ** 10, 500)])
    assert R.fmt_int(ints).to_pylist() == [f"{v:,}" for v in ints.tolist()]
    assert R.fmt_int(ints, sep=False, sign=True).to_pylist() == [f"{v:+}" for v in ints.tolist()]
    floats = np.concatenate([[0.0, -0.0, -0.001, 0.005, 0.015, 0.125, 2.5, -2.5, np.nan, np.inf, -np.inf],
                             rng.normal(0, 100, 1000), np.round(rng.normal(0, 10, 1000), 3)])
    for d in (0, 1, 2):
        assert R.fmt_fixed(floats, d, sign=True).to_pylist() == [f"{v:+.{d}f}" for v in floats.tolist()]
        assert R.fmt_fixed(floats, d, sep=True).to_pylist() == [f"{v:,.{d}f}" for v in floats.tolist()]
    shares = rng.random(1000)
    assert R.fmt_percent(shares).to_pylist() == [f"{v:.0%}" for v in shares.tolist()]


def test_merged_reasons_join_dicts_and_arrow_reasons():
    from labelkit.checks import reasons as R
    from labelkit.checks.base import CheckResult

    arrow = R.RowReasons(np.array([4, 1]), pa.array(["b4", "b1"]))
    assert dict(arrow) == {1: "b1", 4: "b4"} and 4 in arrow and 2 not in arrow
    a, b = CheckResult(reasons={3: "a3", 1: "a1"}), CheckResult(reasons=arrow)
    merged = R.merge_reasons(6, {"a": a, "b": b})
    assert merged.to_pylist() == [None, "a1; b1", None, "a3", "b4", None]
