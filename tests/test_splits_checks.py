"""Split checks: leakage between train and test, label shift, embedding drift (labelkit/checks/split_leakage.py,
label_shift.py, embedding_drift.py)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import one_line
from PIL import Image

from labelkit.checks.base import CheckContext, run_checks
from labelkit.checks.embedding_drift import domain_classifier_probs
from labelkit.checks.label_shift import jensen_shannon_divergence
from labelkit.checks.split_leakage import find_split_leaks, split_codes
from labelkit.neighbors import find_nearest_neighbors

SPLIT_CHECKS = ["split_leakage", "label_shift", "embedding_drift"]
TINTS = {"cat": (255, 40, 40), "dog": (40, 40, 255), "bird": (40, 255, 40)}


def smooth_image(rng, tint, size=24) -> Image.Image:
    """A smooth random image (4x4 noise, upsampled): unrelated ones sit far apart even as 16x16 pixels."""
    small = np.clip(0.6 * rng.integers(0, 256, (4, 4, 3)) + 0.4 * np.array(tint), 0, 255).astype(np.uint8)
    return Image.fromarray(small).resize((size, size), Image.BICUBIC)


def make_split_folder(root: Path, *, copies: bool = True, unseen: bool = True, seed: int = 0) -> dict[str, str]:
    """Write root/{train,test}/<class>/*.png; return {leaked test id: train id it copies}.

    train: 30 cat, 30 dog. test: 8 cat, 8 dog, 5 bird (a class train lacks) when `unseen`;
    with `copies`, 3 byte-identical copies of train cats and 3 copies of train dogs resized to 40x40.
    """
    rng = np.random.default_rng(seed)
    for split, counts in (("train", {"cat": 30, "dog": 30}),
                          ("test", {"cat": 8, "dog": 8, **({"bird": 5} if unseen else {})})):
        for cls, count in counts.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                smooth_image(rng, TINTS[cls]).save(root / split / cls / f"{i}.png")
    planted = {}
    if copies:
        for i in range(3):
            shutil.copyfile(root / "train" / "cat" / f"{i}.png", root / "test" / "cat" / f"exact{i}.png")
            planted[f"test/cat/exact{i}.png"] = f"train/cat/{i}.png"
            Image.open(root / "train" / "dog" / f"{i}.png").resize((40, 40), Image.BICUBIC).save(
                root / "test" / "dog" / f"resized{i}.png")
            planted[f"test/dog/resized{i}.png"] = f"train/dog/{i}.png"
    return planted


def workspace_context(ws: Path, *, with_embeddings: bool = True) -> CheckContext:
    """Build the CheckContext `issues` builds, from an ingested (and pixel-embedded) workspace."""
    from labelkit.features import load_workspace_embeddings, near_duplicate_threshold
    from labelkit.workspace import Workspace

    w = Workspace(ws)
    items = w.read_items_table()
    usable = items.column("error").is_null().to_numpy(zero_copy_only=False) & (
        items.column("label_id").fill_null(-1).to_numpy() >= 0)
    items = items.filter(pa.array(usable))
    ctx = CheckContext(ids=items.column("id").combine_chunks(), classes=w.read_manifest()["classes"], items=items,
                       labels=items.column("label_id").to_numpy().astype(np.int64))
    if with_embeddings:
        key, emb_ids, matrix = load_workspace_embeddings(w)
        position = {i: r for r, i in enumerate(emb_ids)}
        ctx.embeddings = matrix[[position[i] for i in items.column("id").to_pylist()]]
        ctx.embedding_key = key
        ctx.neighbor_idx, ctx.neighbor_sims = find_nearest_neighbors(ctx.embeddings, k=10)
        ctx.options = {"dup_threshold": near_duplicate_threshold(key, w.read_manifest())}
    return ctx


def array_context(embeddings, split, *, labels=None, hashes=None, k=10, threshold=0.99, classes=("a", "b", "c")):
    """A CheckContext over arrays: ids are '<split>/<row>', hashes unique unless given."""
    n = len(split)
    X = np.asarray(embeddings, np.float32)
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    items = pa.table({"id": [f"{s}/{i}" for i, s in enumerate(split)], "split": list(split),
                      "content_hash": list(hashes) if hashes is not None else [f"h{i}" for i in range(n)]})
    idx, sims = find_nearest_neighbors(X, k=k)
    return CheckContext(ids=items.column("id").combine_chunks(),
                        labels=np.zeros(n, np.int64) if labels is None else np.asarray(labels, np.int64),
                        classes=list(classes), items=items, embeddings=X, neighbor_idx=idx, neighbor_sims=sims,
                        options={"dup_threshold": threshold})


@pytest.fixture(scope="module")
def planted_ws(tmp_path_factory):
    from labelkit.embed import embed
    from labelkit.ingest import ingest

    root = tmp_path_factory.mktemp("splits")
    planted = make_split_folder(root / "data")
    ingest(root / "data", root / "ws")
    embed(root / "ws", model="pixels")
    return root, planted


@pytest.fixture(scope="module")
def control_ws(tmp_path_factory):
    from labelkit.embed import embed
    from labelkit.ingest import ingest

    root = tmp_path_factory.mktemp("splits_control")
    make_split_folder(root / "data", copies=False, unseen=False)
    ingest(root / "data", root / "ws")
    embed(root / "ws", model="pixels")
    return root


# --------------------------------------------------------------------------------------------
# Leakage


def test_leakage_finds_exact_and_resized_copies(planted_ws):
    root, planted = planted_ws
    ctx = workspace_context(root / "ws")
    results, skipped = run_checks(ctx, SPLIT_CHECKS)
    assert skipped == {}
    r = results["split_leakage"]
    ids = np.array(ctx.ids.to_pylist())
    flagged = ids[r.columns["is_split_leak"]]
    assert set(flagged) == set(planted)
    leaks_into = r.columns["leaks_into"].to_pylist()
    assert {ids[i]: leaks_into[i] for i in np.flatnonzero(r.columns["is_split_leak"])} == planted
    n_test = int(sum(s == "test" for s in ctx.column("split")))
    assert r.metrics == {"split_leakage": 6, "split_leakage_rate": pytest.approx(6 / n_test)}
    assert r.details["exact"] == 3 and r.details["near"] == 3 and r.details["train_split"] == "train"
    assert r.details["rows_with_all_neighbours_near"] == 0 and r.warnings == []
    reasons = {ids[i]: text for i, text in r.reasons.items()}
    assert reasons["test/cat/exact0.png"] == "same image as train/cat/0.png (exact)"
    assert reasons["test/dog/resized1.png"].startswith("near-copy of train/dog/1.png (cosine 0.99")
    # train rows never leak; similarity is 1 for exact copies, NaN where there is no copy
    is_train = ctx.column("split") == "train"
    assert not r.columns["is_split_leak"][is_train].any() and all(v is None for v in np.array(leaks_into)[is_train])
    sim = r.columns["split_leak_similarity"]
    assert (sim[[list(ids).index(i) for i in planted if "exact" in i]] == 1).all()
    assert np.isnan(sim[~r.columns["is_split_leak"]]).all()
    cross = r.details["cross_split"]
    assert cross == {"train": {"test": 6}, "test": {"train": 6}}


def test_leakage_without_embeddings_is_exact_only(planted_ws):
    root, _ = planted_ws
    results, _ = run_checks(workspace_context(root / "ws", with_embeddings=False), ["split_leakage"])
    r = results["split_leakage"]
    assert r.metrics["split_leakage"] == 3 and r.details["near"] is None
    assert any("exact copies only" in w for w in r.warnings)


def test_control_without_copies_has_no_leakage_and_no_unseen_class(control_ws):
    results, _ = run_checks(workspace_context(control_ws / "ws"), SPLIT_CHECKS)
    assert results["split_leakage"].metrics == {"split_leakage": 0, "split_leakage_rate": 0.0}
    assert not results["split_leakage"].columns["is_split_leak"].any()
    assert results["label_shift"].metrics["unseen_classes"] == 0
    assert not results["label_shift"].columns["is_unseen_class"].any()


def test_leak_is_found_when_copies_fill_the_k_neighbours():
    # 15 identical near-copies of train row 2 in test: each copy's 10 nearest are copies of itself.
    rng = np.random.default_rng(0)
    base = rng.normal(size=(50, 16))
    rows = [base[i] for i in range(50)] + [base[2] + 0.01] * 15
    split = ["train"] * 40 + ["test"] * 25
    hashes = [f"b{i}" for i in range(50)] + ["copy"] * 15
    ctx = array_context(rows, split, hashes=hashes, k=10)
    assert all(split[j] == "test" for j in ctx.neighbor_idx[50])  # the own neighbour list holds no train row
    r = run_checks(ctx, ["split_leakage"])[0]["split_leakage"]
    assert np.flatnonzero(r.columns["is_split_leak"]).tolist() == list(range(50, 65))
    assert set(r.columns["leaks_into"].to_pylist()[50:]) == {"train/2"}
    # and the check says that the neighbour lists of those copies are full
    assert r.details["rows_with_all_neighbours_near"] == 16  # the 15 copies and train/2 itself
    assert any("all 10 neighbour slots" in w for w in r.warnings)


def test_find_split_leaks_exact_by_hash_and_nulls_never_match():
    hashes = pa.array(["a", "b", "a", None, None, "b"])
    codes = np.array([0, 0, 1, 0, 1, -1])  # row 5 has no split: never leaks
    partner, sim, exact = find_split_leaks(codes, 0, hashes)
    assert partner.tolist() == [-1, -1, 0, -1, -1, -1]
    assert exact.tolist() == [False, False, True, False, False, False]
    assert sim[2] == 1 and np.isnan(sim[[0, 1, 3, 4, 5]]).all()


def test_cross_split_copies_match_one_find_split_leaks_per_pair(monkeypatch):
    from labelkit.checks import split_leakage

    rng = np.random.default_rng(3)
    n, k, S = 600, 6, 4
    codes = rng.integers(-1, S, n)  # -1: rows without a split
    hashes = [f"h{h}" for h in rng.integers(0, 450, n)]  # shared hashes: exact copies within and across splits
    hashes = pa.array([None if i % 23 == 0 else h for i, h in enumerate(hashes)])
    idx = rng.integers(0, n, (n, k))
    idx[rng.random((n, k)) < 0.1] = -1
    sims = np.sort(rng.uniform(0.95, 1.0, (n, k)).astype(np.float32), 1)[:, ::-1].copy()
    sims[idx < 0] = np.nan
    # Old result: each ordered pair (a, b) is find_split_leaks with b as train and the other splits left out.
    expected = np.zeros((S, S), np.int64)
    for b in range(S):
        for a in range(S):
            if a != b:
                pair = np.where((codes == a) | (codes == b), codes, -1)
                expected[a, b] = (find_split_leaks(pair, b, hashes, idx, sims, threshold=0.985)[0] >= 0).sum()
    exact_only = np.zeros((S, S), np.int64)
    for b in range(S):
        for a in range(S):
            if a != b:
                pair = np.where((codes == a) | (codes == b), codes, -1)
                exact_only[a, b] = (find_split_leaks(pair, b, hashes)[0] >= 0).sum()
    assert expected.min(initial=n, where=~np.eye(S, dtype=bool)) > 0 and (expected > exact_only).any()

    def one_call_per_pair(*args, **kwargs):
        raise AssertionError("cross_split_copies ran find_split_leaks once per pair of splits")

    monkeypatch.setattr(split_leakage, "find_split_leaks", one_call_per_pair)
    M = split_leakage.cross_split_copies(codes, S, hashes, idx, sims, 0.985)
    assert M.tolist() == expected.tolist()
    assert split_leakage.cross_split_copies(codes, S, hashes, None, None, 1.0).tolist() == exact_only.tolist()
    # a split without rows copies nothing and is copied by nothing
    assert split_leakage.cross_split_copies(codes, S + 1, hashes, idx, sims, 0.985)[S].sum() == 0


def test_largest_split_is_train_when_none_is_named_train():
    split = ["dev"] * 30 + ["eval"] * 10
    ctx = array_context(np.random.default_rng(0).normal(size=(40, 8)), split, hashes=[f"h{i}" for i in range(40)])
    names, _, train, note = split_codes(ctx)
    assert names[train] == "dev" and "largest, 'dev' (30 rows)" in note
    ctx = array_context(np.random.default_rng(0).normal(size=(40, 8)), ["Train"] * 5 + ["test"] * 35)
    names, _, train, note = split_codes(ctx)
    assert names[train] == "Train" and note is None


def test_split_checks_skip_without_two_splits():
    ctx = array_context(np.random.default_rng(0).normal(size=(20, 8)), ["train"] * 20)
    results, skipped = run_checks(ctx, SPLIT_CHECKS)
    assert results == {} and set(skipped) == set(SPLIT_CHECKS)


# --------------------------------------------------------------------------------------------
# Label shift


def test_unseen_class_and_shift_are_measured(planted_ws):
    root, _ = planted_ws
    ctx = workspace_context(root / "ws")
    r = run_checks(ctx, ["label_shift"])[0]["label_shift"]
    assert r.metrics["unseen_classes"] == 1 and r.details["unseen_classes"] == ["bird"]
    ids = np.array(ctx.ids.to_pylist())
    assert sorted(ids[r.columns["is_unseen_class"]]) == [f"test/bird/{i}.png" for i in range(5)]
    first = int(np.flatnonzero(r.columns["is_unseen_class"])[0])
    assert r.reasons[first] == "class 'bird' has no train rows (5 in test)"
    # test: 11 cat, 11 dog, 5 bird against train's 30/30/0
    p, q = np.array([11, 11, 5]) / 27, np.array([0.5, 0.5, 0.0])
    m = (p + q) / 2
    kl = lambda a, b: np.sum(a[a > 0] * np.log2(a[a > 0] / b[a > 0]))
    expected = 0.5 * kl(p, m) + 0.5 * kl(q, m)
    assert r.metrics["label_shift_max_jsd"] == pytest.approx(expected, rel=1e-6)
    from scipy.stats import chi2_contingency

    assert r.metrics["label_shift_min_p"] == pytest.approx(chi2_contingency([[0, 30, 30], [5, 11, 11]]).pvalue)
    assert r.metrics["label_shift_min_p"] < 0.01
    assert r.metrics["max_split_issue_rate_ratio"] is None  # no label-issue verdicts in this context


def test_same_class_proportions_give_no_shift(control_ws):
    r = run_checks(workspace_context(control_ws / "ws"), ["label_shift"])[0]["label_shift"]
    assert r.metrics["label_shift_max_jsd"] == pytest.approx(0.0, abs=1e-12)
    assert r.metrics["label_shift_min_p"] == pytest.approx(1.0)


def test_jensen_shannon_divergence_bounds():
    assert jensen_shannon_divergence(np.array([[1, 1, 2]]), np.array([2, 2, 4]))[0] == pytest.approx(0, abs=1e-12)
    assert jensen_shannon_divergence(np.array([[3, 0]]), np.array([0, 5]))[0] == pytest.approx(1.0)
    assert 0 < jensen_shannon_divergence(np.array([[3, 1]]), np.array([1, 3]))[0] < 1


def test_per_split_label_issue_rates():
    n_train, n_test = 60, 20
    split = ["train"] * n_train + ["test"] * n_test
    ctx = array_context(np.random.default_rng(0).normal(size=(80, 8)), split, labels=np.arange(80) % 3)
    flags = np.zeros(80, bool)
    flags[[0, 1]] = True  # train: 2/60
    flags[n_train:n_train + 6] = True  # test: 6/20
    quality = np.where(flags, 0.1, 0.9)
    quality[-1] = np.nan  # a row without a verdict does not count
    ctx.label_issues = {"is_label_issue": flags, "label_quality": quality}
    r = run_checks(ctx, ["label_shift"])[0]["label_shift"]
    assert r.metrics["max_split_issue_rate_ratio"] == pytest.approx((6 / 19) / (2 / 60))
    assert r.details["label_issue_rates"]["test"]["rows"] == 19
    assert r.details["label_issue_rates"]["test"]["p"] < 0.05
    flags[[0, 1]] = False  # a clean train split: its rate is taken as one row's worth
    r = run_checks(ctx, ["label_shift"])[0]["label_shift"]
    assert r.metrics["max_split_issue_rate_ratio"] == pytest.approx((6 / 19) / (1 / 60))


# --------------------------------------------------------------------------------------------
# Embedding drift


def gaussian_splits(n=500, d=32, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    is_test = rng.random(n) < 0.3
    X[is_test, 0] += shift
    return X, np.where(is_test, "test", "train")


def test_drift_auc_is_about_half_on_a_random_split():
    X, split = gaussian_splits()
    r = run_checks(array_context(X, split), ["embedding_drift"])[0]["embedding_drift"]
    assert abs(r.metrics["embedding_drift_auc"] - 0.5) < 0.1
    assert r.columns["is_split_specific"].sum() <= 5
    spec = r.columns["split_specificity"]
    assert not np.isnan(spec).any() and ((spec >= 0) & (spec <= 1)).all()


def test_drift_auc_is_high_on_a_shifted_split_and_flags_its_rows():
    X, split = gaussian_splits(shift=4.0)
    r = run_checks(array_context(X, split), ["embedding_drift"])[0]["embedding_drift"]
    assert r.metrics["embedding_drift_auc"] > 0.95
    flagged = r.columns["is_split_specific"]
    assert flagged[split == "test"].mean() > 0.6
    row = int(np.flatnonzero(flagged & (split == "test"))[0])
    assert re.fullmatch(r"typical of test, not of train: domain classifier gives (0\.9\d|1\.00) for test "
                        r"\(out of sample\)", r.reasons[row])


def test_drift_is_label_free_and_out_of_sample():
    X, split = gaussian_splits(n=300, shift=1.0)
    a = run_checks(array_context(X, split, labels=np.zeros(300)), ["embedding_drift"])[0]["embedding_drift"]
    b = run_checks(array_context(X, split, labels=np.arange(300) % 3), ["embedding_drift"])[0]["embedding_drift"]
    np.testing.assert_array_equal(a.columns["split_specificity"], b.columns["split_specificity"])
    # Memorising rows cannot help: a row's copy in another fold would let the classifier recall its
    # split, so copies (same content hash) share a fold. 200 random rows, three copies each.
    rng = np.random.default_rng(1)
    Xr = np.repeat(rng.normal(size=(200, 64)).astype(np.float32), 3, axis=0)
    is_other = np.repeat(rng.random(200) < 0.5, 3)
    _, auc_grouped, _, _ = domain_classifier_probs(Xr, is_other, np.repeat(np.arange(200), 3), seed=0)
    _, auc_leaky, _, _ = domain_classifier_probs(Xr, is_other, np.arange(600), seed=0)
    assert abs(auc_grouped - 0.5) < 0.1 and auc_leaky > auc_grouped + 0.1


def test_drift_subsample_predicts_the_rest_out_of_sample():
    X, split = gaussian_splits(n=600, shift=3.0)
    probs, auc, fit_rows, _ = domain_classifier_probs(X.astype(np.float32), split == "test", np.arange(600),
                                                      max_rows=200)
    assert len(fit_rows) == 200 and not np.isnan(probs).any() and auc > 0.9
    from sklearn.metrics import roc_auc_score

    rest = np.setdiff1d(np.arange(600), fit_rows)
    assert len(rest) == 400
    assert roc_auc_score(split[rest] == "test", probs[rest]) > 0.9  # the 400 rows outside the fit are predicted too


def test_drift_penalty_is_chosen_without_the_rows_it_scores():
    # Nested cross-validation: a row's prediction comes from a model whose fit and penalty saw no
    # row of its outer fold. Rows sharing a content group share a fold, so blowing up the other
    # rows of a row's group (×25, which favours a strong penalty) must not move its prediction.
    X, split = gaussian_splits(n=400, shift=1.0, seed=3)
    is_other = split == "test"
    groups = np.arange(400)
    block = np.flatnonzero(is_other)[:40]
    groups[block] = block[0]
    p, _, _, C = domain_classifier_probs(X.astype(np.float32), is_other, groups, seed=0)
    Y = X.copy()
    Y[block[1:]] *= 25
    q, _, _, C_perturbed = domain_classifier_probs(Y.astype(np.float32), is_other, groups, seed=0)
    assert C != C_perturbed  # the other folds' penalties did move ...
    assert q[block[0]] == p[block[0]]  # ... but not the one that predicts this row


def test_drift_same_seed_gives_identical_columns_and_metrics():
    X, split = gaussian_splits(n=300, shift=1.0)
    results = []
    for _ in range(2):
        ctx = array_context(X, split)
        ctx.seed = 5
        results.append(run_checks(ctx, ["embedding_drift"])[0]["embedding_drift"])
    a, b = results
    assert a.metrics == b.metrics and a.details == b.details and a.reasons == b.reasons
    np.testing.assert_array_equal(a.columns["split_specificity"], b.columns["split_specificity"])
    np.testing.assert_array_equal(a.columns["is_split_specific"], b.columns["is_split_specific"])


# --------------------------------------------------------------------------------------------
# End to end: audit → issues.parquet, summary, gate


def test_audit_gate_fails_on_leakage_and_passes_the_control(planted_ws, control_ws, cli):
    import json

    import pyarrow.parquet as pq

    root, planted = planted_ws
    code, out, err = cli("audit", root / "data", "-w", root / "audit", "--model", "pixels",
                         "--fail-on", "split_leakage>0", "--no-report")
    assert code == 1 and "FAIL split_leakage>0 (value 6)" in one_line(out + err)
    table = pq.read_table(root / "audit" / "issues.parquet",
                          columns=["id", "leaks_into", "is_split_leak", "is_unseen_class", "reason"]).to_pylist()
    assert {r["id"]: r["leaks_into"] for r in table if r["is_split_leak"]} == planted
    assert all(r["leaks_into"] is None for r in table if not r["is_split_leak"])
    assert sum(r["is_unseen_class"] for r in table) == 5
    by_id = {r["id"]: r["reason"] for r in table}
    assert "same image as train/cat/2.png (exact)" in by_id["test/cat/exact2.png"]
    assert "near-copy of train/dog/2.png (cosine 0.99" in by_id["test/dog/resized2.png"]
    summary = json.loads((root / "audit" / "manifest.json").read_text())["stages"]["issues"]
    assert summary["split_leakage"] == 6 and summary["unseen_classes"] == 1
    assert 0.3 < summary["embedding_drift_auc"] < 0.7  # test images are drawn like train's
    assert summary["checks"]["split_leakage"]["flagged"] == 6

    code, out, err = cli("audit", control_ws / "data", "-w", control_ws / "audit", "--model", "pixels",
                         "--fail-on", "split_leakage>0,unseen_classes>0", "--no-report")
    assert code == 0, err
    summary = json.loads((control_ws / "audit" / "manifest.json").read_text())["stages"]["issues"]
    assert summary["split_leakage"] == 0 and summary["unseen_classes"] == 0


def test_split_metrics_are_gate_metrics():
    from labelkit.checks import all_metrics

    metrics = all_metrics()
    for name in ("split_leakage", "split_leakage_rate", "label_shift_max_jsd", "label_shift_min_p", "unseen_classes",
                 "max_split_issue_rate_ratio", "embedding_drift_auc"):
        assert name in metrics


def test_table_with_a_split_column_leaks_and_drifts(tmp_path):
    # A table source: ids, text, label, split and the user's own embeddings. Test rows 0-3 repeat a
    # train text (exact), rows 4-7 have new text but nearly a train row's vector (near), and the
    # test embeddings are shifted along one axis (drift).
    import pyarrow.parquet as pq

    from labelkit.ingest import ingest
    from labelkit.issues import issues

    rng = np.random.default_rng(0)
    n_train, n_test, d = 200, 80, 16
    centers = rng.normal(0, 3, (2, d))
    label = rng.integers(0, 2, n_train + n_test)
    x = centers[label] + rng.normal(size=(n_train + n_test, d))
    x[n_train:, 0] += 6.0
    text = [f"item {i}" for i in range(n_train + n_test)]
    for j in range(8):
        x[n_train + j] = x[j] + (0 if j < 4 else 1e-3 * rng.normal(size=d))
        label[n_train + j] = label[j]
        if j < 4:
            text[n_train + j] = text[j]
    flipped = np.arange(n_train + 20, n_train + 28)  # label noise in test only
    label[flipped] = 1 - label[flipped]
    table = pa.table({"id": [f"r{i}" for i in range(len(x))], "text": text,
                      "label": np.array(["neg", "pos"])[label].tolist(),
                      "split": ["train"] * n_train + ["test"] * n_test,
                      "emb": pa.array(list(x.astype(np.float32)), pa.list_(pa.float32()))})
    pq.write_table(table, tmp_path / "data.parquet")
    ingest(tmp_path / "data.parquet", tmp_path / "ws", id_col="id", text_col="text", label_col="label",
           embedding_col="emb")
    summary = issues(tmp_path / "ws", probe="logreg").summary
    assert summary["checks"]["split_leakage"]["details"]["exact"] == 4
    assert summary["split_leakage"] == 8
    assert summary["embedding_drift_auc"] > 0.9  # measured 0.954 (the 8 copies are unshifted)
    rates = summary["checks"]["label_shift"]["details"]["label_issue_rates"]
    assert rates["train"]["flagged"] <= 2 and rates["test"]["flagged"] >= 7
    assert summary["max_split_issue_rate_ratio"] > 5 and rates["test"]["p"] < 0.01
    got = pq.read_table(tmp_path / "ws" / "issues.parquet", columns=["id", "leaks_into"]).to_pylist()
    assert {r["id"]: r["leaks_into"] for r in got if r["leaks_into"]} == {f"r{n_train + j}": f"r{j}" for j in range(8)}
