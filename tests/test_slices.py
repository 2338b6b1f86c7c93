"""Weak slices: a blob of random labels inside well-separated classes is found; clean data has none."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from labelkit.checks import CheckContext, get_checks
from labelkit.checks.slices import WeakSlices, choose_n_slices, weak_slice_pvalues
from labelkit.errors import LabelkitError

K, PER_CLASS, BLOB, D = 5, 200, 100, 16


def _oos_probs(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    probs = cross_val_predict(LogisticRegression(max_iter=500), x, labels, cv=5, method="predict_proba")
    return probs.astype(np.float32)


def _data(*, blob_labels: str, noise: float = 0.0, seed: int = 0):
    """Return (embeddings, labels, blob rows): K separated classes plus a separate blob of BLOB rows.

    blob_labels='random': the blob's labels are drawn at random (a weak slice);
    'consistent': the blob is all class 0 (clean control). `noise` flips that fraction of all
    labels uniformly (label noise spread evenly, which makes no slice weak).
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(K + 1, D)) * 4
    x = np.concatenate([centres[k] + rng.normal(size=(PER_CLASS, D)) for k in range(K + 1)])
    labels = np.repeat(np.arange(K + 1), PER_CLASS)[: len(x)]
    x, labels = x[: K * PER_CLASS + BLOB], labels[: K * PER_CLASS + BLOB]
    blob = np.arange(K * PER_CLASS, len(x))
    labels[blob] = rng.integers(0, K, size=BLOB) if blob_labels == "random" else 0
    if noise:
        flip = rng.random(len(x)) < noise
        labels[flip] = (labels[flip] + rng.integers(1, K, size=flip.sum())) % K
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return x, labels.astype(np.int64), blob


def _ctx(x, labels, **options) -> CheckContext:
    ids = pa.array([f"row{i}" for i in range(len(x))])
    return CheckContext(ids=ids, labels=labels, classes=[f"c{k}" for k in range(K)], embeddings=x,
                        pred_probs=_oos_probs(x, labels), options=options, seed=0)


def test_random_label_blob_is_a_weak_slice():
    x, labels, blob = _data(blob_labels="random")
    ctx = _ctx(x, labels)
    result = WeakSlices().run(ctx)
    flagged = result.columns["in_weak_slice"]
    m = result.metrics
    assert m["weak_slices"] >= 1
    # The weak rows are the blob's: most of the blob is flagged, almost nothing else is.
    assert flagged[blob].mean() >= 0.8
    assert flagged[np.setdiff1d(np.arange(len(x)), blob)].mean() <= 0.02
    assert m["weak_slice_rows"] == int(flagged.sum())
    assert m["worst_slice_accuracy"] < 0.5
    # Every flagged row has a reason naming its slice, its accuracy and the dataset's.
    assert set(result.reasons) == set(np.flatnonzero(flagged))
    row = int(np.flatnonzero(flagged)[0])
    s = int(result.columns["slice"][row])
    overall = (ctx.pred_probs.argmax(1) == labels).mean()
    assert result.reasons[row].startswith(f"in slice {s} (")
    expected = f"right {result.columns['slice_accuracy'][row]:.0%} of the time vs {overall:.0%} overall; mostly '"
    assert expected in result.reasons[row]
    table = result.tables[0]
    assert table["title"] == "Weak slices" and len(table["rows"]) == m["weak_slices"]
    first = table["rows"][0]
    assert first[6] == "yes" and first[2] == pytest.approx(m["worst_slice_accuracy"], abs=1e-4)
    assert first[5].startswith("row")  # example ids
    assert result.details["n_slices"] == choose_n_slices(len(x))


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_clean_and_uniformly_noisy_data_have_no_weak_slice(noise):
    x, labels, _ = _data(blob_labels="consistent", noise=noise)
    result = WeakSlices().run(_ctx(x, labels))
    assert result.metrics["weak_slices"] == 0
    assert not result.columns["in_weak_slice"].any() and result.reasons == {}
    assert result.tables[0]["title"].startswith("Lowest-accuracy slices")
    assert result.metrics["worst_slice_accuracy"] > 0.75


