"""The featurizer interface and what every featurizer shares: names, image decoding, quiet model loads."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from labelkit.errors import LabelkitError
from labelkit.features import DEFAULT_NEAR_DUPLICATE_THRESHOLD

MINILM = "minilm-l6-v2"
PIXELS = "pixels"
PIXEL_SIZE = 16
Progress = Callable[[int, "int | None"], None]


def open_rgb(path: str, size: int):
    """Return the image at `path` as RGB, letting JPEG decode at a reduced scale near `size`."""
    from PIL import Image

    im = Image.open(path)
    if im.format == "JPEG":
        im.draft("RGB", (size, size))  # DCT-domain downscale: 2-8x less decoding work
    return im.convert("RGB")


def decode_error(exc: BaseException) -> str:
    """Return a one-line reason for a failed decode, e.g. 'OSError: image file is truncated'."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


@dataclass
class Featurizer:
    """Base: `key` names the embedding table, `dim` its width, `warning` is shown loudly."""

    # Cosine similarity at which `issues` calls two rows near-duplicates with this embedder
    # (`issues --dup-threshold` overrides it); measured per embedder, see labelkit/features.py.
    near_duplicate_threshold = DEFAULT_NEAR_DUPLICATE_THRESHOLD

    key: str
    dim: int
    name: str
    pretrained: str | None = None
    device: str = "cpu"
    warning: str | None = None
    info: dict = field(default_factory=dict)

    def image_batches(self, paths, *, batch_size: int, workers: int, with_errors: bool = False):
        """Yield (embeddings, ok mask[, errors]) per batch; see :func:`image_batches`."""
        raise LabelkitError(f"The {self.name} embedder cannot embed images.")

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
        raise LabelkitError(f"The {self.name} embedder cannot embed text; use --model {MINILM} or a CLIP model.")

    def encode_images(self, paths: Sequence[str], *, batch_size: int = 64, workers: int = 0) -> np.ndarray:
        """Return an (n, dim) float32 matrix for the image files (zeros where a file fails)."""
        parts = [e for e, _ in self.image_batches(paths, batch_size=batch_size, workers=workers)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)


@contextlib.contextmanager
def quiet_logs():
    """Silence library log lines and weight-loading progress bars while a model loads."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            yield
    finally:
        root.setLevel(level)
