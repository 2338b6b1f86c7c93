import json

import numpy as np
import pandas as pd
import pytest

from conftest import SAMPLE, one_line
from labelkit.errors import LabelkitError
from labelkit.issues import (find_duplicates, find_label_issues, find_nearest_neighbors, get_out_of_sample_probs,
                             get_outlier_scores, load_pred_probs)
from labelkit.workspace import Workspace, sort_classes


def blobs(n_per=150, k=4, d=20, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, (k, d))
    X = np.concatenate([c + rng.normal(0, spread, (n_per, d)) for c in centers])
    y = np.repeat(np.arange(k), n_per)
    return X.astype(np.float32), y


def flip(y, rate, k, seed=1):
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(y), size=int(rate * len(y)), replace=False)
    noisy = y.copy()
    noisy[idx] = (y[idx] + rng.integers(1, k, len(idx))) % k
    return noisy, set(idx.tolist())


def test_planted_errors_are_found_on_separable_data():
    X, y = blobs()
    noisy, planted = flip(y, 0.08, 4)
    probs, folds, choice = get_out_of_sample_probs(X, noisy, n_classes=4)
    found = find_label_issues(noisy, probs)
    flagged = set(np.flatnonzero(found["is_label_issue"]).tolist())
    assert len(flagged & planted) / len(planted) >= 0.95
    assert len(flagged & planted) / len(flagged) >= 0.9
    assert (found["suggested_label"][list(planted)] == y[list(planted)]).mean() >= 0.95
    assert set(folds.tolist()) == set(range(5)) and choice.n_folds == 5
    # Noise matrix columns are distributions; the diagonal dominates.
    N = found["noise_matrix"]
    assert np.allclose(N.sum(0), 1) and (np.diag(N) > 0.8).all()


def test_label_issue_mask_equals_plain_cleanlab_on_the_same_probs():
    from cleanlab.filter import find_label_issues as cl_find
    from cleanlab.rank import get_label_quality_scores

    X, y = blobs(spread=3.0, seed=3)
    noisy, _ = flip(y, 0.15, 4)
    probs, _, _ = get_out_of_sample_probs(X, noisy, n_classes=4)
    for filter_by in ("prune_by_noise_rate", "both", "confident_learning"):
        ours = find_label_issues(noisy, probs, filter_by=filter_by)["is_label_issue"]
        assert np.array_equal(ours, cl_find(noisy, probs.astype(np.float32), filter_by=filter_by))
    for rank_by in ("self_confidence", "normalized_margin", "confidence_weighted_entropy"):
        ours = find_label_issues(noisy, probs, rank_by=rank_by)["label_quality"]
        assert np.allclose(ours, get_label_quality_scores(noisy, probs.astype(np.float32), method=rank_by))


def test_exact_duplicates_point_at_the_first_row_of_their_group():
    rng = np.random.default_rng(4)
    hashes = [f"h{v}" for v in rng.integers(0, 40, 500)]  # interleaved groups of every size
    dup_of, _, exact = find_duplicates(hashes)
    first, expected = {}, []
    for i, h in enumerate(hashes):
        expected.append(first.get(h, -1))
        first.setdefault(h, i)
    assert dup_of.tolist() == expected and exact.tolist() == [e >= 0 for e in expected]


def test_regularisation_is_chosen_by_log_loss_in_high_dimensions():
    # 400 rows in 600 dims, 5% label noise: the weakest regularisation overfits.
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 100)
    X = rng.normal(0, 1, (400, 600)).astype(np.float32)
    X[:, :4] += 3 * np.eye(4)[y]
    noisy, _ = flip(y, 0.05, 4)
    _, _, choice = get_out_of_sample_probs(X, noisy, n_classes=4, C_grid=(0.001, 0.01, 1.0, 100.0), raw_C_grid=None,
                                           probe="logreg")
    assert choice.C < 1.0 and choice.features == "standardized"
    losses = choice.cv_log_loss
    assert losses[f"standardized C={choice.C:g}"] == min(losses.values())
    assert losses["standardized C=1"] > losses[f"standardized C={choice.C:g}"]


