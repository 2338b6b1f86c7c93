import numpy as np
import pytest

from labelkit.errors import LabelkitError
from labelkit.probe import _knn_probs, _predict_rows, _Setting, _stratified_subsample, get_out_of_sample_probs


def blobs(n_per=60, k=3, d=8, seed=0, spread=1.5):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (k, d))
    X = np.concatenate([c + rng.normal(0, spread, (n_per, d)) for c in centers])
    return X.astype(np.float32), np.repeat(np.arange(k), n_per)


def rings(n=600, seed=0):
    """Two concentric rings: no linear boundary separates them, neighbours do."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    angle = rng.uniform(0, 2 * np.pi, n)
    radius = np.where(y == 0, 1.0, 2.0) + rng.normal(0, 0.1, n)
    X = np.c_[radius * np.cos(angle), radius * np.sin(angle), rng.normal(0, 0.1, (n, 2))]
    return X.astype(np.float32), y


def flip_some(y, rows, k):
    out = y.copy()
    out[rows] = (out[rows] + 1) % k
    return out


def test_held_out_rows_never_train_nor_select_and_have_fold_minus_one():
    X, y = blobs()
    holdout = np.zeros(len(y), bool)
    holdout[::7] = True
    kw = dict(n_classes=3, holdout=holdout, probe="auto", C_grid=(1.0,), raw_C_grid=None, k_grid=(5, 10))
    p1, f1, c1 = get_out_of_sample_probs(X, y, **kw)
    # Any labels on the held-out rows: nothing at all changes, not even the choice.
    rng = np.random.default_rng(1)
    y2 = y.copy()
    y2[holdout] = rng.integers(0, 3, holdout.sum())
    p2, f2, c2 = get_out_of_sample_probs(X, y2, **kw)
    assert np.array_equal(p1, p2) and c1.chosen == c2.chosen
    assert (f1[holdout] == -1).all() and (f1[~holdout] >= 0).all() and np.array_equal(f1, f2)
    assert c1.holdout_rows == holdout.sum() and p1.dtype == np.float32
    assert np.allclose(p1.sum(1), 1, atol=1e-5) and (p1[holdout].argmax(1) == y[holdout]).mean() > 0.9


SETTINGS = [_Setting("standardized", C=1.0), _Setting("raw", C=1.0), _Setting("knn", k=5, smoothing=0.1),
            _Setting("knn", k=5, smoothing=0.3, power=2.0),
            _Setting("mlp"), _Setting("average", parts=(_Setting("standardized", C=1.0), _Setting("knn", k=5,
                                                                                                      smoothing=0.1)))]


# The engine matters for logistic regression and the MLP (scikit-learn's or torch's): torch is paired with those.
ENGINE_CASES = [(s, "sklearn") for s in SETTINGS] + [(s, "torch") for s in SETTINGS
                                                     if s.family in ("standardized", "raw", "mlp")]


@pytest.mark.parametrize("setting,engine", ENGINE_CASES, ids=lambda v: getattr(v, "family", v))
def test_every_candidate_is_out_of_sample(setting, engine):
    """Relabelling fold-0 and held-out rows leaves their own probabilities unchanged, and changes the others'."""
    X, y = blobs(n_per=40)
    folds = np.arange(len(y)) % 3
    holdout = np.zeros(len(y), bool)
    holdout[5::11] = True
    kwargs = dict(engine=engine, device="cpu", seed=0, tick=lambda: None)
    fold_ids = folds.astype(np.int16)
    p1 = _predict_rows(setting, X, y, fold_ids, holdout, 3, **kwargs)
    # Held-out labels are never read: nothing changes.
    p_held = _predict_rows(setting, X, flip_some(y, np.flatnonzero(holdout), 3), fold_ids, holdout, 3, **kwargs)
    assert np.array_equal(p1, p_held)
    # Fold-0 labels only train the other folds' models and the held-out rows' model.
    in_fold0 = (folds == 0) & ~holdout
    p2 = _predict_rows(setting, X, flip_some(y, np.flatnonzero(in_fold0), 3), fold_ids, holdout, 3, **kwargs)
    assert np.allclose(p1[in_fold0], p2[in_fold0], atol=1e-6)
    assert np.abs(p1[~in_fold0] - p2[~in_fold0]).max() > 0.05


