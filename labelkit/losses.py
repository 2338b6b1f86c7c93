"""`labelkit.losses`: the shared core loss library, one registry of `torch.nn.Module` losses.

Every loss takes logits of shape (n, n_classes) and a target that is either class indices of
shape (n,) or a soft label matrix of shape (n, n_classes) (rows summing to 1), and returns the mean
over the batch. Losses that need more than (logits, target) say so:

- ``needs_index``: ELR keeps a per-sample target, so it also needs each row's dataset index;
- mixup-family losses build their own forward passes in :meth:`Loss.compute` (they mix inputs or
  hidden features), so a trainer always calls ``loss.compute(model, x, target, index=...)`` with a
  model that has ``features(x)`` and ``classifier(h)``.

Randomness (mixing coefficients, partners) comes from the loss's own ``seed``, never global state.

>>> from labelkit.losses import get_loss
>>> get_loss("gce", q=0.7)
GeneralizedCrossEntropy(q=0.7)
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from labelkit.errors import LabelkitError

LOSSES: dict[str, type["Loss"]] = {}


def register(name: str) -> Callable[[type["Loss"]], type["Loss"]]:
    """Class decorator: make a loss available to :func:`get_loss` and ``labelkit train --loss``."""

    def add(cls):
        cls.name = name
        LOSSES[name] = cls
        return cls

    return add


def get_loss(name: str, **params) -> "Loss":
    """Return a new loss from the registry, or raise a user error naming the known ones."""
    if name not in LOSSES:
        raise LabelkitError(f"Unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}.")
    cls = LOSSES[name]
    allowed = cls.param_names()
    unknown = sorted(set(params) - set(allowed) - set(cls.data_params))
    if unknown:
        raise LabelkitError(f"Loss {name!r} has no parameter {unknown[0]!r}; its parameters: "
                            f"{', '.join(allowed) or 'none'}.")
    return cls(**params)


def soft_targets(target: Tensor, n_classes: int) -> Tensor:
    """Return `target` as an (n, n_classes) float matrix: one-hot rows for class indices."""
    if target.dim() == 1:
        return F.one_hot(target.long(), n_classes).to(torch.float32)
    if target.shape[-1] != n_classes:
        raise ValueError(f"soft targets have {target.shape[-1]} columns, logits {n_classes}")
    return target.to(torch.float32)


def soft_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Per-sample ``-Σ_k y_k log softmax(z)_k`` for soft or index targets (shape (n,))."""
    y = soft_targets(target, logits.shape[1])
    return -(y * F.log_softmax(logits.float(), dim=1)).sum(dim=1)


