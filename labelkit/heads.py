"""The torch classifier/regressor head that ``train`` and the task modules fit, and its probabilities."""

from __future__ import annotations

import numpy as np

HEADS = ("linear", "mlp")


def head_class():
    """Return the ``Head`` module class (built on first use so that importing labelkit needs no torch)."""
    import torch
    from torch import nn

    class Head(nn.Module):
        """Standardise, then linear, or Linear → ReLU → Linear; `features` / `classifier` split for mixup."""

        def __init__(self, d_in: int, n_classes: int, *, hidden: int = 0, dropout: float = 0.0):
            super().__init__()
            self.n_classes, self.hidden = n_classes, hidden
            self.register_buffer("mean", torch.zeros(d_in))
            self.register_buffer("scale", torch.ones(d_in))
            self.body = (nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout)) if hidden
                         else nn.Identity())
            self.classifier = nn.Linear(hidden or d_in, n_classes)

        def features(self, x):
            return self.body((x - self.mean) / self.scale)

        def forward(self, x):
            return self.classifier(self.features(x))

    return Head


def predict_proba(model, X: np.ndarray, *, device: str = "cpu", batch_size: int = 8192) -> np.ndarray:
    """Return softmax probabilities of `model` on the rows of `X`."""
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(X), batch_size):
            xb = torch.as_tensor(X[s:s + batch_size], dtype=torch.float32, device=device)
            out.append(torch.softmax(model(xb).float(), 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.n_classes), np.float32)
