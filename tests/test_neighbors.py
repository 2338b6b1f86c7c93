import time

import numpy as np
import pytest

from labelkit.errors import LabelkitError
from labelkit.issues import find_duplicates
from labelkit.neighbors import find_nearest_neighbors


def clustered(n=3000, d=32, k=10, intrinsic=4, seed=0):
    """Unit rows around k centres, each class spread in its own low-dimensional subspace."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = rng.standard_normal((k, intrinsic, d)).astype(np.float32) / np.sqrt(d * intrinsic)
    y = rng.integers(0, k, n)
    z = rng.standard_normal((n, intrinsic)).astype(np.float32)
    X = centres[y] + 0.6 * np.einsum("ni,nid->nd", z, bases[y]) + 0.01 * rng.standard_normal((n, d)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True), y


def exact_topk(X, k):
    S = X @ X.T
    np.fill_diagonal(S, -2)
    return np.argsort(-S, axis=1, kind="stable")[:, :k]


def test_approximate_index_above_threshold_recalls_exact_neighbours():
    X, _ = clustered()
    idx_e, sim_e, info_e = find_nearest_neighbors(X, k=10, return_info=True)  # 3000 rows: exact by default
    idx_a, sim_a, info_a = find_nearest_neighbors(X, k=10, exact_max_rows=1000, return_info=True)
    assert info_e["index"] == "exact" and info_a["index"] == "faiss.IndexIVFFlat"
    assert info_a["params"]["n_lists"] == 55 and info_a["params"]["n_probes"] == 4
    assert set(info_a["seconds"]) == {"index_build", "search"}
    truth = exact_topk(X, 10)
    assert (idx_e == truth).mean() > 0.999
    recall = np.mean([len(set(a) & set(t)) / 10 for a, t in zip(idx_a, truth)])
    assert recall >= 0.95
    # Never a row's own neighbour; the similarities returned are the exact ones of those pairs.
    assert (idx_a != np.arange(len(X))[:, None]).all()
    assert np.allclose(sim_a, np.einsum("nd,nkd->nk", X, X[idx_a]), atol=1e-5)
    assert (np.diff(sim_a, axis=1) <= 1e-6).all()


def test_approximate_index_finds_planted_near_duplicates_and_exact_copies():
    X, _ = clustered(n=2000)
    rng = np.random.default_rng(3)
    src = rng.choice(1000, 40, replace=False)
    dst = 1000 + rng.choice(1000, 40, replace=False)
    X[dst] = X[src] + 0.002 * rng.standard_normal((40, X.shape[1])).astype(np.float32)
    X[dst[:5]] = X[src[:5]]  # identical vectors tie with the row itself: self must still be dropped
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    idx, sim = find_nearest_neighbors(X, k=5, exact_max_rows=0)
    assert (idx != np.arange(len(X))[:, None]).all()
    dup_of, _, _ = find_duplicates([f"h{i}" for i in range(len(X))], idx, sim, threshold=0.9995)
    assert (dup_of[dst] == src).all()
    assert (dup_of >= 0).sum() == 40


def test_unnormalised_input_gives_cosine_similarities_on_both_sides():
    X, _ = clustered(n=1500)
    scaled = X * np.random.default_rng(0).uniform(0.5, 20, (len(X), 1)).astype(np.float32)
    _, sim_exact = find_nearest_neighbors(scaled, k=3)
    _, sim_approx = find_nearest_neighbors(scaled, k=3, exact_max_rows=10)
    assert np.allclose(sim_exact[:, 0], exact_topk_sims(X), atol=1e-5)
    assert np.abs(sim_approx).max() <= 1.0 + 1e-6 and np.allclose(sim_approx[:, 0], exact_topk_sims(X), atol=1e-5)


def exact_topk_sims(X):
    S = X @ X.T
    np.fill_diagonal(S, -2)
    return S.max(1)


def test_progress_names_the_phases_and_reaches_the_total():
    X, _ = clustered(n=40_000, d=8)
    calls = []
    find_nearest_neighbors(X, k=3, exact_max_rows=100, progress=lambda done, total, phase: calls.append((phase, done, total)))
    phases = [c[0] for c in calls]
    assert phases[0] == "index build" and phases[-1] == "search" and phases.count("search") > 3  # per cell
    searched = [done for phase, done, _ in calls if phase == "search"]
    assert searched == sorted(searched) and calls[-1][1:] == (40_000, 40_000)
    two_args = []
    find_nearest_neighbors(X[:500], k=3, progress=lambda done, total: two_args.append((done, total)))
    assert two_args[-1] == (500, 500)


def test_threshold_and_probe_parameters_are_validated():
    X, _ = clustered(n=100)
    with pytest.raises(LabelkitError, match=r"^The 'exact_max_rows' parameter of find_nearest_neighbors must be an int "
                                            r"in the range \[0, inf\)\. Got -1 instead\.$"):
        find_nearest_neighbors(X, exact_max_rows=-1)
    with pytest.raises(LabelkitError, match=r"^The 'n_probes' parameter of find_nearest_neighbors"):
        find_nearest_neighbors(X, n_probes=0)


def loop_duplicates(hashes, idx, sims, threshold):
    """The row-by-row definition the vectorised find_duplicates must equal."""
    first, dup_of = {}, np.full(len(hashes), -1)
    for i, h in enumerate(hashes):
        if h in first:
            dup_of[i] = first[h]
            continue
        first[h] = i
        for j, s in zip(idx[i], sims[i]):
            if s < threshold:
                break
            if 0 <= j < i:
                dup_of[i] = j
                break
    return dup_of


def test_vectorised_duplicates_equal_the_row_loop():
    rng = np.random.default_rng(0)
    n, k = 4000, 6
    idx = rng.integers(-1, n, (n, k))
    sims = -np.sort(-rng.uniform(0.9, 1.0, (n, k)), axis=1).astype(np.float32)
    hashes = [f"h{v}" for v in rng.integers(0, 3000, n)]
    for threshold in (0.9, 0.97, 0.995):
        dup_of, _, _ = find_duplicates(hashes, idx, sims, threshold=threshold)
        expected = loop_duplicates(hashes, idx, sims, threshold)
        assert (dup_of == expected).all()
        assert (expected >= 0).sum() > 1000  # the case is not trivial


def test_cli_progress_bar_names_each_phase_and_restarts_its_count():
    from labelkit.cli import _progress

    progress, update = _progress("Cross-validating probe", quiet=True)
    with progress:
        update(30, 40, "search")
        task = progress.tasks[0]
        assert (task.description, task.completed, task.total) == ("search", 30, 40)
        time.sleep(0.3)
        update(2, 10, "confident learning")  # a new phase: its clock and ETA restart
        assert (task.description, task.completed, task.total) == ("confident learning", 2, 10)
        assert task.elapsed < 0.25
        update(4, 10, "confident learning")
        assert task.elapsed < 0.25 and task.completed == 4


def test_cell_blocked_search_returns_what_faiss_ivf_returns():
    """The local search scores each cell's rows against all its queries in one product; every row gets the
    neighbours a FAISS IVF-Flat search over the same cells and probes gives it."""
    from labelkit.neighbors import _drop_self, build_ivf_index, default_n_lists

    X, _ = clustered(n=6000)
    X[5:10] = X[0]  # exact copies tie: self is still dropped
    idx, sim, info = find_nearest_neighbors(X, k=8, exact_max_rows=1000, seed=2, n_probes=3, return_info=True)
    assert info["params"]["n_probes"] == 3
    index = build_ivf_index(X, default_n_lists(len(X)), seed=2)
    index.nprobe = 3
    s, i = index.search(X, 9)
    ref_idx, ref_sim = _drop_self(i, s, np.arange(len(X)), 8)
    assert np.allclose(sim, ref_sim, atol=1e-5)
    same_set = np.mean([set(a) == set(b) for a, b in zip(idx, ref_idx)])
    assert same_set > 0.999 and (idx == ref_idx).mean() > 0.99  # only ties may be ordered differently
    assert (idx != np.arange(len(X))[:, None]).all()


def test_cell_blocked_search_in_row_parts_equals_one_pass(monkeypatch):
    """Above the pair-table budget the rows are searched in parts: same neighbours, same similarities."""
    import labelkit.neighbors as nb

    X, _ = clustered(n=6000)
    whole = find_nearest_neighbors(X, k=8, exact_max_rows=1000, seed=2, n_probes=3)
    monkeypatch.setattr(nb, "_PAIR_TABLE_BYTES", 6000 * 3 * 8 * 8 // 5)  # 5 parts
    parts = find_nearest_neighbors(X, k=8, exact_max_rows=1000, seed=2, n_probes=3)
    # The same pairs; a similarity may differ in its last bit (other BLAS block shapes).
    assert np.array_equal(parts[0], whole[0]) and np.allclose(parts[1], whole[1], atol=1e-6)


def test_default_probes_grow_slowly_with_n():
    from labelkit.neighbors import default_n_probes

    assert [default_n_probes(n) for n in (20_000, 100_000, 200_000, 300_000, 1_000_000)] == [4, 4, 5, 5, 6]


def test_checks_get_minus_one_for_missing_neighbours_and_outliers_ignore_them():
    """More neighbours asked than the probed cells hold: the approximate search pads with the row itself;
    the checks' neighbours (search_neighbors) say -1 there, and the outlier score is the mean over the
    neighbours found, so padded rows are not flagged for it."""
    from labelkit.neighbors import get_outlier_scores, search_neighbors

    rng = np.random.default_rng(0)
    E = rng.standard_normal((3000, 16)).astype(np.float32)
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    raw, _ = find_nearest_neighbors(E, k=200, exact_max_rows=10)
    padded = (raw == np.arange(len(E))[:, None]).any(1)
    assert padded.any()  # the setting really leaves slots empty
    idx, sims, _ = search_neighbors(E, k=200, exact_max_rows=10)
    assert not (idx == np.arange(len(E))[:, None]).any()
    assert ((idx == -1) == (raw == np.arange(len(E))[:, None])).all()
    _, flagged = get_outlier_scores(sims, idx)
    _, flagged_padded_as_far = get_outlier_scores(sims)  # counting the -1 slots as neighbours
    assert flagged_padded_as_far[padded].sum() > 0
    assert flagged[padded].sum() < flagged_padded_as_far[padded].sum()
