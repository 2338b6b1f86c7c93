import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from labelkit.checks import REGISTRY, CheckContext
from labelkit.checks.spurious_correlations import collect_properties, get_property_label_scores

CLASSES = ["bird", "cat", "dog"]


def image_context(brightness, labels, seed=0, classes=CLASSES):
    """Image rows alike in every property but `brightness`: random blur, entropy, size and bytes."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    items = pa.table({"id": [f"img/{i}.png" for i in range(n)],
                      "prop_brightness": pa.array(brightness, pa.float32()),
                      "prop_blurriness": pa.array(rng.uniform(5, 40, n), pa.float32()),
                      "prop_entropy": pa.array(rng.uniform(4, 7.5, n), pa.float32()),
                      "width": pa.array(rng.integers(200, 400, n), pa.int32()),
                      "height": pa.array(rng.integers(200, 400, n), pa.int32()),
                      "bytes": pa.array(rng.integers(20_000, 90_000, n), pa.int64())})
    return CheckContext(ids=items.column("id").combine_chunks(), labels=np.asarray(labels, np.int64),
                        classes=list(classes), modality="image", items=items, seed=seed)


def dark_cats(n=900, seed=0, planted=True):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    brightness = rng.uniform(0.25, 0.85, n)
    if planted:
        cats = labels == CLASSES.index("cat")
        brightness[cats] = rng.uniform(0.02, 0.15, cats.sum())
    return brightness, labels


def test_all_cats_dark_flags_brightness_and_nothing_else():
    brightness, labels = dark_cats()
    r = REGISTRY["spurious_correlations"].run(image_context(brightness, labels))
    props = r.details["properties"]
    assert set(props) == {"brightness", "blurriness", "entropy", "width", "height", "aspect_ratio", "file_bytes"}
    assert [p for p, v in props.items() if v["flagged"]] == ["brightness"]
    assert r.metrics["spurious_correlations"] == 1
    assert props["brightness"]["class_auc"]["cat"] > 0.99
    assert props["brightness"]["class_mean"]["cat"] < 0.15 < props["brightness"]["class_mean"]["dog"]
    # Cats are a third of the rows: telling them apart removes about half of the majority-class error.
    assert 0.35 < props["brightness"]["label_uncorrelatedness"] < 0.65
    assert r.metrics["max_spurious_correlation"] == pytest.approx(1 - props["brightness"]["label_uncorrelatedness"])
    assert r.details["findings"][0].startswith("brightness alone tells 'cat' from the other classes (AUC 1.00): mean 0.0")
    table = r.tables[0]
    assert table["rows"][0][0] == "brightness" and table["rows"][0][-1] == "yes"
    assert all(row[-1] == "" for row in table["rows"][1:])
    assert r.columns == {} and r.reasons == {}


def test_random_brightness_is_not_flagged():
    brightness, labels = dark_cats(planted=False)
    r = REGISTRY["spurious_correlations"].run(image_context(brightness, labels))
    assert r.metrics["spurious_correlations"] == 0
    assert r.metrics["max_spurious_correlation"] < 0.1
    assert all(max(v["class_auc"].values()) < 0.65 for v in r.details["properties"].values())


def test_one_class_of_ten_is_flagged_though_accuracy_barely_moves():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, 2000)
    brightness = rng.uniform(0.25, 0.85, 2000)
    brightness[labels == 4] = rng.uniform(0.02, 0.15, (labels == 4).sum())
    classes = [f"c{i}" for i in range(10)]
    r = REGISTRY["spurious_correlations"].run(image_context(brightness, labels, classes=classes))
    b = r.details["properties"]["brightness"]
    assert b["label_uncorrelatedness"] > 0.8  # accuracy over all ten classes hides it ...
    assert b["flagged"] and r.metrics["spurious_correlations"] == 1  # ... the class's own AUC does not
    assert "tells 'c4' from the other classes" in r.details["findings"][0]


def test_a_class_in_the_middle_of_the_range_is_seen():
    # Not monotone: 'cat' rows sit in a narrow middle band that a mean or a threshold would miss.
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 1500)
    values = rng.uniform(0, 1, 1500)
    values[labels == 1] = rng.uniform(0.45, 0.55, (labels == 1).sum())
    s = get_property_label_scores(values, labels, 2)
    assert s["class_auc"][1] > 0.9 and s["label_uncorrelatedness"] < 0.3 and s["accuracy_z"] > 10
    assert abs(values[labels == 1].mean() - values[labels == 0].mean()) < 0.05


def test_scores_under_no_correlation_stay_near_chance():
    rng = np.random.default_rng(2)
    worst_auc, lowest = 0.0, 1.0
    for seed in range(20):
        labels = rng.integers(0, 4, 1000)
        s = get_property_label_scores(rng.normal(size=1000), labels, 4, seed=seed)
        worst_auc = max(worst_auc, np.nanmax(s["class_auc"]))
        lowest = min(lowest, s["label_uncorrelatedness"])
        assert s["baseline"] == np.bincount(labels).max() / 1000
    assert worst_auc < 0.6 and lowest > 0.9


@pytest.mark.parametrize("shift", [0.0, 1.0, 5.0])
def test_accuracy_agrees_with_cleanlab_datalab_on_the_same_values(shift):
    """Datalab's spurious-correlation score on the same property, turned back into its accuracy."""
    from cleanlab.datalab.internal.spurious_correlation import SpuriousCorrelations

    rng = np.random.default_rng(4)
    labels = np.repeat([0, 1], [700, 500])
    values = rng.normal(size=1200) + shift * labels
    ours = get_property_label_scores(values, labels, 2)
    lab = SpuriousCorrelations(pd.DataFrame({"brightness": values}), labels)
    score = float(lab.calculate_correlations()["score"].iloc[0])
    # Datalab: score = min(1, (1 - accuracy) / (1 - baseline)) with its own baseline.
    theirs = 1 - score * (1 - lab._get_baseline())
    assert ours["accuracy"] == pytest.approx(theirs, abs=0.03)
    # Both call the separated property correlated and the unrelated one not (Datalab's cut: 0.3).
    assert (score < 0.3) == (ours["label_uncorrelatedness"] < 0.3) == (shift == 5.0)