def test_torch_probe_matches_sklearn_within_noise():
    X, y = blobs(n_per=200, d=16, spread=3.0, seed=5)
    p_sk, _, _ = get_out_of_sample_probs(X, y, n_classes=4, probe="sklearn", C_grid=(0.1,), raw_C_grid=None)
    p_t, _, c = get_out_of_sample_probs(X, y, n_classes=4, probe="torch", C_grid=(0.1,), raw_C_grid=None)
    assert c.engine == "torch"
    assert np.abs(p_sk - p_t).mean() < 0.03
    assert (p_sk.argmax(1) == p_t.argmax(1)).mean() > 0.97


def test_singleton_class_is_a_clear_error():
    X, y = blobs(n_per=10, k=2)
    y = np.concatenate([y, [2]])
    X = np.concatenate([X, X[:1]])
    with pytest.raises(LabelkitError, match="Class id 2 has only 1 usable example"):
        get_out_of_sample_probs(X, y, n_classes=3)


def test_nearest_neighbours_duplicates_and_outliers_on_constructed_data():
    rng = np.random.default_rng(0)
    X = rng.normal(0, 1, (300, 16)).astype(np.float32)
    X[10] = X[3] * 1.0001  # near duplicate of row 3
    X[20] = X[5]  # exact duplicate in embedding space, different content hash
    X[299] = 40 * np.ones(16)  # far away in direction
    idx, sim = find_nearest_neighbors(X, k=5, max_block_bytes=4096)  # tiny blocks exercise the blocking
    assert idx.shape == (300, 5) and (idx != np.arange(300)[:, None]).all()
    assert idx[10, 0] == 3 and sim[10, 0] > 0.999 and idx[3, 0] == 10
    # Blocked result equals a one-shot computation.
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    S = Xn @ Xn.T
    np.fill_diagonal(S, -2)
    assert np.allclose(sim[:, 0], S.max(1), atol=1e-5)
    hashes = [f"h{i}" for i in range(300)]
    hashes[150] = hashes[149]
    dup_of, score, exact = find_duplicates(hashes, idx, sim, threshold=0.99)
    assert dup_of[10] == 3 and dup_of[20] == 5 and dup_of[3] == -1 and dup_of[5] == -1
    assert exact[150] and dup_of[150] == 149 and score[150] == 1.0
    assert (dup_of >= 0).sum() == 3
    scores, is_outlier = get_outlier_scores(sim)
    assert scores.shape == (300,) and (scores > 0).all() and (scores <= 1).all()


def test_outlier_far_from_clusters_is_flagged():
    X, _ = blobs(n_per=100, k=3, d=8, spread=0.3)
    X = np.concatenate([X, np.full((1, 8), 50.0, np.float32) * np.array([1, -1] * 4)])
    _, sim = find_nearest_neighbors(X, k=10)
    scores, flag = get_outlier_scores(sim)
    assert flag[-1] and scores[-1] == scores.min()


def test_class_order_integer_like_sorts_numerically():
    assert sort_classes(["10", "2", "0", "1"]) == ["0", "1", "2", "10"]
    assert sort_classes(["b", "10", "a"]) == ["10", "a", "b"]


# --------------------------------------------------------------------------- --pred-probs


@pytest.fixture
def byo_ws(tmp_path):
    """A table with labels but no data to embed: the bring-your-own-probabilities path."""
    from labelkit.ingest import ingest

    X, y = blobs(n_per=50, k=3, d=5, seed=2)
    noisy, planted = flip(y, 0.1, 3)
    names = np.array(["ant", "bee", "cat"])
    table = tmp_path / "t.parquet"
    pd.DataFrame({"id": [f"r{i}" for i in range(150)], "text": [f"row {i}" for i in range(150)],
                  "y": names[noisy]}).to_parquet(table)
    ingest(table, tmp_path / "ws", label_col="y")
    probs, _, _ = get_out_of_sample_probs(X, noisy, n_classes=3)
    return tmp_path / "ws", probs, planted


