"""Regression targets (labelkit.tasks.regression): ingest, the out-of-sample probe, flags, the pipeline."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import one_line

from labelkit.tasks.regression import (Z_THRESHOLD, find_regression_issues, format_numbers,
                                       get_out_of_sample_predictions)

ROOT = Path(__file__).resolve().parents[1]


def _make_module():
    spec = importlib.util.spec_from_file_location("make_regression", ROOT / "sample_data" / "make_regression.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_sample(tmp: Path, **kwargs) -> tuple[Path, dict]:
    make = _make_module()
    data = make.make_regression_data(**kwargs)
    make.write_regression(tmp, data)
    return tmp / "targets.csv", data


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A 600-row planted sample audited end to end through the CLI (ingest, issues, report, gate)."""
    from labelkit.cli import main

    tmp = tmp_path_factory.mktemp("regression")
    table, data = _write_sample(tmp / "data", n=600)
    ws = tmp / "ws"
    code = main(["audit", str(table), "--task", "regression", "--label-col", "price", "--embedding-col", "embedding",
                 "-w", str(ws), "--fail-on", "residual_r2<0.2"])
    return ws, data, code


# ---------------------------------------------------------------------------------------------
# ingest


def test_ingest_numeric_target_and_errors(tmp_path):
    from labelkit.ingest import ingest

    vecs = [json.dumps([float(i % 3), 1.0, float(i % 5)]) for i in range(8)]
    pd.DataFrame({"id": [f"a{i}" for i in range(8)], "emb": vecs,
                  "y": ["1.5", "2", "abc", "", "inf", "-3e2", "nan", "7"]}).to_csv(tmp_path / "t.csv", index=False)
    result = ingest(tmp_path / "t.csv", tmp_path / "ws", task="regression", label_col="y", embedding_col="emb")
    items = pq.read_table(tmp_path / "ws" / "items.parquet").to_pandas().set_index("id")
    assert result.classes == [] and result.usable_rows == 4
    assert items["target"].dtype == np.float64
    assert items.loc["a0", "target"] == 1.5 and items.loc["a5", "target"] == -300.0
    assert items.loc["a2", "error"] == "non-numeric target: 'abc'"
    assert items.loc["a4", "error"] == "non-numeric target: 'inf'"
    assert items.loc["a6", "error"] == "non-numeric target: 'nan'"
    assert items.loc["a3", "error"] == "missing label"
    assert items.loc["a1", "label"] == "2" and math.isnan(items.loc["a2", "target"])
    manifest = json.loads((tmp_path / "ws" / "manifest.json").read_text())
    assert manifest["task"] == "regression" and manifest["target"]["column"] == "y"
    # the held-out split covers regression rows (they have no class id)
    assert manifest["heldout"]["rows"] >= 1


def test_ingest_missing_target_column_is_a_user_error(tmp_path, cli):
    pd.DataFrame({"id": ["a", "b"], "text": ["x", "y"], "price": [1, 2]}).to_csv(tmp_path / "t.csv", index=False)
    code, out, err = cli("ingest", tmp_path / "t.csv", "--task", "regression", "--label-col", "cost",
                         "-w", tmp_path / "ws")
    assert code == 2
    assert "Label column 'cost' not found" in " ".join((out + err).split())


def test_format_numbers_rounds_to_the_data_scale():
    assert format_numbers(np.array([41.23456, 3.0, np.inf])).to_pylist() == ["41.235", "3", None]


# ---------------------------------------------------------------------------------------------
# the probe