def test_rows_of_a_class_the_probe_left_out_are_not_counted_wrong():
    # The blob is a class of its own that the probe left out: no probability, no verdict (quality NaN).
    x, labels, blob = _data(blob_labels="consistent")
    probs = np.concatenate([_oos_probs(x, labels), np.zeros((len(x), 1), np.float32)], axis=1)
    labels[blob] = K
    quality = np.where(np.isin(np.arange(len(x)), blob), np.nan, probs[np.arange(len(x)), labels])
    found = {"is_label_issue": np.zeros(len(x), bool), "label_quality": quality,
             "suggested_label": np.where(np.isnan(quality), -1, probs.argmax(1))}
    ctx = CheckContext(ids=pa.array([f"row{i}" for i in range(len(x))]), labels=labels,
                       classes=[f"c{k}" for k in range(K + 1)], embeddings=x, pred_probs=probs, label_issues=found,
                       seed=0)
    result = WeakSlices().run(ctx)
    judged = ~np.isnan(quality)
    probe_accuracy = (found["suggested_label"] == labels)[judged].mean()
    assert result.details["overall_accuracy"] == pytest.approx(probe_accuracy) and probe_accuracy > 0.95
    assert result.metrics["weak_slices"] == 0 and not result.columns["in_weak_slice"].any()
    assert sum(s["rows"] for s in result.details["slices"]) == judged.sum()
    assert result.metrics["worst_slice_accuracy"] > 0.75


def test_number_of_slices_and_pvalues():
    assert choose_n_slices(100) == 5  # 100 rows: at most 5 slices of 20
    assert choose_n_slices(1000) == 22
    assert choose_n_slices(2_000_000) == 100
    assert choose_n_slices(30) == 1
    p = weak_slice_pvalues(np.array([10, 45, 48]), np.array([50, 50, 50]), 0.95, min_gap=0.1)
    # 20% right when 85% is the bar: certain; 90% right: not below the bar at all.
    assert p[0] < 1e-12 and p[1] > 0.5 and p[2] > 0.9


def test_too_few_rows_is_not_measured_and_bad_parameters_are_user_errors():
    x, labels, _ = _data(blob_labels="consistent")
    rows = np.random.default_rng(1).choice(len(x), 30, replace=False)
    small = _ctx(x[rows], labels[rows])
    result = WeakSlices().run(small)
    assert result.metrics == {"weak_slices": None, "weak_slice_rows": None, "worst_slice_accuracy": None}
    assert "not searched" in result.warnings[0]
    # The thresholds are module constants; the pure functions' parameters are checked, 0 included.
    with pytest.raises(LabelkitError, match="The 'min_gap' parameter of weak_slice_pvalues must be a number in the "
                                            r"range \[0, 1\]. Got 2 instead."):
        weak_slice_pvalues(np.array([10]), np.array([50]), 0.9, min_gap=2)
    with pytest.raises(LabelkitError, match="The 'min_slice_rows' parameter of choose_n_slices must be an int in "
                                            r"the range \[1, inf\). Got 0 instead."):
        choose_n_slices(1000, min_slice_rows=0)
    from labelkit.checks.slices import find_slices

    with pytest.raises(LabelkitError, match="The 'n_slices' parameter of find_slices must be an int in the range"):
        find_slices(x, 0)


def test_same_seed_gives_identical_columns_and_metrics():
    x, labels, _ = _data(blob_labels="random")
    ctx = _ctx(x, labels)
    a, b = WeakSlices().run(ctx), WeakSlices().run(ctx)
    assert a.metrics == b.metrics and a.details == b.details and a.reasons == b.reasons and a.tables == b.tables
    for name in ("slice", "in_weak_slice", "slice_accuracy"):
        np.testing.assert_array_equal(a.columns[name], b.columns[name])


def test_registered_for_multiclass_with_embeddings_and_probs():
    check = {c.name: c for c in get_checks()}["weak_slices"]
    ctx = CheckContext(ids=pa.array(["a"]), labels=np.zeros(1, np.int64), classes=["a", "b"])
    assert check.applies(ctx) == "needs an embedding per row"