def test_byo_pred_probs_path_without_embedding(cli, byo_ws, tmp_path):
    ws, probs, planted = byo_ws
    np.save(tmp_path / "p.npy", probs)
    code, out, err = cli("issues", "-w", ws, "--pred-probs", tmp_path / "p.npy", "--json")
    assert code == 0, err
    summary = json.loads(out)["summary"]
    assert summary["origin"] == "user" and summary["near_duplicates"] is None and summary["outliers"] is None
    iss = pd.read_parquet(ws / "issues.parquet")
    flagged = {int(i[1:]) for i in iss["id"][iss["is_label_issue"]]}
    assert len(flagged & planted) / len(planted) >= 0.8
    stored = pd.read_parquet(ws / "probs.parquet")
    assert np.allclose(np.stack(stored["pred_probs"]), probs, atol=1e-6) and (stored["origin"] == "user").all()


def test_pred_probs_keyed_by_id_and_reordered_by_classes_file(byo_ws, tmp_path):
    ws, probs, _ = byo_ws
    w = Workspace(ws)
    items = w.read_items()
    perm = np.random.default_rng(0).permutation(150)
    df = pd.DataFrame(probs[perm][:, [2, 0, 1]], columns=["c", "a", "b"])
    df.insert(0, "id", items["id"].to_numpy()[perm])
    df.to_csv(tmp_path / "p.csv", index=False)
    (tmp_path / "classes.txt").write_text("cat\nant\nbee\n")
    got = load_pred_probs(tmp_path / "p.csv", ids=items["id"], usable=np.ones(150, bool), classes=w.classes(),
                          classes_file=tmp_path / "classes.txt")
    assert np.allclose(got, probs)
    # Columns named after the classes are matched by name.
    df.columns = ["id", "cat", "ant", "bee"]
    df.to_csv(tmp_path / "named.csv", index=False)
    got = load_pred_probs(tmp_path / "named.csv", ids=items["id"], usable=np.ones(150, bool), classes=w.classes())
    assert np.allclose(got, probs)
    # Errors in a keyed file name the id and the file's own row.
    bad = df.copy()
    bad.loc[3, "cat"] += 0.5
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(LabelkitError, match=rf"row for id '{df['id'][3]}' \(file row 4\) sums to 1.5"):
        load_pred_probs(tmp_path / "bad.csv", ids=items["id"], usable=np.ones(150, bool), classes=w.classes())
    df.drop(index=[5, 9]).to_csv(tmp_path / "short.csv", index=False)
    first_missing = min(perm[5], perm[9])
    with pytest.raises(LabelkitError, match=rf"no row for id 'r{first_missing}' \(2 usable items missing\)"):
        load_pred_probs(tmp_path / "short.csv", ids=items["id"], usable=np.ones(150, bool), classes=w.classes())
    # Rows of unusable items need not be there.
    usable = np.arange(150) != first_missing
    df.drop(index=[5 if perm[5] == first_missing else 9]).to_csv(tmp_path / "usable.csv", index=False)
    got = load_pred_probs(tmp_path / "usable.csv", ids=items["id"], usable=usable, classes=w.classes())
    assert np.allclose(got, probs[usable])


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p[:, :2], " has 2 columns but the workspace has 3 classes (ant, bee, cat)."),
    (lambda p: p[:100], " has 100 rows; expected 150 (one per item) or 150 (one per usable item), or an 'id' column."),
    (lambda p: np.where(np.arange(150)[:, None] == 7, np.nan, p), ": row 8 (id 'r7') has a value that is not a finite number."),
    (lambda p: p * np.where(np.arange(150)[:, None] == 4, 1.35, 1.0), ": row 5 (id 'r4') sums to 1.35, not 1 (tolerance 0.001); pass probabilities (softmax outputs), not logits."),
    (lambda p: np.where(np.arange(150)[:, None] == 0, np.array([[-0.5, 1.0, 0.5]]), p), ": row 1 (id 'r0') has a negative probability."),
])
def test_pred_probs_validation_errors(cli, byo_ws, tmp_path, mutate, message):
    ws, probs, _ = byo_ws
    np.save(tmp_path / "bad.npy", mutate(probs.copy()))
    code, _, err = cli("issues", "-w", ws, "--pred-probs", tmp_path / "bad.npy")
    assert code == 2
    assert one_line(err) == f"error: --pred-probs {tmp_path / 'bad.npy'}{message}"