def _linear(n=400, d=12, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    w = rng.normal(size=d)
    return X, X @ w + 0.1 * rng.normal(size=n) + 5.0


def test_ridge_matches_sklearn_on_each_fold():
    from sklearn.linear_model import Ridge

    from labelkit.tasks.regression import _ridge_predictions

    X, y = _linear()
    group = np.arange(len(y)) % 4
    alpha_rel = 0.1
    pred = _ridge_predictions(X, y, group, 4, np.ones(len(y), bool), [alpha_rel])[:, 0]
    Z = (X - X.mean(0)) / X.std(0)
    for g in range(4):
        tr, te = group != g, group == g
        Zc = Z[tr] - Z[tr].mean(0)
        lam = np.linalg.eigvalsh(Zc.T @ Zc).mean()
        ref = Ridge(alpha=alpha_rel * lam).fit(Z[tr], y[tr]).predict(Z[te])
        np.testing.assert_allclose(pred[te], ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("probe", ["logreg", "knn", "auto"])
def test_predictions_never_see_their_own_or_heldout_targets(probe):
    X, y = _linear(n=300)
    held = np.zeros(len(y), bool)
    held[::5] = True
    pred, folds, choice = get_out_of_sample_predictions(X, y, holdout=held, probe=probe, seed=3)
    assert (folds[held] == -1).all() and (folds[~held] >= 0).all()
    # Held-out targets are never read: changing them changes no prediction.
    y2 = y.copy()
    y2[held] += 1000.0
    pred2, _, choice2 = get_out_of_sample_predictions(X, y2, holdout=held, probe=probe, seed=3)
    assert choice2.chosen == choice.chosen
    np.testing.assert_allclose(pred2, pred)
    # A training row's own target does not reach its prediction (only other folds fit it); one
    # setting per family, since the outlier may otherwise change which setting CV picks (and
    # under 'auto' whether the two families are averaged).
    if probe == "auto":
        return
    row = int(np.flatnonzero(~held)[7])
    y3 = y.copy()
    y3[row] += 1000.0
    fixed = {"alpha_grid": (0.01,), "k_grid": (10,), "holdout": held, "probe": probe, "seed": 3}
    pred1, _, c1 = get_out_of_sample_predictions(X, y, **fixed)
    pred3, _, c3 = get_out_of_sample_predictions(X, y3, **fixed)
    assert c1.chosen == c3.chosen
    assert pred3[row] == pytest.approx(pred1[row])
    assert not np.allclose(pred3, pred1)  # other rows did train on it


def test_candidate_choice_follows_the_data():
    X, y = _linear(n=500)
    _, _, choice = get_out_of_sample_predictions(X, y, seed=0)
    assert choice.family == "ridge"
    assert choice.candidates[choice.chosen]["r2"] > 0.99
    # Targets that are a step function of the cluster: kNN wins over any linear fit.
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(8, 6))
    cluster = rng.integers(0, 8, size=600)
    Xc = (centres[cluster] + 0.05 * rng.normal(size=(600, 6))).astype(np.float32)
    yc = rng.permutation(np.arange(8) ** 2 * 1.0)[cluster] + 0.1 * rng.normal(size=600)
    _, _, choice = get_out_of_sample_predictions(Xc, yc, seed=0)
    assert choice.family in ("knn", "average")
    assert choice.candidates[choice.chosen]["mse"] < min(v["mse"] for k, v in choice.candidates.items()
                                                         if k.startswith("ridge"))


@pytest.mark.parametrize("probe", ["auto", "knn"])
def test_selection_subsample_still_predicts_every_row(probe):
    X, y = _linear(n=700)
    held = np.zeros(len(y), bool)
    held[:50] = True
    pred, folds, choice = get_out_of_sample_predictions(X, y, holdout=held, max_selection_rows=200, probe=probe,
                                                        seed=0)
    assert choice.selection_rows == 200 and choice.rows == 700
    assert np.isfinite(pred).all() and (folds[held] == -1).all()
    assert np.corrcoef(pred, y)[0, 1] > (0.99 if probe == "auto" else 0.5)
    # held-out targets are still never read on the full pass
    y2 = y.copy()
    y2[held] = -1e6
    pred2, _, _ = get_out_of_sample_predictions(X, y2, holdout=held, max_selection_rows=200, probe=probe, seed=0)
    np.testing.assert_allclose(pred2, pred)


def test_issues_refuses_mlp_probe_and_pred_probs(planted, cli, tmp_path):
    ws, _, _ = planted
    code, out, err = cli("issues", "-w", ws, "--probe", "mlp")
    assert code == 2 and "for --task regression" in " ".join((out + err).split())
    np.save(tmp_path / "p.npy", np.full((600, 2), 0.5, np.float32))
    code, out, err = cli("issues", "-w", ws, "--pred-probs", tmp_path / "p.npy")
    assert code == 2 and "--pred-probs is not supported for --task regression" in " ".join((out + err).split())


def test_unsupported_probe_is_a_user_error():
    from labelkit.errors import LabelkitError

    X, y = _linear(n=50)
    with pytest.raises(LabelkitError, match="'probe' parameter of issues must be one of auto, logreg"):
        get_out_of_sample_predictions(X, y, probe="mlp")


# ---------------------------------------------------------------------------------------------
# flags


def test_find_regression_issues_flags_robust_outliers_only():
    rng = np.random.default_rng(0)
    pred = rng.normal(size=1000) * 10
    y = pred + rng.normal(size=1000)
    y[:10] += np.array([8, -8, 9, -9, 10, -10, 12, -12, 20, -20])
    found = find_regression_issues(y, pred)
    assert found["is_label_issue"][:10].all()
    assert found["is_label_issue"][10:].sum() <= 3  # Gaussian tails beyond 3.5 σ: ~0.05 %
    assert found["scale"] == pytest.approx(1.0, rel=0.1)  # the planted errors do not inflate the scale
    np.testing.assert_allclose(found["label_quality"], np.exp(-np.abs(found["residual_z"])), rtol=1e-9)
    assert ((found["label_quality"] < np.exp(-Z_THRESHOLD)) == found["is_label_issue"]).all()
    # units do not matter
    again = find_regression_issues(y * 1000, pred * 1000)
    np.testing.assert_array_equal(again["is_label_issue"], found["is_label_issue"])


# ---------------------------------------------------------------------------------------------
# the pipeline on planted data


def test_audit_finds_shifted_targets(planted):
    ws, data, code = planted
    assert code in (0, 1)  # the default gate may pass or fail; it ran
    issues = pq.read_table(ws / "issues.parquet").to_pandas()
    ids = np.array(data["ids"])
    shifted = set(ids[data["shifted"]])
    flagged = set(issues.loc[issues["is_label_issue"], "id"])
    recall = len(flagged & shifted) / len(shifted)
    precision = len(flagged & shifted) / max(1, len(flagged))
    assert recall >= 0.85, recall
    assert precision >= 0.8, precision
    for col in ("target", "predicted_value", "residual", "residual_z", "suggested_label", "reason", "duplicate_of"):
        assert col in issues.columns
    row = issues[issues["is_label_issue"]].iloc[0]
    assert "out of sample" in row["reason"] and "robust σ" in row["reason"]
    manifest = json.loads((ws / "manifest.json").read_text())
    s = manifest["stages"]["issues"]
    assert s["label_issues"] == len(flagged) and s["label_issue_rate"] == pytest.approx(len(flagged) / len(issues))
    assert s["residual_r2"] > 0.5 and s["residual_mae"] > 0
    assert s["checks"]["regression_targets"]["flagged"] == len(flagged)
    assert "skipped" in s["checks"]["label_issues"]  # the multiclass label check does not run here
    assert s["unusable_rows"] == 4
    gate = manifest["stages"]["gate"]
    assert gate["passed"] is True  # residual_r2<0.2 does not hold
    held = pq.read_table(ws / "probs.parquet").to_pandas()
    assert (held["fold"] == -1).sum() == s["heldout"]["rows"] > 0


def test_report_has_residual_histogram(planted):
    ws, _, _ = planted
    html = (ws / "report.html").read_text()
    assert 'id="regression-residuals"' in html
    assert "Regression targets" in html


def test_clean_control_is_mostly_unflagged(tmp_path):
    from labelkit.ingest import ingest
    from labelkit.issues import issues

    table, _ = _write_sample(tmp_path / "data", n=600, shift_fraction=0.0, bad_cells=())
    ingest(table, tmp_path / "ws", task="regression", label_col="price", embedding_col="embedding")
    result = issues(tmp_path / "ws")
    assert result.summary["usable_rows"] == 600
    assert result.summary["label_issue_rate"] <= 0.01
    assert result.summary["residual_r2"] > 0.85


def test_prune_then_train(planted, cli):
    ws, data, _ = planted
    code, out, err = cli("select", "prune", "-w", ws)
    assert code == 0, err
    sub = pq.read_table(ws / "subsets" / "prune.parquet").to_pandas()
    issues = pq.read_table(ws / "issues.parquet").to_pandas()
    assert len(sub) == int((~issues["is_label_issue"]).sum())
    assert not set(sub["id"]) & set(issues.loc[issues["is_label_issue"], "id"])
    code, out, err = cli("train", "-w", ws, "--subset", "prune", "--head", "linear", "--loss", "huber",
                         "--max-epochs", "60", "--name", "pruned")
    assert code == 0, err
    card = json.loads((ws / "models" / "pruned" / "model_card.json").read_text())
    assert card["task"] == "regression" and card["loss"]["name"] == "huber"
    assert card["metrics"]["r2"] > 0.5 and card["metrics"]["mae"] > 0
    assert "mae" in out and "r2" in out
    code, out, err = cli("train", "-w", ws, "--loss", "focal")
    assert code == 2 and "must be one of mse, huber" in " ".join((out + err).split())
    code, out, err = cli("select", "rs2", "-w", ws)
    assert code == 2 and "select rs2 does not support --task regression yet" in " ".join((out + err).split())


def test_explain_shows_the_out_of_sample_prediction_and_residual(planted, cli):
    ws, _, _ = planted
    issues = pq.read_table(ws / "issues.parquet").to_pandas().set_index("id")
    flagged = issues.index[issues["is_label_issue"]][0]
    code, out, err = cli("explain", flagged, "-w", ws, "--json")
    assert code == 0, err
    result = json.loads(out)
    row = issues.loc[flagged]
    assert result["probabilities"] is None
    assert result["prediction"] == pytest.approx(row["predicted_value"], rel=1e-6)
    assert result["residual"] == pytest.approx(row["target"] - row["predicted_value"], rel=1e-6)
    assert result["flagged"] and "is_label_issue" in result["findings"][0]["flags"]
    code, out, err = cli("explain", flagged, "-w", ws)
    assert code == 0, err
    assert f"Out-of-sample prediction {result['prediction']:.4g}" in one_line(out)
    assert f"residual (target − prediction) {result['residual']:+.4g}" in one_line(out)


@pytest.mark.parametrize("where", ["check", "issues table"])
def test_a_run_killed_after_the_probe_keeps_the_last_good_tables(planted, tmp_path, monkeypatch, where):
    """probs.parquet (and issues.parquet) stay the last good run's, byte for byte, when a run fails after its probe."""
    import shutil

    import labelkit.issues
    from labelkit.checks.duplicates import Duplicates
    from labelkit.issues import issues

    ws, _, _ = planted
    ws = shutil.copytree(ws, tmp_path / "ws")
    before = {name: (ws / name).read_bytes() for name in ("probs.parquet", "issues.parquet")}

    def broken(*args, **kwargs):
        raise RuntimeError("failed after the probe")

    if where == "check":
        monkeypatch.setattr(Duplicates, "run", broken)
    else:  # the issues table's write, the last step before probs.parquet is renamed into place
        monkeypatch.setattr(labelkit.issues, "write_issues_table", broken)
    with pytest.raises(RuntimeError, match="failed after the probe"):
        issues(ws, seed=1, n_folds=3)  # other folds: other predictions
    assert {name: (ws / name).read_bytes() for name in before} == before
    assert not [p.name for p in ws.iterdir() if p.name.startswith(".")]
