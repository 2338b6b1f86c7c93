"""labelkit select: RS2's schedule property, DSIR's formula and shift, SMOTE against imbalanced-learn, pruning."""

import json
import shutil
import math
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import SAMPLE, one_line
from labelkit.errors import LabelkitError
from labelkit.selection import (dsir_log_weights, gumbel_top_k, hashed_ngram_counts, kl_reduction, rs2_schedule,
                                smote)


# RS2 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m", [2, 3, 4, 5])
def test_rs2_with_fraction_1_over_m_sees_every_row_once_per_block_of_m_epochs(m):
    n, epochs = 60, 4 * m
    schedule = rs2_schedule(np.zeros(n), fraction=1 / m, epochs=epochs, seed=m)
    assert all(len(e) == n // m for e in schedule)
    for block in range(0, epochs, m):
        seen = np.concatenate(schedule[block:block + m])
        assert sorted(seen) == list(range(n))  # exactly once each
    assert not np.array_equal(schedule[0], schedule[m])  # a fresh shuffle in the next block


def test_rs2_when_chunks_do_not_divide_the_rows():
    n, r = 101, 0.3
    schedule = rs2_schedule(np.zeros(n), fraction=r, epochs=30, seed=1)
    assert all(len(e) == math.ceil(r * n) and len(set(e)) == len(e) for e in schedule)  # no repeats within an epoch
    counts = np.bincount(np.concatenate(schedule), minlength=n)
    assert counts.max() - counts.min() <= 1  # balanced coverage, as sampling without replacement promises


def test_rs2_class_balanced_keeps_proportions():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    schedule = rs2_schedule(labels, fraction=0.2, epochs=10, class_balanced=True, seed=0)
    for e in schedule:
        assert Counter(labels[e].tolist()) == {0: 12, 1: 6, 2: 2}
    for block in (0, 5):
        assert sorted(np.concatenate(schedule[block:block + 5])) == list(range(100))


def test_rs2_rejects_bad_fraction():
    with pytest.raises(LabelkitError, match=r"The 'fraction' parameter of rs2 must be a number in the range \(0, 1\]. Got 0 instead."):
        rs2_schedule(np.zeros(5), fraction=0, epochs=1)


# DSIR -----------------------------------------------------------------------------------------
def ngrams(text):
    words = text.lower().split()
    return words + [f"{a} {b}" for a, b in zip(words, words[1:])]


def test_dsir_log_weights_equal_a_hand_computation():
    raw = ["cat dog", "dog dog", "fish", "cat cat dog"]
    target = ["cat cat", "cat"]
    B = 2 ** 20  # large enough that these few n-grams do not collide
    Craw, Ctgt = hashed_ngram_counts(raw, n_buckets=B), hashed_ngram_counts(target, n_buckets=B)
    raw_counts = Counter(g for t in raw for g in ngrams(t))
    tgt_counts = Counter(g for t in target for g in ngrams(t))
    n_raw, n_tgt = sum(raw_counts.values()), sum(tgt_counts.values())

    def log_w(text):  # Σ_j c_ij (log p_j − log q_j), add-one smoothing over B buckets
        return sum(math.log((tgt_counts[g] + 1) / (n_tgt + B)) - math.log((raw_counts[g] + 1) / (n_raw + B))
                   for g in ngrams(text))

    assert np.allclose(dsir_log_weights(Craw, Ctgt, smoothing=1.0), [log_w(t) for t in raw])
    w = dsir_log_weights(Craw, Ctgt, smoothing=1.0)
    assert w[0] > w[1]  # of two texts with three n-grams each, the one with "cat" is more target-like


def test_dsir_selection_shifts_towards_the_target():
    rng = np.random.default_rng(0)
    sport = "match goal team score win league coach player".split()
    food = "recipe oven bake flour sugar butter salt pan".split()
    raw = [" ".join(rng.choice(sport if i % 2 else food, 6)) for i in range(400)]
    target = [" ".join(rng.choice(food, 6)) for _ in range(50)]
    Craw, Ctgt = hashed_ngram_counts(raw), hashed_ngram_counts(target)
    chosen = gumbel_top_k(dsir_log_weights(Craw, Ctgt), 100, seed=0)
    assert len(set(chosen)) == 100 and np.mean([i % 2 == 0 for i in chosen]) > 0.95
    assert kl_reduction(Craw, Ctgt, chosen) > 0
    random_pick = rng.choice(400, 100, replace=False)
    assert kl_reduction(Craw, Ctgt, chosen) > kl_reduction(Craw, Ctgt, random_pick)


def test_gumbel_top_k_samples_in_proportion_to_weights():
    log_w = np.log([1.0, 1.0, 2.0, 4.0])
    firsts = Counter(int(gumbel_top_k(log_w, 1, seed=s)[0]) for s in range(4000))
    assert abs(firsts[3] / 4000 - 0.5) < 0.03 and abs(firsts[2] / 4000 - 0.25) < 0.03


def test_dsir_on_the_text_workspace(text_ws, tmp_path, cli):
    target = tmp_path / "target.txt"
    target.write_text("\n".join(["The striker scored a late goal in the final match.",
                                 "The team won the championship game after extra time.",
                                 "Fans cheered as the coach lifted the trophy."]) + "\n")
    ws = tmp_path / "ws"
    import shutil

    shutil.copytree(text_ws, ws)
    code, out, err = cli("select", "dsir", "-w", ws, "--target", target, "--k", 80, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["size"] == 80 and result["kl_reduction"] > 0
    assert result["class_counts_after"]["sports"] > 40  # a quarter of the data, more than half of the pick
    nothing = tmp_path / "nothing.txt"
    nothing.write_text("zzzq xxyq\n")
    code, _, err = cli("select", "dsir", "-w", ws, "--target", nothing, "--k", 5)
    assert code == 2 and "shares no hashed unigrams+bigrams with the workspace" in one_line(err)


# SMOTE ----------------------------------------------------------------------------------------
def imbalanced(seed=0):
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(0, 1, (80, 5)), rng.normal(3, 1, (15, 5)), rng.normal(-3, 1, (9, 5))])
    y = np.array(["a"] * 80 + ["b"] * 15 + ["c"] * 9, dtype=object)
    return X.astype(np.float32), y


