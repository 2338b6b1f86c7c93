"""Scaffolding shared by the task modules' out-of-sample probes (no verb imports here)."""

from __future__ import annotations

import numpy as np

from labelkit.errors import LabelkitError, check_in_range


def probe_training_rows(embeddings, holdout, n: int, *, n_folds: int, max_selection_rows: int, caller: str,
                        rows_word: str, probe_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (holdout mask, training rows, float32 embeddings) for a `n_folds`-fold probe over `n` rows.

    Checks `n_folds` (>= 2) and `max_selection_rows` (>= 2 × n_folds) as parameters of `caller`,
    and raises a user error when fewer than 2 × n_folds rows are not held out:
    ``"Only <count> <rows_word> are not held out; <probe_name> needs at least <2 × n_folds>."``
    """
    check_in_range(n_folds, "n_folds", caller, low=2, kind="an int")
    check_in_range(max_selection_rows, "max_selection_rows", caller, low=2 * n_folds, kind="an int")
    holdout = np.zeros(n, bool) if holdout is None else np.asarray(holdout, bool)
    train = np.flatnonzero(~holdout)
    if len(train) < 2 * n_folds:
        raise LabelkitError(f"Only {len(train)} {rows_word} are not held out; {probe_name} needs at least "
                            f"{2 * n_folds}.")
    return holdout, train, np.asarray(embeddings, np.float32)
