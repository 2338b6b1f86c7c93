"""open_clip model names, checkpoints and pretrained weights: checked without loading, fetched once.

Online, weights download into the Hugging Face cache with a progress bar; offline (``--offline``,
``HF_HUB_OFFLINE=1``, or an unreachable hub) only the cache is looked at. Every failure is one
line naming what was tried.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from labelkit.embedders.base import MINILM, PIXELS, Progress
from labelkit.errors import LabelkitError


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


def offline_reason(offline: bool = False) -> str | None:
    """Return why downloads are off ('--offline' or 'HF_HUB_OFFLINE=1'), or None when they are allowed."""
    if offline:
        return "--offline"
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return f"HF_HUB_OFFLINE={value}" if value.lower() in ("1", "true", "yes", "on") else None


def first_line(exc: BaseException) -> str:
    """Return 'Type: first line of the message', plus the exception that caused it, if any."""
    text = str(exc).strip()
    line = f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__
    cause = exc.__cause__
    return f"{line}; caused by {first_line(cause)}" if cause is not None and cause is not exc else line


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or Path(value).suffix.lower() in (".pt", ".pth", ".bin", ".safetensors",
                                                                              ".ckpt")


@contextlib.contextmanager
def hub_offline(on: bool = True):
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


def hub_unreachable(timeout: float = 5.0) -> str | None:
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
        return f"{constants.ENDPOINT} is unreachable ({first_line(exc)})"
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
    return fetch_weights(model, tag, offline_reason(offline) or hub_unreachable(), progress)


def fetch_weights(model: str, tag: str, why_off: str | None, progress: Progress | None) -> str:
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
                                f"({first_line(exc)}).") from None
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
                        f"({first_line(last)}).")


def _off_clause(why: str) -> str:
    return why if " is unreachable " in why else f"downloads are off ({why})"


def file_digest(path: Path) -> str:
    """Return a short digest of a checkpoint (size + first and last MiB: cheap for GB files)."""
    h = hashlib.sha1(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:10]
