"""Shared helpers of the task checks (labelkit.checks._task_common) and CheckContext.has, on planted arrays."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from labelkit.checks._task_common import format_numbers, residual_reason, residual_reasons
from labelkit.checks.base import CheckContext
from labelkit.checks.regression_targets import RegressionTargets


def _regression_context(n: int = 2000, flagged: int = 300, seed: int = 0) -> CheckContext:
    rng = np.random.default_rng(seed)
    y = rng.normal(50.0, 20.0, n)
    y[:5] = [1234.5678, -0.000123, 0.0, 987654.321, -42.0]  # mixed scales set the rounding of every reason
    pred = y + rng.normal(0.0, 1.0, n)
    rows = rng.choice(n, flagged, replace=False)
    pred[rows] += rng.choice([-1, 1], flagged) * rng.uniform(8, 80, flagged)
    flags = np.zeros(n, bool)
    flags[rows] = True
    z = (y - pred) / 1.0
    found = {"targets": y, "predictions": pred, "is_label_issue": flags, "residual_z": z,
             "label_quality": np.exp(-np.abs(z)), "center": 0.0, "scale": 1.0, "z_threshold": 3.5,
             "residual": y - pred}
    return CheckContext(ids=pa.array([f"r{i}" for i in range(n)]), labels=np.full(n, -1), classes=[],
                        task="regression", label_issues=found, targets=y, predictions=pred,
                        probe_info={"chosen": "ridge"})


def test_reasons_of_many_flagged_rows_equal_the_per_row_reasons():
    ctx = _regression_context()
    r = ctx.label_issues
    y, pred, z = r["targets"], r["predictions"], r["residual_z"]
    result = RegressionTargets().run(ctx)
    rows = np.flatnonzero(r["is_label_issue"])
    assert sorted(result.reasons) == rows.tolist()
    for i in rows:  # the per-row reason, each formatting against all targets
        assert result.reasons[int(i)] == residual_reason(y[i], pred[i], z[i], reference=y)
    assert result.reasons[int(rows[0])].startswith("target ")
    batch = residual_reasons(y[rows], pred[rows], z[rows], reference=y)
    assert batch == [residual_reason(y[i], pred[i], z[i], reference=y) for i in rows]


def test_residual_reasons_round_to_the_reference_scale_and_handle_no_rows():
    y = np.array([41.23456, 3.0, 2.5])
    lines = residual_reasons(y[:2], np.array([3.5, 41.2]), np.array([4.0, -5.25]), reference=y)
    assert lines == ["target 41.235; probe predicts 3.5 out of sample (residual +37.73, 4.0 robust σ)",
                     "target 3; probe predicts 41.2 out of sample (residual -38.2, 5.2 robust σ)"]
    assert residual_reasons(np.array([]), np.array([]), np.array([]), reference=y) == []
    assert residual_reason(3.0, 1.0, 2.0) == residual_reasons(np.array([3.0]), np.array([1.0]), np.array([2.0]))[0]
    assert format_numbers(np.array([np.nan, 1.0])).to_pylist() == [None, "1"]


@pytest.mark.parametrize("column, expected", [
    (pa.nulls(4), False),
    (pa.array(["train", None, "train", "train"]), False),
    (pa.array(["train", None, "test", "train"]), True),
    (pa.chunked_array([["train", "train"], [None, "val"]]), True),
    (pa.array([], pa.string()), False),
])
def test_has_split_needs_two_distinct_non_null_splits(column, expected):
    n = len(column)
    ctx = CheckContext(ids=pa.array([str(i) for i in range(n)], pa.string()), labels=np.zeros(n, np.int64),
                       classes=["a"], items=pa.table({"split": column}))
    assert ctx.has("split") is expected
    assert CheckContext(ids=pa.array([], pa.string()), labels=np.zeros(0, np.int64), classes=["a"]).has("split") is False


def test_training_lines_equal_the_per_row_text():
    from labelkit.tasks.multilabel import training_lines

    rng = np.random.default_rng(1)
    Y = rng.random((400, 9)) < 0.2
    ids = pa.array([f"img/{i}.png" for i in range(400)])
    expected = "\n".join(f"{i}\t{np.flatnonzero(y).tolist()}" for i, y in zip(ids.to_pylist(), Y)).encode()
    assert training_lines(ids, Y) == expected
    assert training_lines(ids[:0], Y[:0]) == b""


def test_lists_from_display_inverts_display_labels():
    from labelkit.checks._task_common import display_labels
    from labelkit.tasks.multilabel import lists_from_display

    lists = pa.array([["a", "b"], [], ["c"], ["a", "b c"]], pa.list_(pa.string()))
    display = display_labels(lists)
    assert display.to_pylist() == ["a; b", "(no labels)", "c", "a; b c"]
    assert lists_from_display(display).to_pylist() == lists.to_pylist()
