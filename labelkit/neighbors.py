"""Nearest neighbours of every row: the shared input of duplicates, outliers and neighbour evidence."""

from __future__ import annotations

import numpy as np

from labelkit.errors import check_in_range


def find_nearest_neighbors(embeddings: np.ndarray, *, k: int = 10, device: str = "cpu",
                           max_block_bytes: int = 256 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Return (indices, cosine similarities), each of shape (n_samples, k), of every row's k nearest
    other rows, most similar first.

    Exact brute force in row blocks, so memory is O(block × n) whatever n is: 1M × 512 needs
    about 256 MB of scratch besides the embeddings.
    """
    import torch

    n = len(embeddings)
    k = int(min(k, n - 1))
    check_in_range(k, "k", "find_nearest_neighbors", low=1, kind="an int")
    E = torch.nn.functional.normalize(torch.as_tensor(np.asarray(embeddings, np.float32), device=device), dim=1)
    if device.startswith("cuda"):
        E = E.half()
    block = max(1, min(n, max_block_bytes // (4 * n)))
    idx_out = np.empty((n, k), dtype=np.int64)
    sim_out = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, block):
        stop = min(n, start + block)
        S = E[start:stop] @ E.T
        S[torch.arange(stop - start), torch.arange(start, stop)] = -2.0  # never your own neighbour
        sim, idx = torch.topk(S.float(), k, dim=1)
        idx_out[start:stop], sim_out[start:stop] = idx.cpu().numpy(), sim.cpu().numpy()
    return idx_out, np.clip(sim_out, -1.0, 1.0)


def get_outlier_scores(neighbor_sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (outlier_score in (0, 1], lower is more atypical; is_outlier mask).

    The score is exp(-d / median(d)) of d, the mean cosine distance to the k nearest neighbours;
    a row is flagged when d is beyond Tukey's far-out fence, Q3 + 3·IQR.
    """
    d = np.maximum(1.0 - neighbor_sims.mean(1), 0.0)
    scale = float(np.median(d)) or 1e-12
    q1, q3 = np.percentile(d, [25, 75])
    return np.exp(-d / scale), d > q3 + 3 * (q3 - q1)