def test_smote_equals_imbalanced_learn_and_points_lie_on_neighbour_segments():
    from imblearn.over_sampling import SMOTE

    X, y = imbalanced()
    X_res, y_res, source, parents = smote(X, y, k_neighbors=3, seed=7)
    X_ref, y_ref = SMOTE(k_neighbors=3, random_state=7).fit_resample(X, y)
    assert np.array_equal(X_res, X_ref) and np.array_equal(y_res, y_ref)
    synth = np.flatnonzero(source < 0)
    assert len(synth) == 2 * 80 - 15 - 9 and np.array_equal(source[:len(y)], np.arange(len(y)))
    for r in synth:
        i, j = parents[r]
        assert y[i] == y[j] == y_res[r]
        same = np.flatnonzero(y == y[i])
        d = np.linalg.norm(X[same] - X[i], axis=1)
        knn = set(same[np.argsort(d)[1:4]])  # i's 3 nearest same-class neighbours, by brute force
        assert j in knn
        seg = X[j] - X[i]
        t = np.dot(X_res[r] - X[i], seg) / np.dot(seg, seg)
        assert -1e-5 <= t <= 1 + 1e-5 and np.allclose(X[i] + t * seg, X_res[r], atol=1e-4)


def test_smote_with_undersampling_equals_the_imblearn_pipeline():
    from imblearn.over_sampling import SMOTE
    from imblearn.under_sampling import RandomUnderSampler

    X, y = imbalanced(1)
    strategy = {"b": 40, "c": 40}
    X_res, y_res, source, _ = smote(X, y, k_neighbors=3, sampling_strategy=strategy, undersample={"a": 40}, seed=3)
    X1, y1 = SMOTE(k_neighbors=3, sampling_strategy=strategy, random_state=3).fit_resample(X, y)
    X2, y2 = RandomUnderSampler(sampling_strategy={"a": 40}, random_state=3).fit_resample(X1, y1)
    assert np.array_equal(X_res, X2) and np.array_equal(y_res, y2)
    assert Counter(y_res.tolist()) == {"a": 40, "b": 40, "c": 40}
    real = source >= 0
    assert np.array_equal(X_res[real], X[source[real]])


def test_smote_on_a_class_smaller_than_k_plus_1_is_a_clear_error():
    X, y = imbalanced()
    with pytest.raises(LabelkitError) as exc:
        smote(X, y, k_neighbors=9)
    assert exc.value.message == ("Class 'c' has 9 rows; SMOTE with k_neighbors=9 needs at least 10 "
                                 "(pass --k-neighbors 8 or fewer, or merge the class).")


