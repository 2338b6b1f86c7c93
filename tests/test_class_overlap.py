"""Class overlap: two classes drawn from one distribution rank first; separated classes overlap nowhere."""

from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pytest

from labelkit.checks import CheckContext, get_checks
from labelkit.checks import class_overlap as co
from labelkit.checks.class_overlap import ClassOverlap, overlapping_classes
from labelkit.issues import find_label_issues

CLASSES = ["ant", "bee", "cat", "dog", "eel"]
PER_CLASS, D = 150, 12


@functools.cache
def _data(*, same: tuple[int, int] | None, noise: float = 0.0, seed: int = 0):
    """Return (ids, labels, out-of-sample probs): 5 separated classes, the `same` pair from one distribution."""
    from sklearn.model_selection import cross_val_predict
    from sklearn.naive_bayes import GaussianNB

    rng = np.random.default_rng(seed)
    K = len(CLASSES)
    centres = rng.normal(size=(K, D)) * 3
    if same:
        centres[same[1]] = centres[same[0]]
    labels = np.repeat(np.arange(K), PER_CLASS)
    if noise:
        flip = rng.random(len(labels)) < noise
        labels[flip] = (labels[flip] + rng.integers(1, K, size=flip.sum())) % K
    x = centres[np.repeat(np.arange(K), PER_CLASS)] + rng.normal(size=(len(labels), D))
    probs = cross_val_predict(GaussianNB(), x, labels, cv=5, method="predict_proba")
    return pa.array([f"r{i}" for i in range(len(labels))]), labels, probs.astype(np.float32)


def _run(ids, labels, probs, *, with_joint: bool = True):
    found = find_label_issues(labels, probs) if with_joint else None
    ctx = CheckContext(ids=ids, labels=labels, classes=CLASSES, pred_probs=probs, label_issues=found)
    return ClassOverlap().run(ctx)


@pytest.mark.parametrize("with_joint,noise", [(True, 0.0), (False, 0.0), (True, 0.05)])
def test_pair_from_one_distribution_ranks_first(with_joint, noise):
    ids, labels, probs = _data(same=(1, 3), noise=noise)
    result = _run(ids, labels, probs, with_joint=with_joint)
    assert result.metrics["overlapping_class_pairs"] == 1
    table = result.tables[0]
    assert table["title"] == "Overlapping class pairs"
    first = table["rows"][0]
    assert {first[0], first[1]} == {"bee", "dog"} and first[-1] == "yes"
    assert first[2] == pytest.approx(result.metrics["max_class_overlap"], abs=1e-5)
    # Half of two of five equal classes are indistinguishable: the pair holds a large mass.
    assert result.metrics["max_class_overlap"] > 0.08
    # Examples: rows given A the probe puts in B, and the other way round, ids of the right rows.
    pred = probs.argmax(1)
    given_a = [i for i in first[5].split(", ")]
    assert 1 <= len(given_a) <= 3
    a, b = CLASSES.index(first[0]), CLASSES.index(first[1])
    for i in given_a:
        r = int(i[1:])
        assert labels[r] == a and pred[r] == b
    pairs = result.details["pairs"]
    assert pairs[0]["overlapping"] and not any(p["overlapping"] for p in pairs[1:])
    assert {pairs[0]["a"], pairs[0]["b"]} == {"bee", "dog"} and 0.3 < pairs[0]["confusion_rate"] <= 1


@pytest.mark.parametrize("noise", [0.0, 0.08])
def test_separated_classes_do_not_overlap(noise):
    ids, labels, probs = _data(same=None, noise=noise)
    result = _run(ids, labels, probs)
    assert result.metrics["overlapping_class_pairs"] == 0
    assert result.tables[0]["title"].startswith("Most confused class pairs")
    assert all(row[-1] == "no" for row in result.tables[0]["rows"])


def test_numpy_path_equals_cleanlab():
    rng = np.random.default_rng(3)
    joint = rng.random((7, 7)) ** 4
    joint /= joint.sum()
    expected = overlapping_classes(joint, 1000)
    saved = co.CLEANLAB_MAX_CLASSES
    try:
        co.CLEANLAB_MAX_CLASSES = 0
        got = overlapping_classes(joint, 1000)
    finally:
        co.CLEANLAB_MAX_CLASSES = saved
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e)


def test_one_class_is_not_measured():
    labels = np.zeros(20, np.int64)
    probs = np.tile(np.float32([[0.9, 0.1, 0, 0, 0]]), (20, 1))
    ctx = CheckContext(ids=pa.array([str(i) for i in range(20)]), labels=labels, classes=CLASSES, pred_probs=probs,
                       label_issues={"joint": None})
    result = ClassOverlap().run(ctx)
    assert result.metrics == {"max_class_overlap": None, "overlapping_class_pairs": None}
    assert "not measured" in result.warnings[0]


def test_registered_needs_probs():
    check = {c.name: c for c in get_checks()}["class_overlap"]
    ctx = CheckContext(ids=pa.array(["a"]), labels=np.zeros(1, np.int64), classes=["a", "b"])
    assert check.applies(ctx) == "needs out-of-sample predicted probabilities"
    assert check.columns == {} and check.flag is None