def test_relabelling_a_row_does_not_change_its_own_probabilities_through_the_public_api():
    X, y = blobs(n_per=40)
    folds = np.arange(len(y)) % 4
    kw = dict(n_classes=3, folds=folds, probe="logreg", C_grid=(1.0,), raw_C_grid=None)
    p1, f1, _ = get_out_of_sample_probs(X, y, **kw)
    p2, f2, _ = get_out_of_sample_probs(X, flip_some(y, [3, 7, 51], 3), **kw)  # all in fold 3
    assert np.array_equal(f1, folds) and np.array_equal(f1, f2)
    assert np.allclose(p1[[3, 7, 51]], p2[[3, 7, 51]], atol=1e-6)
    assert not np.allclose(p1[folds != 3], p2[folds != 3], atol=1e-3)


def test_chosen_candidate_has_the_lowest_cv_log_loss_and_its_probabilities_are_returned():
    X, y = rings()
    probs, _, choice = get_out_of_sample_probs(X, y, n_classes=2, C_grid=(0.1, 1.0), raw_C_grid=(1.0,))
    losses = choice.cv_log_loss
    assert losses[choice.chosen] == min(losses.values())
    assert any(name.startswith("knn k=5 smoothing=0.1 power=") for name in losses)
    for name in ("standardized C=0.1", "raw C=1", "mlp"):  # scored, or abandoned with the reason
        assert name in losses or choice.skipped[name].startswith("abandoned after")
    # Rings have no linear boundary: logistic regression is near chance, the winner is not linear.
    assert choice.features in ("knn", "mlp", "average") and choice.cv_accuracy > 0.95
    assert all(v > 0.6 for k, v in losses.items() if "C=" in k)
    p = probs[np.arange(len(y)), y].astype(np.float64)
    assert -np.mean(np.log(p)) == pytest.approx(losses[choice.chosen], rel=1e-4)
    assert set(choice.candidates[choice.chosen]) == {"log_loss", "accuracy", "seconds"}


def test_linear_data_in_high_dimensions_picks_a_regularised_linear_probe():
    rng = np.random.default_rng(0)
    # At 60 rows a class the (calibrated) kNN wins, rightly: its accuracy is higher there too.
    y = np.repeat(np.arange(4), 150)
    X = rng.normal(0, 1, (600, 300)).astype(np.float32)
    X[:, :4] += 2.5 * np.eye(4)[y]
    _, _, choice = get_out_of_sample_probs(X, y, n_classes=4, C_grid=(0.01, 0.1, 1.0), raw_C_grid=None)
    assert choice.features in ("standardized", "average") and choice.C in (0.01, 0.1, None)
    assert choice.cv_log_loss[choice.chosen] < min(v for k, v in choice.cv_log_loss.items() if k.startswith("knn"))


def test_selection_on_a_subsample_then_one_k_fold_over_every_row():
    X, y = blobs(n_per=300, k=3, d=6)
    y = flip_some(y, np.arange(0, 900, 13), 3)
    holdout = np.zeros(len(y), bool)
    holdout[-50:] = True
    probs, folds, choice = get_out_of_sample_probs(X, y, n_classes=3, max_selection_rows=200, holdout=holdout,
                                                   probe="logreg", raw_C_grid=None)
    assert 200 <= choice.selection_rows <= 203 and choice.rows == 900 and choice.holdout_rows == 50
    assert set(folds[~holdout].tolist()) == set(range(5)) and (folds[holdout] == -1).all()
    assert np.allclose(probs.sum(1), 1, atol=1e-5) and (probs.argmax(1) == y).mean() > 0.85


def test_stratified_subsample_keeps_class_shares_and_small_classes():
    y = np.repeat([0, 1, 2], [9000, 990, 10])
    sel = _stratified_subsample(y, 1000, 5, seed=0)
    counts = np.bincount(y[sel], minlength=3)
    assert counts[0] == 900 and counts[1] == 99 and counts[2] == 5
    assert np.array_equal(sel, np.sort(sel)) and len(np.unique(sel)) == len(sel)


