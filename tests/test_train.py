"""labelkit train: metrics by hand, the fixed split, a real training run, --check and its exit code."""

import json

import numpy as np
import pytest

from conftest import one_line
from labelkit.train import classification_metrics, expected_calibration_error, heldout_split, load_model, predict_proba


def test_ece_and_brier_by_hand():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 0])
    ece, bins = expected_calibration_error(probs, labels, n_bins=10)
    # bins: (0.8,0.9] {0.9 ok}, (0.7,0.8] {0.8 wrong}, (0.6,0.7] {0.7 ok}, (0.5,0.6] {0.55 wrong}
    hand = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(0 - 0.55)) / 4
    assert ece == pytest.approx(hand) and sum(b["count"] for b in bins) == 4
    m = classification_metrics(probs, labels)
    assert m["accuracy"] == 0.5
    assert m["brier"] == pytest.approx(np.mean([2 * 0.1 ** 2, 2 * 0.8 ** 2, 2 * 0.3 ** 2, 2 * 0.55 ** 2]))
    assert m["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.2, 0.7, 0.45])))
    perfect = classification_metrics(np.eye(2)[labels], labels)
    assert perfect["ece"] == 0 and perfect["brier"] == 0 and perfect["macro_f1"] == 1


def test_heldout_split_is_fixed_by_ids_and_stratified():
    ids = [f"r{i}" for i in range(100)]
    labels = np.array([0] * 70 + [1] * 25 + [2] * 5)
    held = heldout_split(ids, labels, fraction=0.2)
    assert [held[labels == k].sum() for k in range(3)] == [14, 5, 1]
    order = np.random.default_rng(0).permutation(100)
    again = heldout_split([ids[i] for i in order], labels[order], fraction=0.2)
    assert {ids[i] for i in order[again]} == {i for i, h in zip(ids, held) if h}  # same rows, any order
    split = ["train"] * 90 + ["test"] * 10
    assert heldout_split(ids, labels, split=split).sum() == 10  # the data's own split wins


def test_train_on_sample_digits_reaches_sensible_accuracy(digits_copy, cli):
    code, out, err = cli("train", "-w", digits_copy, "--loss", "ce", "--json")
    assert code == 0, err
    result = json.loads(out)
    card = json.loads((digits_copy / "models" / "ce-label" / "model_card.json").read_text())
    assert card == result["card"]
    m = card["metrics"]
    # pixels of 8×8 digits with 5 % planted flips, scored against the given (noisy) labels
    assert m["accuracy"] > 0.85 and m["macro_f1"] > 0.85 and 0 <= m["ece"] < 0.15
    assert card["heldout"]["rows"] == 364 and card["training"]["epochs"] < 200
    assert card["loss"] == {"name": "ce", "params": {}} and card["labels"] == "label"
    assert len(card["data_hash"]) == 64 and card["versions"]["torch"]
    # the saved weights reproduce the card's accuracy
    from labelkit.embed import load_workspace_embeddings
    from labelkit.workspace import Workspace

    ws = Workspace(digits_copy)
    _, ids, X = load_workspace_embeddings(ws)
    items = ws.read_items(columns=["id", "label_id"]).set_index("id").loc[ids]
    held = heldout_split(ids, items["label_id"].to_numpy())
    model, ckpt = load_model(ws.model_dir("ce-label"))
    acc = (predict_proba(model, X[held]).argmax(1) == items["label_id"].to_numpy()[held]).mean()
    assert acc == pytest.approx(m["accuracy"]) and ckpt["classes"] == card["classes"]

    # a robust loss with a parameter goes into the card
    code, out, _ = cli("train", "-w", digits_copy, "--loss", "gce", "--param", "q=0.5", "--head", "linear", "--json")
    card = json.loads(out)["card"]
    assert code == 0 and card["loss"]["params"] == {"q": 0.5} and card["head"]["type"] == "linear"

    # the report shows the latest model
    code, out, _ = cli("report", "-w", digits_copy)
    html = (digits_copy / "report.html").read_text()
    assert code == 0 and "gce-label" in html and "Reliability" in html


def test_check_fails_with_exit_1_above_the_reached_accuracy(digits_copy, cli, tmp_path, monkeypatch):
    code, _, err = cli("train", "-w", digits_copy, "--check", "--fail-on", "accuracy<0.999", "--name", "strict")
    assert code == 1 and "FAIL accuracy<0.999" in one_line(err) and "Check failed" in err
    card = json.loads((digits_copy / "models" / "strict" / "model_card.json").read_text())
    assert card["check"]["passed"] is False
    code, _, err = cli("train", "-w", digits_copy, "--fail-on", "accuracy<0.5,ece>0.5", "--name", "lenient")
    assert code == 0 and "Check passed" in err
    # thresholds from [tool.labelkit.train] in the nearest pyproject.toml
    (tmp_path / "pyproject.toml").write_text('[tool.labelkit.train]\nfail_on = ["macro_f1<0.999"]\n')
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("train", "-w", digits_copy, "--check", "--name", "cfg")
    assert code == 1 and str(tmp_path / "pyproject.toml") in one_line(err)


@pytest.mark.parametrize("args, message", [
    (["--loss", "nope"], "error: Unknown loss 'nope'; known: ce, cmixup"),
    (["--param", "q"], "error: --param expects KEY=VALUE, e.g. --param q=0.7. Got 'q'."),
    (["--labels", "label_v9"], "error: Unknown label version 'label_v9'"),
    (["--subset", "nope"], "error: No subset 'nope'"),
    (["--check"], "error: --check needs thresholds: pass --fail-on 'accuracy<0.9' or set [tool.labelkit.train] fail_on"),
    (["--fail-on", "accuracy<<1"], "error: Cannot parse rule 'accuracy<<1'"),
    (["--head", "cnn"], "error: The 'head' parameter of train must be one of linear, mlp. Got 'cnn' instead."),
])
def test_bad_train_options_are_one_line_errors(digits_ws, cli, args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("train", "-w", digits_ws, *args)
    assert code == 2 and one_line(err).startswith(message), err


def test_distillation_from_saved_teachers_and_from_the_probe(digits_copy, cli):
    for name, seed in (("t1", "1"), ("t2", "2")):
        assert cli("train", "-w", digits_copy, "--name", name, "--seed", seed, "--head", "linear")[0] == 0
    code, out, err = cli("train", "-w", digits_copy, "--loss", "distill", "--teacher", "t1", "--teacher", "t2", "--json")
    card = json.loads(out)["card"]
    assert code == 0, err
    assert card["teachers"] == ["t1", "t2"] and card["loss"] == {"name": "distill", "params": {"temperature": 1.0}}
    assert card["metrics"]["accuracy"] > 0.85
    code, out, _ = cli("train", "-w", digits_copy, "--loss", "distill", "--name", "from-probe", "--json")
    assert code == 0 and json.loads(out)["card"]["teachers"] == ["issues probe (probs.parquet)"]
    code, _, err = cli("train", "-w", digits_copy, "--loss", "distill", "--teacher", "nobody")
    assert code == 2 and "No model 'nobody'" in err
    code, _, err = cli("train", "-w", digits_copy, "--loss", "ce", "--teacher", "t1")
    assert code == 2 and "--teacher only applies to --loss distill." in err


@pytest.fixture(scope="module")
def embedded_digits(tmp_path_factory):
    """The sample digits ingested and pixel-embedded: all that training needs (no probe run)."""
    from conftest import SAMPLE
    from labelkit.embed import embed
    from labelkit.ingest import ingest

    ws = tmp_path_factory.mktemp("seeded") / "ws"
    ingest(SAMPLE / "digits", ws)
    embed(ws, model="pixels")
    return ws


@pytest.mark.parametrize("loss", ["mixup", "cmixup"])
def test_seed_reaches_the_mixing_draws(embedded_digits, loss):
    from labelkit.train import train

    def run(name, seed, loss_seed=None):
        params = {} if loss_seed is None else {"seed": loss_seed}
        result = train(embedded_digits, loss=loss, loss_params=params, name=f"{loss}-{name}", max_epochs=2, seed=seed)
        return result.card["metrics"], result.card["loss"]["params"]["seed"]

    first, loss_seed = run("a", 3)
    again, _ = run("b", 3)
    assert loss_seed == 3 and again == first  # same --seed: the same metrics to the last digit
    assert run("c", 3, loss_seed=3)[0] == first  # the loss draws came from --seed ...
    assert run("d", 3, loss_seed=0)[0]["nll"] != first["nll"]  # ... so other draws alone change the result
