"""open_clip image and text towers: images decoded on DataLoader workers, fp16 autocast on CUDA.

torch and open_clip are imported inside the functions that use them (``labelkit --help`` and the
pixel path never pay for them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from labelkit.embedders.base import PIXELS, Featurizer, Progress, decode_error, open_rgb, quiet_logs
from labelkit.embedders.weights import (check_clip_options, fetch_weights, file_digest, first_line, hub_offline,
                                        hub_unreachable, offline_reason)
from labelkit.errors import LabelkitError
from labelkit.workspace import model_key


class ImageFiles:
    """A torch map-style dataset of image files → preprocessed tensors (picklable for workers)."""

    def __init__(self, paths: Sequence[str], transform, size: int):
        self.paths, self.transform, self.size = list(paths), transform, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        """Return (tensor, error): error is '' for a decoded image, else why decoding failed."""
        import torch

        try:
            return self.transform(open_rgb(self.paths[i], self.size)), ""
        except Exception as exc:  # a damaged or changed file fails its row, not the run; the reason is kept
            return torch.zeros(self._shape()), decode_error(exc)

    def _shape(self):
        from PIL import Image

        return self.transform(Image.new("RGB", (self.size, self.size))).shape


def image_batches(paths: Sequence[str], transform, size: int, forward, *, device: str,
                  batch_size: int, workers: int, with_errors: bool = False) -> Iterator[tuple]:
    """Yield (embeddings, ok mask) per batch, decoding on DataLoader workers while the model runs.

    With `with_errors`, yield (embeddings, ok mask, errors): `errors` lists each row's decode
    failure ('' where the row decoded).
    """
    from torch.utils.data import DataLoader

    loader = DataLoader(ImageFiles(paths, transform, size), batch_size=batch_size, shuffle=False,
                        num_workers=workers, pin_memory=device.startswith("cuda"),
                        prefetch_factor=4 if workers else None, persistent_workers=False)
    for images, errors in loader:
        images = images.to(device, non_blocking=True)
        ok = np.array([not e for e in errors], dtype=bool)
        yield (forward(images), ok, list(errors)) if with_errors else (forward(images), ok)


class OpenCLIPFeaturizer(Featurizer):
    """open_clip image and text towers; L2-normalised outputs; fp16 autocast on CUDA."""

    def __init__(self, model: str, pretrained: str | None, device: str = "cpu", *, precision: str = "auto",
                 offline: bool = False, progress: Progress | None = None):
        import open_clip
        import torch

        kind = check_clip_options(model, pretrained)
        tag, warning, what = pretrained, None, f"pretrained weights {pretrained!r}"
        hub_off = offline_reason(offline)  # or the hub is unreachable: then the cache only, too
        if kind == "random":
            tag, warning = "random", (f"{model} has RANDOM weights (no --pretrained): its embeddings mean "
                                      "nothing; this is for tests only.")
        elif kind == "file":
            tag, what = f"{Path(pretrained).stem}-{file_digest(Path(pretrained))}", f"checkpoint {pretrained}"
        else:
            hub_off = hub_off or hub_unreachable()
            fetch_weights(model, pretrained, hub_off, progress)
        try:
            # Weights are local by now; offline, open_clip must not reach for the network either.
            with quiet_logs(), hub_offline(hub_off is not None):
                net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained, device=device)
        except Exception as exc:  # a corrupt file, a checkpoint of another architecture
            raise LabelkitError(f"Could not load {what} for {model}: {first_line(exc)}. Pass --pretrained "
                                f"/path/to/checkpoint.pt (a local open_clip checkpoint of {model}), or --model "
                                f"{PIXELS} for the pixel baseline.") from None
        net.eval()
        dim = int(net.text_projection.shape[1] if getattr(net, "text_projection", None) is not None
                  else net.visual.output_dim)
        super().__init__(key=model_key(f"{model}-{tag}"), dim=dim, name=model, pretrained=pretrained,
                         device=device, warning=warning)
        self.model, self.preprocess = net, preprocess
        self.tokenizer = open_clip.get_tokenizer(model)
        self.size = int(getattr(net.visual, "image_size", (224, 224))[0]
                        if isinstance(getattr(net.visual, "image_size", 224), (tuple, list))
                        else getattr(net.visual, "image_size", 224))
        cuda = device.startswith("cuda")
        self.amp_dtype = {"auto": torch.float16, "fp16": torch.float16, "bf16": torch.bfloat16}.get(precision) if cuda else None
        if cuda:
            self.model = self.model.to(memory_format=torch.channels_last)

    def _encode(self, fn, x):
        import torch

        with torch.inference_mode():
            if self.amp_dtype is not None:
                with torch.autocast("cuda", dtype=self.amp_dtype):
                    z = fn(x)
            else:
                z = fn(x)
            z = torch.nn.functional.normalize(z.float(), dim=-1)
        return z.cpu().numpy().astype(np.float32)

    def encode_image_tensor(self, images) -> np.ndarray:
        import torch

        if self.device.startswith("cuda"):
            images = images.contiguous(memory_format=torch.channels_last)
        return self._encode(self.model.encode_image, images)

    def image_batches(self, paths, *, batch_size: int, workers: int, with_errors: bool = False):
        return image_batches(paths, self.preprocess, self.size, self.encode_image_tensor, device=self.device,
                             batch_size=batch_size, workers=workers, with_errors=with_errors)

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[i:i + batch_size])).to(self.device)
            out.append(self._encode(self.model.encode_text, tokens))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