class Loss(nn.Module):
    """Base class: ``forward(logits, target, index=None)`` → scalar mean loss."""

    name = "loss"
    needs_index = False
    data_params: tuple[str, ...] = ()  # filled in by the trainer from the data, not by the user

    @classmethod
    def param_names(cls) -> list[str]:
        import inspect

        return [p for p in inspect.signature(cls.__init__).parameters if p != "self" and p not in cls.data_params]

    def params(self) -> dict:
        return {k: getattr(self, k) for k in self.param_names() if hasattr(self, k)}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.params().items())

    def compute(self, model: nn.Module, x: Tensor, target: Tensor, *, index: Tensor | None = None) -> Tensor:
        """Return the training loss of `model` on a batch (mixup losses override this)."""
        return self(model(x), target, index=index)

    def forward(self, logits: Tensor, target: Tensor, index: Tensor | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# Per-sample losses


@register("ce")
class CrossEntropy(Loss):
    r"""Cross-entropy :math:`-\sum_k y_k \log p_k`, for hard labels or soft labels (e.g. from `relabel`).

    With soft labels this is the loss that trains on the aggregated votes of ``labelkit relabel``
    (``labelkit train --labels soft``). No parameters.
    """

    def __init__(self):
        super().__init__()

    def forward(self, logits, target, index=None):
        return soft_cross_entropy(logits, target).mean()


@register("label_smoothing")
class LabelSmoothing(Loss):
    r"""Cross-entropy against :math:`(1-\varepsilon)\,y + \varepsilon / K`.

    Default ``epsilon=0.1``. ``epsilon=0`` is plain cross-entropy.

    References: Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016.
    """

    def __init__(self, epsilon: float = 0.1):
        super().__init__()
        if not 0 <= epsilon <= 1:
            raise LabelkitError(f"The 'epsilon' parameter of label_smoothing must be in [0, 1]. Got {epsilon!r} instead.")
        self.epsilon = float(epsilon)

    def forward(self, logits, target, index=None):
        K = logits.shape[1]
        y = soft_targets(target, K) * (1 - self.epsilon) + self.epsilon / K
        return soft_cross_entropy(logits, y).mean()


@register("focal")
class FocalLoss(Loss):
    r"""Focal loss :math:`-\sum_k y_k (1-p_k)^\gamma \log p_k` (for one-hot y: :math:`-(1-p_t)^\gamma \log p_t`).

    Default ``gamma=2``; ``gamma=0`` is cross-entropy. The class-weight α of the paper is left to
    the caller (a weighted sampler or subset).

    References: Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
    """

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        if gamma < 0:
            raise LabelkitError(f"The 'gamma' parameter of focal must be >= 0. Got {gamma!r} instead.")
        self.gamma = float(gamma)

    def forward(self, logits, target, index=None):
        logp = F.log_softmax(logits.float(), dim=1)
        y = soft_targets(target, logits.shape[1])
        weight = (1 - logp.exp()).clamp_min(0) ** self.gamma
        return -(y * weight * logp).sum(1).mean()


@register("gce")
class GeneralizedCrossEntropy(Loss):
    r"""Generalized cross-entropy :math:`\sum_k y_k (1 - p_k^q) / q` (one-hot: :math:`(1-p_y^q)/q`).

    A Box-Cox interpolation between cross-entropy (q → 0) and MAE (q = 1, robust to noisy labels).
    Default ``q=0.7`` as in the paper; ``q=0`` is computed as cross-entropy. (The paper's truncated
    variant is not implemented.)

    References: Zhang & Sabuncu, "Generalized Cross Entropy Loss for Training Deep Neural
    Networks with Noisy Labels", NeurIPS 2018.
    """

    def __init__(self, q: float = 0.7):
        super().__init__()
        if not 0 <= q <= 1:
            raise LabelkitError(f"The 'q' parameter of gce must be in [0, 1]. Got {q!r} instead.")
        self.q = float(q)

    def forward(self, logits, target, index=None):
        logp = F.log_softmax(logits.float(), dim=1)
        y = soft_targets(target, logits.shape[1])
        if self.q == 0:
            return -(y * logp).sum(1).mean()
        # (1 - exp(q log p)) / q, with expm1 for accuracy when q is small
        return (y * -torch.expm1(self.q * logp) / self.q).sum(1).mean()


@register("sce")
class SymmetricCrossEntropy(Loss):
    r"""Symmetric cross-entropy :math:`\alpha\,CE(y, p) + \beta\,RCE`, :math:`RCE = -\sum_k p_k \log y_k`.

    :math:`\log 0` is clipped to ``A`` (default −4), so for one-hot labels
    :math:`RCE = -A (1 - p_y)`. Defaults ``alpha=0.1, beta=1.0, A=-4`` (the paper's CIFAR-10 values).

    References: Wang et al., "Symmetric Cross Entropy for Robust Learning with Noisy Labels", ICCV 2019.
    """

    def __init__(self, alpha: float = 0.1, beta: float = 1.0, A: float = -4.0):
        super().__init__()
        self.alpha, self.beta, self.A = float(alpha), float(beta), float(A)

    def forward(self, logits, target, index=None):
        logp = F.log_softmax(logits.float(), dim=1)
        y = soft_targets(target, logits.shape[1])
        ce = -(y * logp).sum(1)
        log_y = torch.where(y > 0, torch.log(y.clamp_min(1e-30)), torch.full_like(y, self.A)).clamp_min(self.A)
        rce = -(logp.exp() * log_y).sum(1)
        return (self.alpha * ce + self.beta * rce).mean()


@register("elr")
class EarlyLearningRegularization(Loss):
    r"""ELR: cross-entropy plus :math:`\lambda \cdot \frac1n\sum_i \log(1 - \langle t_i, p_i\rangle)`.

    :math:`t_i` is a per-sample running average of the model's own (detached, clamped to
    [1e-4, 1 − 1e-4], renormalised) predictions: :math:`t_i \leftarrow \beta t_i + (1-\beta) p_i`,
    updated when the loss is in training mode. Because the targets are per sample, the trainer
    passes each row's dataset ``index``. Defaults ``lam=3, beta=0.7`` (the paper's CIFAR-10 values).

    References: Liu et al., "Early-Learning Regularization Prevents Memorization of Noisy
    Labels", NeurIPS 2020.
    """

    needs_index = True
    data_params = ("n_samples", "n_classes")

    def __init__(self, n_samples: int, n_classes: int, lam: float = 3.0, beta: float = 0.7):
        super().__init__()
        if not 0 <= beta < 1:
            raise LabelkitError(f"The 'beta' parameter of elr must be in [0, 1). Got {beta!r} instead.")
        self.lam, self.beta = float(lam), float(beta)
        self.register_buffer("targets", torch.zeros(n_samples, n_classes))

    def forward(self, logits, target, index=None):
        if index is None:
            raise ValueError("elr needs the sample index of every row")
        p = F.softmax(logits.float(), dim=1).clamp(1e-4, 1 - 1e-4)
        if self.training:
            with torch.no_grad():
                p_hat = p / p.sum(1, keepdim=True)
                self.targets[index] = self.beta * self.targets[index] + (1 - self.beta) * p_hat
        ce = soft_cross_entropy(logits, target)
        reg = torch.log(1 - (self.targets[index] * p).sum(1))
        return (ce + self.lam * reg).mean()


@register("distill")
class SoftTargetDistillation(Loss):
    r"""Distillation from a teacher ensemble: :math:`T^2\,\mathrm{KL}(\bar p_T \,\|\, \mathrm{softmax}(z/T))`.

    The target is the teachers' averaged probabilities :math:`\bar p_T = \frac1M \sum_m p^{(m)}`
    (see :func:`ensemble_soft_targets`); no hard label is used. Default ``temperature=1`` as in
    MEAL V2 (its discriminator term is not implemented).

    References: Shen & Savvides, "MEAL V2: Boosting Vanilla ResNet-50 to 80%+ Top-1 Accuracy on
    ImageNet without Tricks", arXiv:2009.08453, 2020; Hinton et al., "Distilling the Knowledge in a
    Neural Network", 2015.
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise LabelkitError(f"The 'temperature' parameter of distill must be > 0. Got {temperature!r} instead.")
        self.temperature = float(temperature)

    def forward(self, logits, target, index=None):
        T = self.temperature
        p_t = soft_targets(target, logits.shape[1])
        if T != 1:
            p_t = F.softmax(torch.log(p_t.clamp_min(1e-12)) / T, dim=1)
        logq = F.log_softmax(logits.float() / T, dim=1)
        kl = (p_t * (torch.log(p_t.clamp_min(1e-12)) - logq)).sum(1)
        return T * T * kl.mean()


def ensemble_soft_targets(teacher_probs: list[Tensor]) -> Tensor:
    """Return the average of the teachers' probability matrices (the MEAL V2 target)."""
    return torch.stack([p.float() for p in teacher_probs]).mean(0)


# ---------------------------------------------------------------------------------------------
# Mixup family: these build their own forward passes in compute()


class _Mixing(Loss):
    """Shared by the mixup family: α of Beta(α, α), and the loss's own random generators."""

    def __init__(self, alpha: float, seed: int):
        super().__init__()
        if alpha <= 0:
            raise LabelkitError(f"The 'alpha' parameter of {self.name} must be > 0. Got {alpha!r} instead.")
        self.alpha, self.seed = float(alpha), int(seed)
        self._gen = torch.Generator().manual_seed(self.seed)
        self._rng = np.random.default_rng(self.seed)

    def sample_lambda(self) -> float:
        """One λ ~ Beta(α, α) from the loss's own generator."""
        return float(self._rng.beta(self.alpha, self.alpha))

    def permutation(self, n: int, device) -> Tensor:
        return torch.randperm(n, generator=self._gen).to(device)

    def forward(self, logits, target, index=None):
        """Without mixing (evaluation): plain cross-entropy."""
        return soft_cross_entropy(logits, target).mean()


def _mixed_logits(model, x, lam: float, perm: Tensor, layer: int) -> Tensor:
    """Logits of λ·a + (1−λ)·b mixed at the input (layer 0) or at the hidden features (layer 1)."""
    if layer == 0:
        return model(lam * x + (1 - lam) * x[perm])
    h = model.features(x)
    return model.classifier(lam * h + (1 - lam) * h[perm])


@register("mixup")
class MixupCE(_Mixing):
    r"""Mixup: cross-entropy of :math:`f(\lambda x_i + (1-\lambda) x_j)` against :math:`\lambda y_i + (1-\lambda) y_j`.

    :math:`\lambda \sim \mathrm{Beta}(\alpha, \alpha)` once per batch, j a random permutation of the
    batch. ``manifold=True`` mixes at a layer drawn uniformly from {input, hidden features}
    (manifold mixup). Defaults ``alpha=0.2, manifold=False, seed=0``.

    References: Zhang et al., "mixup: Beyond Empirical Risk Minimization", ICLR 2018; Verma et al.,
    "Manifold Mixup: Better Representations by Interpolating Hidden States", ICML 2019.
    """

    def __init__(self, alpha: float = 0.2, manifold: bool = False, seed: int = 0):
        super().__init__(alpha, seed)
        self.manifold = bool(manifold)

    def compute(self, model, x, target, *, index=None):
        y = soft_targets(target, model.n_classes)
        lam, perm = self.sample_lambda(), self.permutation(len(x), x.device)
        layer = int(torch.randint(2, (), generator=self._gen)) if self.manifold else 0
        logits = _mixed_logits(model, x, lam, perm, layer)
        return soft_cross_entropy(logits, lam * y + (1 - lam) * y[perm]).mean()


def _mixed_targets(y: Tensor, lam: float, perm: Tensor) -> Tensor:
    """The mixed label :math:`\\lambda y_i + (1-\\lambda) y_{\\pi(i)}` of every row."""
    return lam * y + (1 - lam) * y[perm]


# A mixed label whose largest entry is 1 (within float error) is still one-hot: both samples
# have the same class, so the mix carries no ranking or decoupling signal.
_ONE_HOT_TOL = 1e-6


@register("rankmixup_mrl")
class RankMixupMRL(_Mixing):
    r"""RankMixup's mixup-based ranking loss (MRL): cross-entropy on the raw samples plus
    :math:`w \cdot \frac1n \sum_i s_i \max(0,\; \max_k \tilde z_{ik} - \max_k z_{ik} + m)`.

    :math:`z_i` are the logits of the raw sample :math:`x_i`, :math:`\tilde z_i` those of
    :math:`\lambda x_i + (1-\lambda) x_{\pi(i)}` (one :math:`\lambda \sim \mathrm{Beta}(\alpha, \alpha)`
    per batch, π a random permutation): a mixed sample should score its top class lower than
    the raw one by a margin m. As in the authors' code, the ranking compares top *logits* (their
    confidence variant is unused; the margin, 2 on CIFAR, is on the logit scale), and a pair whose
    mixed label :math:`\lambda y_i + (1-\lambda) y_{\pi(i)}` is still one-hot (same class:
    :math:`s_i = 0`) adds nothing to the hinge but counts in the mean. Defaults ``alpha=2,
    margin=2, weight=0.1`` (the authors' CIFAR-10 settings).

    References: Noh et al., "RankMixup: Ranking-Based Mixup Training for Network Calibration",
    ICCV 2023.
    """

    def __init__(self, alpha: float = 2.0, margin: float = 2.0, weight: float = 0.1, seed: int = 0):
        super().__init__(alpha, seed)
        self.margin, self.weight = float(margin), float(weight)

    def ranking_term(self, raw_logits: Tensor, mixed_logits: Tensor, mixed_target: Tensor) -> Tensor:
        """Mean over the batch of the masked hinge on top logits (see the class docstring)."""
        diff = mixed_logits.float().max(1).values - raw_logits.float().max(1).values
        counted = mixed_target.max(1).values < 1 - _ONE_HOT_TOL
        return (counted * F.relu(diff + self.margin)).mean()

    def compute(self, model, x, target, *, index=None):
        y = soft_targets(target, model.n_classes)
        lam, perm = self.sample_lambda(), self.permutation(len(x), x.device)
        raw = model(x)
        mixed = model(lam * x + (1 - lam) * x[perm])
        return (soft_cross_entropy(raw, target).mean()
                + self.weight * self.ranking_term(raw, mixed, _mixed_targets(y, lam, perm)))


def ndcg(gains: Tensor, relevance: Tensor) -> Tensor:
    r"""RankMixup's M-NDCG per row: :math:`\min(DCG/IDCG,\; IDCG/DCG)`.

    The columns (raw sample first, then its mixed versions) are put in decreasing `relevance`
    order (stable, so the raw sample, relevance 1, stays first);
    :math:`DCG = \sum_r g_{(r)} / \log_2(r + 1)` sums the `gains` (top-class confidences) and
    :math:`IDCG = \sum_r \rho_{(r)} / \log_2(r + 1)` the relevances (largest label coefficients) in
    that order. It is 1 when the discounted confidences add up to the discounted coefficients
    and falls the further they are apart, in either direction; differentiable in `gains`.
    """
    m = gains.shape[1]
    discount = 1 / torch.log2(torch.arange(2, m + 2, device=gains.device, dtype=torch.float32))
    order = torch.argsort(relevance, dim=1, descending=True, stable=True)
    dcg = (gains.gather(1, order) * discount).sum(1)
    idcg = (relevance.gather(1, order) * discount).sum(1)
    return torch.minimum(dcg / idcg, idcg / dcg)


@register("rankmixup_mndcg")
class RankMixupMNDCG(_Mixing):
    r"""RankMixup's M-NDCG loss: cross-entropy on the raw samples plus :math:`w\,(1 - \text{M-NDCG})`.

    Each sample x gets ``n_mix`` mixed versions, each with its own
    :math:`\lambda_m \sim \mathrm{Beta}(\alpha, \alpha)` and permutation. Its list holds the raw
    sample (relevance :math:`\max_k y_k`, 1 for a hard label) and the mixed versions (relevance
    :math:`\max_k \tilde y_{mk}`, the largest coefficient of the mixed label: :math:`\max(\lambda_m,
    1-\lambda_m)`, or 1 when both samples share a class); the gains are the top-class confidences.
    M-NDCG compares the discounted sums of both (see :func:`ndcg`), so confidences are pulled
    towards the mixing coefficients, as in the authors' code. Defaults ``alpha=2, n_mix=3,
    weight=0.1`` (the authors' CIFAR-10 settings).

    References: Noh et al., "RankMixup: Ranking-Based Mixup Training for Network Calibration",
    ICCV 2023.
    """

    def __init__(self, alpha: float = 2.0, n_mix: int = 3, weight: float = 0.1, seed: int = 0):
        super().__init__(alpha, seed)
        if int(n_mix) < 1:
            raise LabelkitError(f"The 'n_mix' parameter of rankmixup_mndcg must be an int in the range [1, inf). "
                                f"Got {n_mix!r} instead.")
        self.n_mix, self.weight = int(n_mix), float(weight)

    def compute(self, model, x, target, *, index=None):
        y = soft_targets(target, model.n_classes)
        raw = model(x)
        confs, rels = [F.softmax(raw.float(), 1).max(1).values], [y.max(1).values]
        for _ in range(self.n_mix):
            lam, perm = self.sample_lambda(), self.permutation(len(x), x.device)
            mixed = model(lam * x + (1 - lam) * x[perm])
            confs.append(F.softmax(mixed.float(), 1).max(1).values)
            rels.append(_mixed_targets(y, lam, perm).max(1).values)
        score = ndcg(torch.stack(confs, 1), torch.stack(rels, 1))
        return soft_cross_entropy(raw, target).mean() + self.weight * (1 - score).mean()


@register("decoupled_mixup")
class DecoupledMixup(_Mixing):
    r"""Decoupled Mixup: mixup cross-entropy plus η times the decoupled regulariser
    :math:`-\log \phi(z)_{a \setminus b} - \log \phi(z)_{b \setminus a}`, where
    :math:`\phi(z)_{a \setminus b} = e^{z_a} / \sum_{k \ne b} e^{z_k}` is the softmax of class a
    with the other mixed class b removed.

    Each mixed class is predicted without competing with its partner, and both terms have
    weight η whatever λ is, so hard mixed samples (small λ) still push both classes up. A pair
    whose mixed label is one-hot (a = b, or λ within 1e-3 of 0 or 1) gets no regulariser, only
    the cross-entropy, as in the authors' code. Labels are the hard classes a = argmax y_i,
    b = argmax y_j. Defaults ``alpha=1, eta=0.1``.

    References: Liu et al., "Harnessing Hard Mixed Samples with Decoupled Regularizer",
    NeurIPS 2023 (arXiv:2203.10761).
    """

    # The authors count a label entry as present above 1e-3, so λ that close to 0 or 1 is one-hot.
    lam_eps = 1e-3

    def __init__(self, alpha: float = 1.0, eta: float = 0.1, seed: int = 0):
        super().__init__(alpha, seed)
        self.eta = float(eta)

    @staticmethod
    def regularizer(logits: Tensor, a: Tensor, b: Tensor) -> Tensor:
        """Per-row decoupled regulariser; 0 on rows where a = b."""
        z = logits.float()
        rows = torch.arange(len(z), device=z.device)
        two = a != b

        def log_phi(c, other):
            drop = z.clone()
            drop[rows, other] = torch.where(two, torch.full_like(z[rows, other], -math.inf), z[rows, other])
            return z[rows, c] - torch.logsumexp(drop, 1)

        return torch.where(two, -(log_phi(a, b) + log_phi(b, a)), torch.zeros_like(z[:, 0]))

    def compute(self, model, x, target, *, index=None):
        y = soft_targets(target, model.n_classes)
        lam, perm = self.sample_lambda(), self.permutation(len(x), x.device)
        logits = model(lam * x + (1 - lam) * x[perm])
        mce = soft_cross_entropy(logits, _mixed_targets(y, lam, perm))
        if min(lam, 1 - lam) <= self.lam_eps:
            return mce.mean()
        a = y.argmax(1)
        return (mce + self.eta * self.regularizer(logits, a, a[perm])).mean()


def cmixup_partner_probs(y: Tensor, bandwidth: float) -> Tensor:
    r"""C-Mixup's sampling matrix :math:`P(j \mid i) \propto \exp(-\lVert y_i - y_j\rVert^2 / 2\sigma^2)`.

    j runs over every row, i itself included (distance 0, the largest weight), as in the authors'
    kernel-density rates. `y` is (n,) or (n, d) (regression targets, or soft labels); rows of the
    result sum to 1. Cost O(n² d): call it on a batch, not a dataset.
    """
    y = y.float().reshape(len(y), -1)
    d2 = torch.cdist(y, y).pow(2)
    return torch.softmax(-d2 / (2 * bandwidth ** 2), dim=1)


@register("cmixup")
class CMixup(_Mixing):
    r"""C-Mixup: mixup whose partner j for sample i is drawn with probability
    :math:`\propto \exp(-\lVert y_i - y_j \rVert^2 / 2\sigma^2)` (see :func:`cmixup_partner_probs`),
    so only examples with similar labels are mixed.

    One :math:`\lambda \sim \mathrm{Beta}(\alpha, \alpha)` per batch; each row draws its partner
    independently (with replacement), i itself included, so some rows are left unmixed. Partners
    come from the batch, as in the authors' per-batch variant (their default draws from the
    whole training set through an N × N matrix, which does not scale).
    Written for regression (``criterion="mse"``: targets (n,) or (n, d), model outputs the same
    width); ``criterion="soft_ce"`` applies the same sampling to soft classification labels.
    Defaults ``alpha=2, bandwidth=1, criterion="soft_ce"``.

    References: Yao et al., "C-Mixup: Improving Generalization in Regression", NeurIPS 2022.
    """

    def __init__(self, alpha: float = 2.0, bandwidth: float = 1.0, criterion: str = "soft_ce", seed: int = 0):
        super().__init__(alpha, seed)
        if criterion not in ("mse", "soft_ce"):
            raise LabelkitError(f"The 'criterion' parameter of cmixup must be 'mse' or 'soft_ce'. Got {criterion!r} instead.")
        if bandwidth <= 0:
            raise LabelkitError(f"The 'bandwidth' parameter of cmixup must be > 0. Got {bandwidth!r} instead.")
        self.bandwidth, self.criterion = float(bandwidth), criterion

    def partners(self, y: Tensor) -> Tensor:
        probs = cmixup_partner_probs(y.cpu(), self.bandwidth)
        return torch.multinomial(probs, 1, generator=self._gen).squeeze(1).to(y.device)

    def forward(self, logits, target, index=None):
        if self.criterion == "mse":
            return F.mse_loss(logits.float().reshape(target.shape), target.float())
        return soft_cross_entropy(logits, target).mean()

    def compute(self, model, x, target, *, index=None):
        y = target.float() if self.criterion == "mse" else soft_targets(target, model.n_classes)
        lam, j = self.sample_lambda(), self.partners(y)
        out = model(lam * x + (1 - lam) * x[j])
        return self(out, lam * y + (1 - lam) * y[j])