def test_parameter_errors_name_the_parameter():
    X, y = blobs(n_per=10)
    with pytest.raises(LabelkitError, match=r"The 'probe' parameter of get_out_of_sample_probs must be one of auto, "
                                            r"sklearn, torch, logreg, knn, mlp\. Got 'svm' instead\."):
        get_out_of_sample_probs(X, y, probe="svm")
    with pytest.raises(LabelkitError, match=r"The 'holdout' parameter .* shape \(30,\)\. Got shape \(3,\) instead\."):
        get_out_of_sample_probs(X, y, holdout=np.ones(3, bool))


def test_capped_fold_models_predict_every_row_out_of_sample_and_record_the_cap():
    """Above max_fold_rows each fold model fits a stratified subsample of its training rows; every row is
    still predicted by a model that never saw it, and the cap is in the choice."""
    X, y = blobs(n_per=600, k=3, d=6)
    y = flip_some(y, np.arange(0, 1800, 17), 3)
    folds = np.arange(len(y)) % 5
    kw = dict(n_classes=3, folds=folds, probe="logreg", C_grid=(1.0,), raw_C_grid=None, max_selection_rows=200)
    p1, f1, c1 = get_out_of_sample_probs(X, y, max_fold_rows=600, **kw)
    assert c1.max_fold_rows == 600 and 600 <= c1.fold_train_rows <= 603  # 1,440 training rows per fold without it
    in_fold3 = np.flatnonzero(folds == 3)[:40]
    p2, _, _ = get_out_of_sample_probs(X, flip_some(y, in_fold3, 3), max_fold_rows=600, **kw)
    assert np.allclose(p1[in_fold3], p2[in_fold3], atol=1e-6)  # their own labels never trained their model
    assert not np.allclose(p1[folds != 3], p2[folds != 3], atol=1e-3)
    p_full, _, c_full = get_out_of_sample_probs(X, y, max_fold_rows=None, **kw)
    assert c_full.max_fold_rows is None and c_full.fold_train_rows == 1440
    assert not np.array_equal(p1, p_full)  # the cap did change the models ...
    clean = np.ones(len(y), bool)
    clean[np.arange(0, 1800, 17)] = False
    acc = lambda p: (p.argmax(1) == y)[clean].mean()
    assert acc(p1) > 0.9 and abs(acc(p1) - acc(p_full)) < 0.02  # ... not what they predict


def test_fold_cap_above_the_training_rows_changes_nothing():
    X, y = blobs(n_per=300, k=3, d=6)
    kw = dict(n_classes=3, probe="logreg", C_grid=(1.0,), raw_C_grid=None, max_selection_rows=200)
    p_default, f_default, c_default = get_out_of_sample_probs(X, y, **kw)
    p_none, f_none, _ = get_out_of_sample_probs(X, y, max_fold_rows=None, **kw)
    assert np.array_equal(p_default, p_none) and np.array_equal(f_default, f_none)
    assert c_default.max_fold_rows == 200_000 and c_default.fold_train_rows == 720
    with pytest.raises(LabelkitError, match=r"^The 'max_fold_rows' parameter of get_out_of_sample_probs must be an "
                                            r"int in the range \[6, inf\)\. Got 5 instead\.$"):
        get_out_of_sample_probs(X, y, max_fold_rows=5, **kw)


def test_knn_probs_power_sharpens_the_smoothed_vote_and_leaves_rows_without_neighbours_at_the_prior():
    counts = np.array([[6, 3, 1], [0, 0, 0]], np.float32)
    used = np.array([10, 0])
    prior = np.array([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]], np.float32)
    flat = _knn_probs(counts, used, prior, 0.5)
    assert np.allclose(flat[0], 0.5 * np.array([0.6, 0.3, 0.1]) + 0.5 * prior[0])
    sharp = _knn_probs(counts, used, prior, 0.5, power=2.0)
    assert np.allclose(sharp[0], flat[0] ** 2 / (flat[0] ** 2).sum()) and np.allclose(sharp.sum(1), 1)
    assert sharp[0, 0] > flat[0, 0] and sharp[0, 2] < flat[0, 2]
    assert np.array_equal(sharp[1], prior[1]) and np.array_equal(flat[1], prior[1])


