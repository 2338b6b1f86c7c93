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