def test_issues_on_sample_digits_finds_most_planted_flips(digits_ws):
    iss = pd.read_parquet(digits_ws / "issues.parquet")
    key = pd.read_csv(SAMPLE / "digits" / "flipped.csv")
    flagged, planted = set(iss["id"][iss["is_label_issue"]]), set(key["id"])
    recall = len(flagged & planted) / len(planted)
    precision = len(flagged & planted) / len(flagged)
    assert recall >= 0.75 and precision >= 0.7
    suggested = iss.set_index("id").loc[key["id"], "suggested_label"].astype(int)
    assert (suggested.to_numpy() == key["true_label"].to_numpy()).mean() >= 0.7
    summary = Workspace(digits_ws).read_manifest()["stages"]["issues"]
    probe = summary["probe"]
    chosen = probe["cv_log_loss"][probe["chosen"]]
    assert chosen == min(probe["cv_log_loss"].values()) and len(probe["cv_log_loss"]) >= 4


def test_issues_without_embeddings_says_what_to_run(cli, tmp_path):
    from labelkit.ingest import ingest

    ingest(SAMPLE / "text" / "reviews.csv", tmp_path / "ws")
    code, _, err = cli("issues", "-w", tmp_path / "ws")
    assert code == 2
    assert one_line(err) == (f"error: No embeddings in {tmp_path / 'ws'}; run `labelkit embed -w {tmp_path / 'ws'}` first "
                             "(or pass --pred-probs to skip embedding).")


def test_text_sample_issues(text_ws):
    iss = pd.read_parquet(text_ws / "issues.parquet")
    key = pd.read_csv(SAMPLE / "text" / "flipped.csv")
    flagged, planted = set(iss["id"][iss["is_label_issue"]]), set(key["id"])
    assert len(flagged & planted) / len(planted) >= 0.8


def test_rows_without_embeddings_are_a_clear_error(cli, digits_ws, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    ws = tmp_path / "ws"
    shutil.copytree(digits_ws, ws)
    key = Workspace(ws).read_manifest()["stages"]["embed"]["embedding_key"]
    path = Workspace(ws).embeddings_path(key)
    table = pq.read_table(path)
    pq.write_table(table.slice(2), path)  # the first two items lose their embeddings
    first = table.column("id")[0].as_py()
    code, _, err = cli("issues", "-w", ws)
    assert code == 2
    assert one_line(err) == (f"error: 2 usable rows (e.g. {first!r}) have no embedding in {key}; "
                             f"run `labelkit embed -w {ws}` again.")


def noisy_probs(n, K, seed=0, noise=0.1):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, K, n)
    labels = np.where(rng.random(n) < noise, rng.integers(0, K, n), truth)
    logits = rng.normal(0, 1, (n, K)).astype(np.float32)
    logits[np.arange(n), truth] += 2.5
    probs = np.exp(logits)
    return labels, probs / probs.sum(1, keepdims=True)