def test_knn_power_is_chosen_on_the_folds_and_the_returned_probabilities_use_it():
    """Each (k, smoothing) is scored at its best power: on overlapping blobs with flips a power above 1
    wins, beats the unpowered vote at the same (k, smoothing), and is what the final probabilities use."""
    X, y = blobs(n_per=100, k=4, d=6, spread=2.5)
    y = flip_some(y, np.arange(0, 400, 9), 4)
    folds = np.arange(len(y)) % 5
    probs, _, choice = get_out_of_sample_probs(X, y, n_classes=4, folds=folds, probe="knn")
    k, smoothing, power = (float(v.split("=")[1]) for v in choice.chosen.split()[1:])
    assert choice.features == "knn" and power > 1
    assert sum(name.startswith("knn ") for name in choice.cv_log_loss) == 16  # 4 k x 4 smoothing
    kw = dict(engine="sklearn", device="cpu", seed=0, tick=lambda: None)
    no_holdout = np.zeros(len(y), bool)
    again = _predict_rows(_Setting("knn", k=int(k), smoothing=smoothing, power=power), X, y, folds.astype(np.int16),
                          no_holdout, 4, **kw)
    unpowered = _predict_rows(_Setting("knn", k=int(k), smoothing=smoothing), X, y, folds.astype(np.int16),
                              no_holdout, 4, **kw)
    loss = lambda p: -np.mean(np.log(p[np.arange(len(y)), y].astype(np.float64)))
    assert np.allclose(probs, again, atol=1e-6)
    assert loss(probs) == pytest.approx(choice.cv_log_loss[choice.chosen], rel=1e-4) and loss(probs) < loss(unpowered)


def test_small_cpu_mlp_runs_on_scikit_learn_and_matches_the_torch_mlp_in_quality():
    """Up to 20,000 rows on the CPU the MLP candidate is scikit-learn's (no torch import); it learns a
    curved boundary that a linear probe cannot (a disc inside a ring), as the torch MLP does."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 2)).astype(np.float32)
    y = (np.hypot(X[:, 0], X[:, 1]) > 1.1).astype(np.int64)  # a disc inside a ring
    X = np.hstack([X, rng.normal(scale=0.1, size=(600, 6)).astype(np.float32)])
    p_mlp, _, c_mlp = get_out_of_sample_probs(X, y, probe="mlp")
    p_lr, _, c_lr = get_out_of_sample_probs(X, y, probe="logreg")
    assert c_mlp.engine == "sklearn" and c_mlp.chosen == "mlp"
    acc = lambda p: (p.argmax(1) == y).mean()
    assert acc(p_mlp) > 0.85 and acc(p_lr) < 0.6
    folds = np.arange(len(y)) % 5
    torch_probs = _predict_rows(_Setting("mlp"), X, y, folds.astype(np.int16), np.zeros(len(y), bool), 2,
                                engine="torch", device="cpu", seed=0, tick=lambda: None)
    assert acc(torch_probs) > 0.85


def test_a_screened_logistic_regression_that_stays_is_finished_at_the_default_tolerance(monkeypatch):
    """While a setting may be abandoned it is fit to a loose tolerance; one that stays ends as a full fit."""
    import labelkit.probe as probe

    monkeypatch.setattr(probe, "ABANDON_MIN_ROWS", 100)
    X, y = blobs(n_per=800, k=4, d=30, spread=4.0)
    _, _, choice = get_out_of_sample_probs(X, y, C_grid=(0.0001, 0.01, 1.0), raw_C_grid=None)
    assert "(fit to tolerance 0.001)" in choice.skipped["standardized C=0.0001"]
    assert "standardized C=1" in choice.candidates  # screened on the first fold, then kept
    direct, _, alone = get_out_of_sample_probs(X, y, C_grid=(1.0,), raw_C_grid=None, probe="logreg")
    assert alone.chosen == "standardized C=1"
    # Warm starts along C end within lbfgs's tolerance of a cold fit (0.03 here); the first fold's fit
    # left at the screening tolerance would be 0.18 away.
    assert np.abs(choice._family_probs["standardized"][1] - direct).max() < 0.06


def test_selection_beside_held_out_rows_reuses_the_callers_search(monkeypatch):
    """With held-out rows the selection runs on the others; the caller's one search over all rows serves it
    (the held-out rows' neighbours dropped) and gives the same probabilities as a search of its own."""
    import labelkit.neighbors as neighbors

    searched = []
    real = neighbors.find_nearest_neighbors
    monkeypatch.setattr(neighbors, "find_nearest_neighbors", lambda X, **kw: searched.append(len(X)) or real(X, **kw))
    X, y = blobs(n_per=100, k=3, d=8, spread=3.0)
    holdout = np.zeros(len(y), bool)
    holdout[::5] = True
    p1, f1, c1 = get_out_of_sample_probs(X, y, holdout=holdout, probe="knn", neighbors=neighbors.SharedNeighbors(X))
    assert searched == [len(X)] and c1.selection_rows == (~holdout).sum()  # one search, over all rows
    p2, f2, c2 = get_out_of_sample_probs(X, y, holdout=holdout, probe="knn")
    assert c1.chosen == c2.chosen and c1.cv_log_loss == c2.cv_log_loss
    assert np.array_equal(f1, f2) and np.allclose(p1, p2, atol=1e-6)


def test_every_screening_fit_starts_from_zero_weights():
    """Settings abandoned on their first fold are each scored by a fit from zero weights to SCREEN_TOL (from
    the previous C's weights that tolerance is met at once, and the fit would repeat the previous C)."""
    from labelkit.probe import SCREEN_TOL, _fold_ids, _log_loss, _normalise, _SklearnProbe

    # 20 tight clusters in random directions, 4 classes of 5 clusters each: no linear boundary, kNN wins.
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 3))
    cluster = rng.integers(0, 20, 1500)
    X = (centres[cluster] / np.linalg.norm(centres[cluster], axis=1, keepdims=True)
         + rng.normal(scale=0.08, size=(1500, 3))).astype(np.float32)
    y = cluster % 4
    _, _, choice = get_out_of_sample_probs(X, y, C_grid=(), raw_C_grid=(0.1, 1.0), probe="auto")
    fold = _fold_ids(y, 5, 0)
    train, test = np.flatnonzero(fold != 0), np.flatnonzero(fold == 0)
    for C in (0.1, 1.0):
        why = choice.skipped[f"raw C={C:g}"]
        assert why.startswith("abandoned after 1 of 5 folds (fit to tolerance 0.001)")
        cold = _SklearnProbe(0, standardize=False).fit_predict(X[train], y[train], X[test], C, 4, tol=SCREEN_TOL)
        assert f"log-loss {_log_loss(y[test], _normalise(cold)):.4f} vs" in why