def test_smote_subset_and_training_on_it(digits_copy, cli):
    code, out, err = cli("select", "smote", "-w", digits_copy, "--sampling-strategy", '{"0": 220, "1": 220}', "--json")
    assert code == 0, err
    result = json.loads(out)
    before = result["class_counts_before"]
    assert result["class_counts_after"]["0"] == 220 and result["synthetic_rows"] == 220 * 2 - before["0"] - before["1"]
    table = pq.read_table(digits_copy / "subsets" / "smote.parquet").to_pandas()
    synth = table[table["synthetic"]]
    assert len(synth) == result["synthetic_rows"] and all(len(p) == 2 for p in synth["parent_ids"])
    assert table.loc[~table["synthetic"], "embedding"].isna().all() and synth["embedding"].notna().all()
    code, out, err = cli("train", "-w", digits_copy, "--subset", "smote", "--json")
    card = json.loads(out)["card"]
    assert code == 0 and 0 < card["training"]["synthetic_rows"] <= result["synthetic_rows"]


# prune ----------------------------------------------------------------------------------------
def test_prune_drops_flagged_rows_and_train_uses_the_subset(digits_copy, cli):
    issues = pq.read_table(digits_copy / "issues.parquet").to_pandas()
    code, out, _ = cli("select", "prune", "-w", digits_copy, "--json")
    result = json.loads(out)
    assert code == 0 and result["size"] == len(issues) - issues["is_label_issue"].sum()
    kept = set(pq.read_table(digits_copy / "subsets" / "prune.parquet").column("id").to_pylist())
    assert kept == set(issues.loc[~issues["is_label_issue"], "id"])
    code, out, _ = cli("select", "prune", "-w", digits_copy, "--keep-fraction", "0.5", "--name", "half", "--json")
    half = pq.read_table(digits_copy / "subsets" / "half.parquet").column("id").to_pylist()
    q = issues.set_index("id")["label_quality"]
    assert len(half) == math.ceil(len(issues) / 2) and q[half].min() >= q.drop(half).max()
    code, out, _ = cli("train", "-w", digits_copy, "--subset", "prune", "--json")
    card = json.loads(out)["card"]
    assert code == 0 and card["subset"] == "prune" and card["name"] == "ce-label-prune"
    assert card["training"]["rows"] + card["training"]["inner_validation_rows"] < 1797 * 0.8 - 50
    code, _, err = cli("select", "rs2", "-w", digits_copy, "--fraction", "0.5", "--epochs", "4")
    assert code == 0
    code, out, _ = cli("train", "-w", digits_copy, "--subset", "rs2", "--json")
    assert code == 0 and json.loads(out)["card"]["training"]["epochs"] == 4


@pytest.mark.parametrize("args, message", [
    (["bogus"], "error: Unknown selection method 'bogus'; choose from rs2, dsir, smote, prune."),
    (["rs2", "--fraction", "1.5"], "error: The 'fraction' parameter of rs2 must be a number in the range (0, 1]. Got 1.5 instead."),
    (["prune", "--fraction", "0.5"], "error: --fraction does not apply to prune."),
    (["prune", "--drop", "typos"], "error: Cannot drop 'typos'; choose from label_issues, duplicates, outliers."),
    (["dsir", "--k", "5"], "error: dsir needs --target TARGET and --k N."),
    (["smote", "--k-neighbors", "500"], "error: Class '8' has 171 rows; SMOTE with k_neighbors=500 needs at least 501"),
])
def test_bad_select_options_are_one_line_errors(digits_ws, cli, args, message):
    code, _, err = cli("select", *args, "-w", digits_ws)
    assert code == 2 and one_line(err).startswith(message), err


def test_dsir_on_images_uses_embedding_clusters_towards_a_target_workspace(digits_copy, tmp_path, cli):
    src = tmp_path / "target"
    for k in ("0", "1"):
        (src / k).mkdir(parents=True)
        for p in sorted((SAMPLE / "digits" / k).glob("*.png"))[:40]:
            shutil.copy(p, src / k / p.name)
    target = tmp_path / "target-ws"
    assert cli("ingest", src, "-w", target)[0] == 0
    assert cli("embed", "-w", target, "--model", "pixels")[0] == 0
    code, out, err = cli("select", "dsir", "-w", digits_copy, "--target", target, "--k", 300, "--buckets", 32, "--json")
    assert code == 0, err
    result = json.loads(out)
    after = result["class_counts_after"]
    assert result["features"] == "k-means buckets of pixels-16-std" and result["kl_reduction"] > 0
    assert after["0"] + after["1"] > 0.6 * 300  # a fifth of the data, most of the pick
    other = tmp_path / "texts.txt"
    other.write_text("hello\n")
    code, _, err = cli("select", "dsir", "-w", digits_copy, "--target", other, "--k", 5)
    assert code == 2 and "must be another workspace" in one_line(err)