@pytest.mark.parametrize("rank_by", ["self_confidence", "normalized_margin"])
def test_batched_confident_learning_equals_in_memory(rank_by):
    labels, probs = noisy_probs(20_000, 50)
    filter_by = {"self_confidence": "low_self_confidence", "normalized_margin": "low_normalized_margin"}[rank_by]
    memory = find_label_issues(labels, probs, filter_by=filter_by, rank_by=rank_by)
    batched = find_label_issues(labels, probs, filter_by=filter_by, rank_by=rank_by, max_bytes=0, batch_rows=1000)
    assert memory["cl"] == {"path": "in-memory", "filter_by": filter_by}
    assert batched["cl"] == {"path": "batched", "filter_by": filter_by, "requested_filter_by": filter_by,
                             "batch_rows": 1000}
    assert 2000 < memory["is_label_issue"].sum() < 4000
    assert (batched["is_label_issue"] == memory["is_label_issue"]).all()
    assert np.array_equal(batched["label_quality"], memory["label_quality"])
    assert np.array_equal(batched["suggested_label"], memory["suggested_label"])
    assert np.allclose(batched["joint"], memory["joint"], atol=1e-12)
    assert np.allclose(batched["noise_matrix"], memory["noise_matrix"], atol=1e-12)


def test_batched_path_runs_above_the_memory_budget_and_says_which_filter_it_applied():
    labels, probs = noisy_probs(3000, 5)
    in_budget = find_label_issues(labels, probs, max_bytes=probs.nbytes)
    over = find_label_issues(labels, probs, max_bytes=probs.nbytes - 1)
    assert in_budget["cl"]["path"] == "in-memory" and in_budget["cl"]["filter_by"] == "prune_by_noise_rate"
    assert over["cl"] == {"path": "batched", "filter_by": "low_self_confidence",
                          "requested_filter_by": "prune_by_noise_rate", "batch_rows": (64 << 20) // 20}
    plain = find_label_issues(labels, probs, filter_by="low_self_confidence")
    assert (over["is_label_issue"] == plain["is_label_issue"]).all()


def test_pixel_default_threshold_pairs_no_distinct_digits_but_finds_resized_and_jpeg_copies(tmp_path):
    import io
    import shutil

    from PIL import Image

    from labelkit.embed import PixelFeaturizer, embed
    from labelkit.ingest import ingest
    from labelkit.issues import issues

    data = tmp_path / "digits"
    shutil.copytree(SAMPLE / "digits", data)
    planted = {}
    for n, original in enumerate(sorted((data / "3").glob("*.png"))[:12]):
        im = Image.open(original).convert("RGB")
        if n % 2:
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=70)
            im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        else:
            im = im.resize((im.width * 3 // 2, im.height * 3 // 2))
        im.save(data / "3" / f"copy{n}.png")
        planted[f"3/copy{n}.png"] = f"3/{original.name}"
    ws = tmp_path / "ws"
    ingest(data, ws)
    embed(ws, model="pixels")
    result = issues(ws, probe="knn")  # the probe is not what this test is about
    assert result.summary["dup_threshold"] == PixelFeaturizer.near_duplicate_threshold == 0.993
    iss = pd.read_parquet(ws / "issues.parquet").set_index("id")
    assert iss.loc[list(planted), "duplicate_of"].to_dict() == planted
    # Distinct handwritten digits: the old default 0.985 paired about 20 of them, now at most one pair.
    assert result.summary["near_duplicates"] <= len(planted) + 1
    old = issues(ws, dup_threshold=0.985, probe="knn").summary
    assert old["near_duplicates"] >= len(planted) + 15 and old["dup_threshold"] == 0.985


def test_manifest_records_index_cl_path_and_seconds_per_phase(digits_copy, monkeypatch):
    import labelkit.neighbors
    from labelkit.issues import issues

    exact = issues(digits_copy, probe="knn").summary
    assert exact["neighbors"]["index"] == "exact"
    assert set(exact["phase_seconds"]) >= {"probe", "confident_learning", "search"}
    assert exact["confident_learning"] == {"path": "in-memory", "filter_by": "prune_by_noise_rate"}
    monkeypatch.setattr(labelkit.neighbors, "EXACT_MAX_ROWS_CPU", 100)  # force the approximate side on 1.8k rows
    approx = issues(digits_copy, probe="knn").summary
    record = Workspace(digits_copy).read_manifest()["stages"]["issues"]
    assert record["neighbors"]["index"] == approx["neighbors"]["index"] == "faiss.IndexIVFFlat"
    assert record["neighbors"]["params"]["n_lists"] == 42
    assert set(record["phase_seconds"]) >= {"probe", "confident_learning", "index_build", "search"}
    assert abs(approx["near_duplicates"] - exact["near_duplicates"]) <= 1


def test_a_failed_run_keeps_the_last_good_probs_table(digits_copy, monkeypatch):
    """probs.parquet is written beside its name and renamed only once the run has succeeded."""
    from labelkit.checks.duplicates import Duplicates
    from labelkit.issues import issues

    before = (digits_copy / "probs.parquet").read_bytes()

    def broken(self, ctx):
        raise RuntimeError("check failed")

    monkeypatch.setattr(Duplicates, "run", broken)
    with pytest.raises(RuntimeError, match="check failed"):
        issues(digits_copy, seed=1, n_folds=3)  # other folds: other probabilities
    assert (digits_copy / "probs.parquet").read_bytes() == before
    assert not [p.name for p in digits_copy.iterdir() if p.name.startswith(".")]


def test_the_knn_probe_and_the_checks_share_one_neighbour_search(digits_copy, monkeypatch):
    """When the kNN probe searches all rows, the checks take the first k of its neighbours: one search,
    and the same neighbours (first columns) as a search of their own."""
    import labelkit.neighbors as nb
    from labelkit.issues import issues

    calls = []
    real = nb.search_neighbors

    def counting(embeddings, *, k, **kw):
        calls.append(k)
        return real(embeddings, k=k, **kw)

    monkeypatch.setattr(nb, "search_neighbors", counting)
    result = issues(digits_copy, probe="knn")
    assert len(calls) == 1 and calls[0] > 10  # the probe's k, not the checks' 10
    assert result.summary["neighbors"]["shared_with_probe"] is True
    shared = nb.SharedNeighbors(np.eye(6, dtype=np.float32) + 0.1)
    idx3, sims3, _ = shared(3)
    idx2, sims2, _ = shared(2)
    assert shared.searches == 1 and (idx2 == idx3[:, :2]).all() and (sims2 == sims3[:, :2]).all()


def _break(monkeypatch, where: str) -> None:
    """Make an issues run fail after its probe and before probs.parquet is renamed into place."""
    import labelkit.issues
    from labelkit.checks.duplicates import Duplicates

    def broken(*args, **kwargs):
        raise RuntimeError("failed after the probe")

    if where == "check":
        monkeypatch.setattr(Duplicates, "run", broken)
    else:  # the issues table's write, the last step before the rename
        monkeypatch.setattr(labelkit.issues, "write_issues_table", broken)


@pytest.mark.parametrize("where", ["check", "issues table"])
def test_a_run_killed_after_the_probe_keeps_the_last_good_tables(digits_copy, monkeypatch, where):
    """Multiclass: probs.parquet and issues.parquet stay the last good run's, byte for byte; nothing hidden is left."""
    from labelkit.issues import issues

    before = {name: (digits_copy / name).read_bytes() for name in ("probs.parquet", "issues.parquet")}
    _break(monkeypatch, where)
    with pytest.raises(RuntimeError, match="failed after the probe"):
        issues(digits_copy, seed=1, n_folds=3)  # other folds: other probabilities
    assert {name: (digits_copy / name).read_bytes() for name in before} == before
    assert not [p.name for p in digits_copy.iterdir() if p.name.startswith(".")]