def test_text_length_that_gives_the_label_away_is_flagged():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 600)
    lengths = np.where(labels == 1, rng.integers(5, 15, 600), rng.integers(40, 120, 600))
    items = pa.table({"id": [str(i) for i in range(600)], "text": ["word " * int(k) for k in lengths]})
    ctx = CheckContext(ids=items.column("id").combine_chunks(), labels=labels, classes=["neg", "pos"],
                       modality="text", items=items)
    assert list(collect_properties(ctx)) == ["text_length"]
    r = REGISTRY["spurious_correlations"].run(ctx)
    assert r.metrics["spurious_correlations"] == 1 and r.metrics["max_spurious_correlation"] > 0.9
    # The expected finding from the generated texts: "word " * k trimmed is 5k - 1 characters.
    chars = 5 * lengths - 1
    auc = r.details["properties"]["text_length"]["class_auc"]["neg"]
    assert auc > 0.95
    assert r.details["findings"][0] == (f"text_length alone tells 'neg' from 'pos' (AUC {auc:.2f}): mean "
                                        f"{chars[labels == 0].mean():.3g} in 'neg' vs {chars[labels == 1].mean():.3g} "
                                        "in 'pos'")


def test_no_varying_property_means_not_measured():
    labels = np.array([0, 1] * 20)
    items = pa.table({"id": [str(i) for i in range(40)], "text": ["same length"] * 40})
    ctx = CheckContext(ids=items.column("id").combine_chunks(), labels=labels, classes=["a", "b"],
                       modality="text", items=items)
    r = REGISTRY["spurious_correlations"].run(ctx)
    assert r.metrics == {"spurious_correlations": None, "max_spurious_correlation": None}
    assert r.details == {"not_measured": "no property varies across the rows"} and r.tables == []


def test_held_out_rows_are_not_fit():
    # Brightness gives the label away on the held-out rows only: they must not be learned from.
    brightness, labels = dark_cats(n=1000, planted=False)
    held = np.zeros(1000, bool)
    held[:900] = True  # most rows: fitting them too gives brightness a cat AUC above 0.9
    cats = held & (labels == CLASSES.index("cat"))
    brightness[cats] = 0.05
    ctx = image_context(brightness, labels)
    assert REGISTRY["spurious_correlations"].run(ctx).details["properties"]["brightness"]["class_auc"]["cat"] > 0.9
    ctx.options["heldout"] = held
    r = REGISTRY["spurious_correlations"].run(ctx)
    assert r.details["rows_scored"] == 100 and r.details["properties"]["brightness"]["rows"] == 100
    assert r.metrics["spurious_correlations"] == 0


def test_same_seed_gives_identical_results():
    brightness, labels = dark_cats()
    a = REGISTRY["spurious_correlations"].run(image_context(brightness, labels, seed=7))
    b = REGISTRY["spurious_correlations"].run(image_context(brightness, labels, seed=7))
    assert a.metrics == b.metrics and a.details == b.details and a.tables == b.tables and a.columns == b.columns
