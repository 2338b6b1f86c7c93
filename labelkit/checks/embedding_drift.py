"""Embedding drift between splits: can a classifier tell a split's rows from train's?"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from labelkit.checks.base import Check, CheckContext, CheckResult, register
from labelkit.checks.split_leakage import split_codes

MAX_ROWS = 20_000  # rows per domain classifier (train + the other split), drawn at random
N_FOLDS = 5
MIN_ROWS = 2 * N_FOLDS  # per side: fewer and the split is not tested
C_GRID = (0.001, 0.01, 0.1, 1.0)  # inverse L2 penalties tried (nested in each fold), on standardised features
SPECIFIC_ODDS = 9.0  # flag rows the classifier puts at ≥ 9:1 for their own split (P ≥ 0.9)


def domain_classifier_probs(embeddings: np.ndarray, is_other: np.ndarray, groups: np.ndarray, *,
                            rows: np.ndarray | None = None, n_folds: int = N_FOLDS, max_rows: int = MAX_ROWS,
                            seed: int = 0) -> tuple[np.ndarray, float, np.ndarray, float]:
    """Return (out-of-sample P(other split) per row, cross-validated ROC AUC, the rows fit, typical C).

    A logistic regression with balanced class weights, on features standardised within each
    fold, separates the rows of one split (`is_other`) from train's. At most `max_rows` rows (the
    smaller side whole, up to half of them) are fit, with `n_folds`-fold cross-validation; folds
    are drawn by `groups` (content hash codes), so identical rows never sit on both sides of a
    fold. The L2 penalty is chosen inside each outer fold (nested cross-validation): the value of
    :data:`C_GRID` with the best balanced log-loss on one of the fold's training folds, fit on the
    others; the outer fold's model is then refit on all its training folds at that penalty. The
    reported AUC is computed over the outer predictions, so neither the fit nor the penalty ever
    saw the rows it is scored on. A row outside the subsample gets the mean prediction of the
    fold models, none of which saw it. The classifier sees embeddings only, never labels.
    Balanced weights make the odds ``p / (1 - p)`` an estimate of the density ratio
    ``q_other(x) / q_train(x)``, free of the splits' sizes, so ``p = 0.5`` means the row is as
    typical of either split.

    Parameters
    ----------
    embeddings : ndarray of shape (n_total, d)
    is_other : ndarray of bool, shape (n_samples,)
        True for rows of the other split, False for train rows.
    groups : ndarray of int, shape (n_samples,)
        Rows with equal values (the same content) are kept in one fold.
    rows : ndarray of int, shape (n_samples,), optional
        The rows of `embeddings` that `is_other` and `groups` describe (default: all), so that
        two splits of a large matrix are compared without copying it.

    Returns
    -------
    probs : ndarray of float32, shape (n_samples,)
    auc : float
        NaN when the outer predictions hold one side only.
    fit_rows : ndarray of int, shape (n_fit,)
        The positions (into `is_other`) of the subsample the folds were drawn from.
    C : float
        The penalty chosen by most outer folds (the stronger one on a tie).

    References
    ----------
    Lopez-Paz, D. & Oquab, M. (2017). Revisiting classifier two-sample tests. ICLR.
    Rabanser, S., Günnemann, S. & Lipton, Z. (2019). Failing loudly: an empirical study of
    methods for detecting dataset shift. NeurIPS.
    Bickel, S., Brückner, M. & Scheffer, T. (2009). Discriminative learning under covariate
    shift. JMLR 10, 2137–2155.
    Varma, S. & Simon, R. (2006). Bias in error estimation when using cross-validation for model
    selection. BMC Bioinformatics 7, 91.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    n = len(is_other)
    rows = np.arange(n) if rows is None else np.asarray(rows)
    pos, neg = np.flatnonzero(is_other), np.flatnonzero(~is_other)
    n_pos = min(len(pos), max(max_rows // 2, max_rows - len(neg)))
    n_neg = min(len(neg), max_rows - n_pos)
    fit_rows = np.sort(np.r_[rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)])
    y = is_other[fit_rows]
    # Folds by content group, stratified by side: the groups of each side are dealt round-robin
    # in random order, so both sides are split evenly (uneven folds bias held-out AUC below 0.5)
    # and identical rows share a fold. A group on both sides is dealt with the side of its first row.
    _, first, g = np.unique(groups[fit_rows], return_index=True, return_inverse=True)
    side = y[first]
    rank = np.empty(len(first), np.int64)
    for value in (False, True):
        members = np.flatnonzero(side == value)
        rank[rng.permutation(members)] = np.arange(len(members))
    fold = (rank % n_folds)[g]
    X = embeddings[rows[fit_rows]]
    # Balanced weights: each side weighs half, whatever the split sizes.
    weight = np.where(y, 0.5 / max(y.sum(), 1), 0.5 / max((~y).sum(), 1)) * len(y)

    def fit(train_mask, C, model=None):
        # Standardised features: unit-norm embeddings have coordinates of ~1/sqrt(d), at which the
        # penalty would be meaningless; the scaling is fit on the training rows only.
        scaler = StandardScaler().fit(X[train_mask])
        model = model or LogisticRegression(class_weight="balanced", warm_start=True, max_iter=300)
        return scaler, model.set_params(C=C).fit(scaler.transform(X[train_mask]), y[train_mask])

    oof = np.full(len(fit_rows), np.nan, np.float64)
    models, chosen = [], []  # per fold: (mean, scale, coef, intercept); the C it chose
    for f in range(n_folds):
        test = fold == f
        train_part = ~test
        if not test.any() or len(np.unique(y[train_part])) < 2:
            continue
        # The penalty, chosen inside the training folds: fit on all but the next fold, scored on
        # it by balanced log-loss (a proper scoring rule, so the chosen probabilities are the best
        # calibrated; with no drift that is the strongest penalty, p ≈ 0.5). Without both sides
        # on both parts of that split, the strongest penalty.
        inner_val = fold == (f + 1) % n_folds
        inner_train = train_part & ~inner_val
        best = 0
        if len(np.unique(y[inner_train])) == 2 and len(np.unique(y[inner_val])) == 2:
            loss, model = [], None
            for C in C_GRID:  # weakest penalty last, each fit starting from the previous
                scaler, model = fit(inner_train, C, model)
                p = np.clip(model.predict_proba(scaler.transform(X[inner_val]))[:, 1], 1e-7, 1 - 1e-7)
                yv = y[inner_val]
                loss.append(-(weight[inner_val] * np.where(yv, np.log(p), np.log1p(-p))).sum())
            best = int(np.argmin(loss))
        scaler, model = fit(train_part, C_GRID[best])
        oof[test] = model.predict_proba(scaler.transform(X[test]))[:, 1]
        models.append((scaler.mean_, scaler.scale_, model.coef_[0].copy(), float(model.intercept_[0])))
        chosen.append(best)
    probs = np.full(n, np.nan, np.float32)
    probs[fit_rows] = oof
    rest = np.setdiff1d(np.arange(n), fit_rows, assume_unique=True)
    if len(rest) and models:
        # Standardisation folded into the weights: w / scale, b - mean · w / scale (no scaled copy).
        linear = [((coef / scale).astype(np.float32), intercept - float(mean @ (coef / scale)))
                  for mean, scale, coef, intercept in models]
        total = np.zeros(len(rest), np.float64)
        for start in range(0, len(rest), 65536):  # bounded scratch whatever the split size
            chunk = embeddings[rows[rest[start:start + 65536]]]
            for w, b in linear:
                total[start:start + len(chunk)] += 1 / (1 + np.exp(-(chunk @ w + b)))
        probs[rest] = total / len(models)
    scored = ~np.isnan(oof)
    auc = float(roc_auc_score(y[scored], oof[scored])) if len(np.unique(y[scored])) == 2 else float("nan")
    typical = int(np.argmax(np.bincount(chosen, minlength=len(C_GRID)))) if chosen else 0
    return probs, auc, fit_rows, float(C_GRID[typical])


@register
class EmbeddingDrift(Check):
    """A domain classifier per non-train split: cross-validated AUC of telling its rows from
    train's in embedding space (0.5 = no drift), and the rows most typical of one split only."""

    name = "embedding_drift"
    title = "Embedding drift between splits"
    description = ("A classifier on embeddings alone tells a val/test split from train (cross-validated ROC AUC; "
                   "0.5 = indistinguishable); a flagged row is one it puts at 9:1 or more for its own split, "
                   "out of sample.")
    needs = ("split", "embeddings")
    metrics = {"embedding_drift_auc": "largest cross-validated ROC AUC of a train-vs-split classifier on "
                                      "embeddings (0.5 = no drift, 1 = fully separable)"}
    columns = {"split_specificity": "out-of-sample probability the domain classifier gives the row's own split "
                                    "(balanced classes: 0.5 = typical of both)",
               "is_split_specific": "split_specificity ≥ 0.9: at least 9 times likelier in its own split"}
    flag = "is_split_specific"
    score = "split_specificity"
    score_ascending = False
    order = 72

    def run(self, ctx: CheckContext) -> CheckResult:
        names, codes, train, note = split_codes(ctx)
        warnings = [note] if note else []
        emb = ctx.embeddings
        hashes = ctx.items.column("content_hash")
        groups = pc.dictionary_encode(hashes.combine_chunks() if isinstance(hashes, pa.ChunkedArray) else hashes)
        groups = groups.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        groups = np.where(groups >= 0, groups, groups.max(initial=0) + 1 + np.arange(len(groups)))
        is_train = codes == train
        # Train rows are judged against every other split; they keep the smallest P(train): the
        # row counts as train-specific only if no other split has rows like it.
        specificity = np.full(ctx.n, np.nan, np.float32)
        train_spec = np.full(int(is_train.sum()), np.inf, np.float32)
        aucs, rows, used, chosen = {}, [], {}, {}
        for s in range(len(names)):
            if s == train:
                continue
            member = is_train | (codes == s)
            idx = np.flatnonzero(member)
            is_other = codes[idx] == s
            if min(is_other.sum(), (~is_other).sum()) < MIN_ROWS:
                warnings.append(f"Split {names[s]!r} has fewer than {MIN_ROWS} rows (or train does): no drift test.")
                continue
            p, auc, fit_rows, C = domain_classifier_probs(emb, is_other, groups[idx], rows=idx, seed=ctx.seed)
            specificity[idx[is_other]] = p[is_other]
            train_spec = np.minimum(train_spec, 1 - p[~is_other])
            aucs[s], used[s], chosen[s] = auc, len(fit_rows), C
        if aucs:
            specificity[is_train] = train_spec
        flagged = np.nan_to_num(specificity, nan=0.0) >= SPECIFIC_ODDS / (1 + SPECIFIC_ODDS)
        for s in [train, *(s for s in range(len(names)) if s != train)]:
            in_s = codes == s
            rows.append([names[s] + (" (reference)" if s == train else ""), int(in_s.sum()),
                         round(aucs[s], 4) if s in aucs else None, used.get(s), int((flagged & in_s).sum()),
                         round(float(np.nanmean(specificity[in_s])), 4) if (in_s & ~np.isnan(specificity)).any()
                         else None])
        reasons = {}
        for row in np.flatnonzero(flagged).tolist():
            s = int(codes[row])
            versus = names[train] if s != train else "every other split"
            reasons[row] = (f"typical of {names[s]}, not of {versus}: domain classifier gives "
                            f"{specificity[row]:.2f} for {names[s]} (out of sample)")
        measured = [a for a in aucs.values() if not np.isnan(a)]
        return CheckResult(
            columns={"split_specificity": specificity, "is_split_specific": flagged},
            metrics={"embedding_drift_auc": float(max(measured)) if measured else None},
            reasons=reasons,
            details={"train_split": names[train], "auc": {names[s]: a for s, a in aucs.items()},
                     "rows_fit": {names[s]: u for s, u in used.items()}, "n_folds": N_FOLDS,
                     "C": {names[s]: c for s, c in chosen.items()},
                     "flag_threshold": SPECIFIC_ODDS / (1 + SPECIFIC_ODDS)},
            tables=[{"title": f"Domain classifier: each split against '{names[train]}'",
                     "columns": ["split", "rows", "ROC AUC", "rows fit", "split-specific rows", "mean specificity"],
                     "rows": rows}],
            warnings=warnings)
