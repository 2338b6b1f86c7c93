"""labelkit.losses against hand-computed values, limiting cases, gradients and batch invariance."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from labelkit.errors import LabelkitError
from labelkit.losses import (LOSSES, CMixup, DecoupledMixup, MixupCE, RankMixupMNDCG, RankMixupMRL,
                             cmixup_partner_probs, ensemble_soft_targets, get_loss, ndcg, soft_cross_entropy)

Z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
Y = torch.tensor([0, 2])


def softmax_rows(z):
    e = [[math.exp(v) for v in row] for row in z.tolist()]
    return [[v / sum(row) for v in row] for row in e]


P = softmax_rows(Z)  # hand softmax
p_y = [P[0][0], P[1][2]]
CE = -(math.log(p_y[0]) + math.log(p_y[1])) / 2


def close(a, b, tol=1e-5):
    return abs(float(torch.as_tensor(a).detach()) - float(torch.as_tensor(b).detach())) < tol


class Tiny(nn.Module):
    """A model with the features/classifier split the mixup losses use."""

    def __init__(self, d=4, k=3):
        super().__init__()
        torch.manual_seed(0)
        self.n_classes = k
        self.body = nn.Sequential(nn.Linear(d, 8), nn.ReLU())
        self.classifier = nn.Linear(8, k)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.classifier(self.features(x))


def test_cross_entropy_and_label_smoothing_by_hand():
    assert close(get_loss("ce")(Z, Y), CE)
    assert close(get_loss("label_smoothing", epsilon=0.0)(Z, Y), CE)
    eps, K = 0.1, 3
    hand = 0
    for i, y in enumerate(Y.tolist()):
        hand -= sum(((1 - eps) * (k == y) + eps / K) * math.log(P[i][k]) for k in range(K))
    assert close(get_loss("label_smoothing", epsilon=eps)(Z, Y), hand / 2)
    # soft targets: CE against a distribution
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    hand = -sum(soft[i, k].item() * math.log(P[i][k]) for i in range(2) for k in range(3)) / 2
    assert close(get_loss("ce")(Z, soft), hand)


def test_focal_by_hand_and_gamma_zero():
    assert close(get_loss("focal", gamma=0)(Z, Y), CE)
    hand = -sum((1 - p) ** 2 * math.log(p) for p in p_y) / 2
    assert close(get_loss("focal", gamma=2)(Z, Y), hand)


def test_gce_limits_and_value():
    assert close(get_loss("gce", q=0.0)(Z, Y), CE)
    assert close(get_loss("gce", q=1e-6)(Z, Y), CE, tol=1e-4)  # q → 0 is cross-entropy
    assert close(get_loss("gce", q=1.0)(Z, Y), sum(1 - p for p in p_y) / 2)  # q = 1 is MAE on p_y
    assert close(get_loss("gce", q=0.7)(Z, Y), sum((1 - p ** 0.7) / 0.7 for p in p_y) / 2)


def test_sce_by_hand():
    a, b, A = 0.1, 1.0, -4.0
    hand = sum(a * -math.log(p) + b * -A * (1 - p) for p in p_y) / 2
    assert close(get_loss("sce", alpha=a, beta=b, A=A)(Z, Y), hand)
    assert close(get_loss("sce", alpha=1.0, beta=0.0)(Z, Y), CE)


def test_elr_targets_and_value_by_hand():
    lam, beta = 3.0, 0.7
    loss = get_loss("elr", n_samples=5, n_classes=3, lam=lam, beta=beta)
    index = torch.tensor([3, 1])
    clamp = [[min(max(v, 1e-4), 1 - 1e-4) for v in row] for row in P]
    t1 = [[(1 - beta) * v / sum(row) for v in row] for row in clamp]
    hand = sum(-math.log(p_y[i]) + lam * math.log(1 - sum(t1[i][k] * clamp[i][k] for k in range(3)))
               for i in range(2)) / 2
    assert close(loss(Z, Y, index=index), hand)
    assert torch.allclose(loss.targets[3], torch.tensor(t1[0])) and loss.targets[0].sum() == 0
    loss(Z, Y, index=index)  # second step: t ← β t + (1 − β) p̂
    t2 = [beta * t1[0][k] + (1 - beta) * clamp[0][k] / sum(clamp[0]) for k in range(3)]
    assert torch.allclose(loss.targets[3], torch.tensor(t2))
    loss.eval()
    before = loss.targets.clone()
    loss(Z, Y, index=index)
    assert torch.equal(before, loss.targets)  # evaluation does not move the targets
    with pytest.raises(ValueError):
        loss(Z, Y)


def test_distillation_is_kl_to_the_teacher_average():
    teachers = [torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]), torch.tensor([[0.5, 0.4, 0.1], [0.3, 0.1, 0.6]])]
    target = ensemble_soft_targets(teachers)
    assert torch.allclose(target, torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.1, 0.7]]))
    hand = sum(target[i, k].item() * math.log(target[i, k].item() / P[i][k]) for i in range(2) for k in range(3)) / 2
    assert close(get_loss("distill")(Z, target), hand)
    assert close(get_loss("distill")(torch.log(target), target), 0.0)  # student equals teacher
    onehot = torch.nn.functional.one_hot(Y, 3).float()
    assert close(get_loss("distill")(Z, onehot), CE)  # KL to a one-hot target is CE


class Logits(nn.Module):
    """The identity as a model: inputs are logits, so every mixed forward pass is worked by hand."""

    n_classes = 3

    def forward(self, x):
        return x

    features = classifier = forward


# Four samples, classes 0, 0, 1, 2: the seed-1 draws (λ = 0.424, π = [1, 3, 2, 0]) pair two rows
# with a sample of their own class (0↔1 and 2↔2) and two across classes.
XL = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.3, 1.0], [1.0, -0.5, 0.5]]
YL = [0, 0, 1, 2]


def hand_mix(lam, perm):
    """Mixed logits and mixed labels, as Python lists."""
    z = [[lam * a + (1 - lam) * b for a, b in zip(XL[i], XL[perm[i]])] for i in range(4)]
    y = [[lam * (k == YL[i]) + (1 - lam) * (k == YL[perm[i]]) for k in range(3)] for i in range(4)]
    return z, y


HAND_CE = -sum(math.log(softmax_rows(torch.tensor([XL[i]]))[0][YL[i]]) for i in range(4)) / 4


def test_rankmixup_mrl_by_hand():
    # L = CE(raw) + w·mean_i s_i·max(0, max z̃_i − max z_i + m); s_i = 0 when the mixed label is one-hot
    twin = RankMixupMRL(alpha=1.0, seed=1)
    lam, perm = twin.sample_lambda(), twin.permutation(4, "cpu").tolist()
    assert perm == [1, 3, 2, 0]
    z, y = hand_mix(lam, perm)
    m, w = 1.0, 1.0
    hinge = [max(0.0, max(z[i]) - max(XL[i]) + m) for i in range(4)]
    counted = [max(y[i]) < 1 for i in range(4)]
    assert counted == [False, True, False, True] and hinge[0] > 0 and hinge[1] > 0  # the mask matters
    hand = HAND_CE + w * sum(h for h, c in zip(hinge, counted) if c) / 4
    value = RankMixupMRL(alpha=1.0, margin=m, weight=w, seed=1).compute(Logits(), torch.tensor(XL), torch.tensor(YL))
    assert close(value, hand)
    defaults = RankMixupMRL().params()
    assert (defaults["alpha"], defaults["margin"], defaults["weight"]) == (2.0, 2.0, 0.1)  # the authors' CIFAR values


def test_mndcg_by_hand():
    d = [1 / math.log2(r + 1) for r in range(1, 5)]
    # confidences below the coefficients: DCG / IDCG
    g, rel = [0.9, 0.7, 0.5], [1.0, 0.8, 0.6]
    hand = sum(a * b for a, b in zip(g, d)) / sum(a * b for a, b in zip(rel, d))
    assert close(ndcg(torch.tensor([g]), torch.tensor([rel])), hand)
    # over-confident mixes: IDCG / DCG, and the list is read in relevance order (raw first)
    g, rel = [0.95, 0.6, 0.99], [1.0, 0.55, 0.9]
    dcg, idcg = 0.95 * d[0] + 0.99 * d[1] + 0.6 * d[2], 1.0 * d[0] + 0.9 * d[1] + 0.55 * d[2]
    assert dcg > idcg and close(ndcg(torch.tensor([g]), torch.tensor([rel])), idcg / dcg)
    assert close(ndcg(torch.tensor([rel]), torch.tensor([rel])), 1.0)  # confidences equal to coefficients
    gains = torch.tensor([[0.5, 0.7, 0.9]], requires_grad=True)
    ndcg(gains, torch.tensor([[1.0, 0.8, 0.6]])).sum().backward()
    assert torch.isfinite(gains.grad).all() and gains.grad.abs().sum() > 0


def test_rankmixup_mndcg_by_hand():
    # each row: raw (relevance 1) then 3 mixes sorted by max of the mixed label (1 for same-class pairs)
    twin = RankMixupMNDCG(alpha=1.0, seed=1)
    draws = [(twin.sample_lambda(), twin.permutation(4, "cpu").tolist()) for _ in range(3)]
    def conf(z):
        return max(softmax_rows(torch.tensor([z]))[0])

    d = [1 / math.log2(r + 1) for r in range(1, 5)]
    mixes = [hand_mix(lam, perm) for lam, perm in draws]
    total = 0.0
    for i in range(4):
        gains = [conf(XL[i])] + [conf(z[i]) for z, _ in mixes]
        rels = [1.0] + [max(y[i]) for _, y in mixes]
        order = sorted(range(4), key=lambda k: -rels[k])
        dcg = sum(gains[k] * d[r] for r, k in enumerate(order))
        idcg = sum(rels[k] * d[r] for r, k in enumerate(order))
        total += 1 - min(dcg / idcg, idcg / dcg)
    assert any(max(y[i]) == 1 for _, y in mixes for i in range(4))  # a same-class pair has relevance 1
    hand = HAND_CE + 1.0 * total / 4
    value = RankMixupMNDCG(alpha=1.0, n_mix=3, weight=1.0, seed=1).compute(Logits(), torch.tensor(XL), torch.tensor(YL))
    assert close(value, hand)
    with pytest.raises(LabelkitError, match=r"The 'n_mix' parameter of rankmixup_mndcg must be an int in the range"):
        get_loss("rankmixup_mndcg", n_mix=0)


def test_decoupled_regulariser_by_hand():
    z = torch.tensor([[1.0, 2.0, 0.5], [1.0, 2.0, 0.5]])
    reg = DecoupledMixup.regularizer(z, torch.tensor([0, 0]), torch.tensor([1, 0]))
    hand = -math.log(math.exp(1) / (math.exp(1) + math.exp(0.5))) - math.log(math.exp(2) / (math.exp(2) + math.exp(0.5)))
    assert close(reg[0], hand)
    assert reg[1] == 0  # same class: no regulariser, as in the authors' code


def test_decoupled_mixup_by_hand():
    # L = mean_i [ CE(z̃_i, ỹ_i) + η·(−log φ_{a∖b} − log φ_{b∖a}) ], the η term only where a ≠ b
    twin = DecoupledMixup(alpha=1.0, seed=1)
    lam, perm = twin.sample_lambda(), twin.permutation(4, "cpu").tolist()
    z, y = hand_mix(lam, perm)
    eta, total = 0.5, 0.0
    for i in range(4):
        e = [math.exp(v) for v in z[i]]
        total -= sum(y[i][k] * math.log(e[k] / sum(e)) for k in range(3))
        a, b = YL[i], YL[perm[i]]
        if a != b:
            total -= eta * (math.log(e[a] / (sum(e) - e[b])) + math.log(e[b] / (sum(e) - e[a])))
    value = DecoupledMixup(alpha=1.0, eta=eta, seed=1).compute(Logits(), torch.tensor(XL), torch.tensor(YL))
    assert close(value, total / 4)


def test_mixup_compute_matches_hand_mix_with_the_same_draws():
    model, x = Tiny(), torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    twin = MixupCE(alpha=1.0, seed=3)
    lam, perm = twin.sample_lambda(), twin.permutation(6, "cpu")
    onehot = torch.nn.functional.one_hot(y, 3).float()
    hand = soft_cross_entropy(model(lam * x + (1 - lam) * x[perm]), lam * onehot + (1 - lam) * onehot[perm]).mean()
    assert close(MixupCE(alpha=1.0, seed=3).compute(model, x, y), hand)
    lams = np.array([MixupCE(alpha=4.0, seed=s).sample_lambda() for s in range(2000)])
    assert abs(lams.mean() - 0.5) < 0.01 and abs(lams.var() - 1 / (4 * 9)) < 0.005  # Beta(4, 4)


def test_cmixup_partner_probabilities_by_hand_and_sampling():
    # P(j | i) ∝ exp(−(y_i − y_j)² / 2σ²) over every j, i itself included (weight 1)
    y = torch.tensor([0.0, 1.0, 3.0])
    P = cmixup_partner_probs(y, bandwidth=1.0)
    r0 = np.array([1.0, math.exp(-0.5), math.exp(-4.5)])
    r2 = np.array([math.exp(-4.5), math.exp(-2.0), 1.0])
    assert torch.allclose(P[0], torch.tensor(r0 / r0.sum(), dtype=torch.float32))
    assert torch.allclose(P[2], torch.tensor(r2 / r2.sum(), dtype=torch.float32))
    assert torch.allclose(P.sum(1), torch.ones(3))
    r = np.exp(-np.array([0.0, 1.0]) ** 2 / (2 * 0.5 ** 2))  # bandwidth 0.5, two rows
    assert torch.allclose(cmixup_partner_probs(torch.tensor([[0.0], [1.0]]), 0.5)[0],
                          torch.tensor(r / r.sum(), dtype=torch.float32))
    loss = CMixup(bandwidth=1.0, criterion="mse", seed=0)
    draws = torch.stack([loss.partners(y) for _ in range(3000)])
    assert abs((draws[:, 0] == 0).float().mean() - P[0, 0]) < 0.03  # self-pairs drawn at their rate
    assert abs((draws[:, 0] == 1).float().mean() - P[0, 1]) < 0.03
    # regression: the loss is MSE of f(λx_i + (1−λ)x_j) against λy_i + (1−λ)y_j
    model = nn.Linear(1, 1)
    model.n_classes = 1
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.bias.fill_(1.0)
    twin = CMixup(criterion="mse", seed=4)
    lam, j = twin.sample_lambda(), twin.partners(y).tolist()
    yl = y.tolist()
    hand = sum((2 * (lam * yl[i] + (1 - lam) * yl[j[i]]) + 1 - (lam * yl[i] + (1 - lam) * yl[j[i]])) ** 2
               for i in range(3)) / 3
    assert close(CMixup(criterion="mse", seed=4).compute(model, y.reshape(3, 1), y), hand)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_has_finite_gradients(name):
    params = {"n_samples": 8, "n_classes": 3} if LOSSES[name].needs_index else {}
    loss = get_loss(name, **params)
    model, x = Tiny(), torch.randn(8, 4, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    value = loss.compute(model, x, y, index=torch.arange(8))
    value.backward()
    grads = [p.grad for p in model.parameters()]
    assert torch.isfinite(value) and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    assert LOSSES[name].__doc__ and "References" in LOSSES[name].__doc__ or name == "ce"


@pytest.mark.parametrize("name", ["ce", "label_smoothing", "focal", "gce", "sce", "distill"])
def test_per_sample_losses_are_batch_size_invariant(name):
    logits = torch.randn(10, 4, generator=torch.Generator().manual_seed(5))
    target = torch.softmax(torch.randn(10, 4, generator=torch.Generator().manual_seed(6)), 1) \
        if name == "distill" else torch.arange(10) % 4
    loss = get_loss(name)
    halves = (loss(logits[:5], target[:5]) + loss(logits[5:], target[5:])) / 2
    assert close(loss(logits, target), halves)


def test_registry_errors_are_user_errors():
    with pytest.raises(LabelkitError, match="Unknown loss 'nope'; known: ce, cmixup"):
        get_loss("nope")
    with pytest.raises(LabelkitError, match="Loss 'gce' has no parameter 'r'; its parameters: q."):
        get_loss("gce", r=1)
    with pytest.raises(LabelkitError, match=r"The 'q' parameter of gce must be in \[0, 1\]. Got 2 instead."):
        get_loss("gce", q=2)