def test_abandoning_needs_a_gap_beyond_the_margin_and_the_noise():
    """A candidate is dropped only when it trails by more than 5 % and by more than 3 standard errors of
    the rows' paired log-loss differences, on at least 100 rows."""
    from labelkit.probe import _clearly_worse

    rng = np.random.default_rng(0)
    n = 400
    labels = np.zeros(n, np.int64)

    def probs(p_true):
        return np.c_[p_true, 1 - p_true].astype(np.float32)

    theirs = probs(rng.uniform(0.5, 0.9, n))
    steady = probs(theirs[:, 0] * 0.9)  # every row 0.105 nats worse: far beyond its (tiny) noise
    assert _clearly_worse(labels, steady, theirs)[0]
    assert not _clearly_worse(labels[:99], steady[:99], theirs[:99])[0]  # too few rows to judge
    # 10 % worse on average, but rows scattered both ways (0.9 nats worse, 0.7 better): within the noise.
    flat = probs(np.full(150, np.exp(-1.0)))
    scattered = probs(np.exp(-1.0 - np.tile([0.9, -0.7], 75)))
    worse, mine, their_loss, z = _clearly_worse(labels[:150], scattered, flat)
    assert np.isclose(mine, 1.1) and np.isclose(their_loss, 1.0) and 1 < z < 3 and not worse


def test_selection_searches_its_own_rows_when_most_rows_are_held_out(monkeypatch):
    """Reading the all-rows search costs n / len(selection) times the neighbours: above half held out
    the selection searches its own rows instead (the cost stays bounded whatever the split)."""
    import labelkit.neighbors as neighbors

    searched = []
    real = neighbors.find_nearest_neighbors
    monkeypatch.setattr(neighbors, "find_nearest_neighbors", lambda X, **kw: searched.append(len(X)) or real(X, **kw))
    X, y = blobs(n_per=100, k=3, d=8, spread=3.0)
    holdout = np.arange(len(y)) % 10 < 7  # 70 % held out
    get_out_of_sample_probs(X, y, holdout=holdout, probe="knn", neighbors=neighbors.SharedNeighbors(X))
    assert searched == [(~holdout).sum(), len(X)]  # the selection's own search, then the shared one
