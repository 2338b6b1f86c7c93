"""The pixel path without torch: device resolution, the pixel featurizer and CPU exact neighbours (issue 20).

Importing torch costs about 2 s, more than embedding thousands of small images; a pixel-baseline
audit on a CPU must not pay it.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelkit.embed import PixelFeaturizer
from labelkit.errors import LabelkitError
from labelkit.features import resolve_device
from labelkit.neighbors import _exact, find_nearest_neighbors


def write_images(root: Path, n_per_class: int = 4, seed: int = 0) -> list[Path]:
    """Write seeded random PNGs in two class folders, in the modes open_rgb converts (L, RGBA, P, RGB)."""
    rng = np.random.default_rng(seed)
    paths = []
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            size = (int(rng.integers(8, 40)), int(rng.integers(8, 40)))
            rgba = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8), "RGBA")
            im = [rgba.convert("L"), rgba, rgba.convert("RGB").convert("P"), rgba.convert("RGB")][i % 4]
            paths.append(root / c / f"{i}.png")
            im.save(paths[-1])
    return paths


def old_pixels(path: Path, size: int) -> np.ndarray:
    """The pixel vector as the torch-based featurizer computed it (RGB, bicubic, centred, unit norm)."""
    arr = np.asarray(Image.open(path).convert("RGB").resize((size, size), resample=3), np.float32).reshape(-1)
    arr = arr - arr.mean()
    norm = float(np.linalg.norm(arr))
    return arr / norm if norm > 0 else arr


def broken_png(good: bytes) -> bytes:
    """Return `good` with its pixel data replaced by zeros: chunk CRCs check out, zlib does not."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return good[:33] + chunk(b"IDAT", bytes(50)) + chunk(b"IEND", b"")


def test_pixel_ingest_embed_and_cpu_neighbours_never_import_torch(tmp_path):
    write_images(tmp_path / "src")
    script = f"""
import json, sys
import labelkit.features as features
from labelkit.embed import embed
from labelkit.ingest import ingest
from labelkit.neighbors import find_nearest_neighbors
from labelkit.workspace import Workspace

ingest({str(tmp_path / "src")!r}, {str(tmp_path / "ws")!r})
result = embed({str(tmp_path / "ws")!r}, model="pixels", device="auto")
_, _, X = features.load_workspace_embeddings(Workspace({str(tmp_path / "ws")!r}))
idx, _ = find_nearest_neighbors(X, k=3, device=features.resolve_device("cpu"))
features._GPU_DRIVER_FILES = ("{tmp_path}/no-such-driver",)  # as on a machine without a GPU driver
print(json.dumps({{"rows": result.rows, "failed": result.failed, "auto": features.resolve_device("auto"),
                  "neighbours": idx.shape, "torch": "torch" in sys.modules}}))
"""
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"rows": 8, "failed": 0, "auto": "cpu",
                                                        "neighbours": [8, 3], "torch": False}


def test_resolve_device_checks_the_name_and_asks_torch_once_it_is_imported():
    with pytest.raises(LabelkitError, match=r"^The 'device' parameter of embed must be one of auto, cpu, cuda\. "
                                            r"Got 'tpu' instead\.$"):
        resolve_device("tpu")
    import torch

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(LabelkitError, match=r"^--device cuda was requested but no CUDA GPU is available; "
                                                r"use --device cpu or auto\.$"):
            resolve_device("cuda")


@pytest.mark.parametrize("size, batch_size, workers", [(16, 3, 2), (7, 64, 0), (16, 1, 1)])
def test_pixel_vectors_equal_the_old_formula_in_order_across_batches(tmp_path, size, batch_size, workers):
    paths = write_images(tmp_path, n_per_class=5)
    batches = list(PixelFeaturizer(size).image_batches([str(p) for p in paths], batch_size=batch_size,
                                                       workers=workers, with_errors=True))
    assert [len(e) for e, _, _ in batches] == [min(batch_size, 10 - i) for i in range(0, 10, batch_size)]
    emb = np.concatenate([e for e, _, _ in batches])
    assert emb.dtype == np.float32 and emb.shape == (10, 3 * size * size)
    assert np.array_equal(emb, np.stack([old_pixels(p, size) for p in paths]))  # bit for bit
    assert all(ok.all() for _, ok, _ in batches) and [w for _, _, ws in batches for w in ws] == [""] * 10


def test_a_damaged_png_fails_its_row_only(tmp_path):
    paths = write_images(tmp_path, n_per_class=3)
    paths[4].write_bytes(broken_png(paths[4].read_bytes()))
    (tmp_path / "gone.png").write_text("not an image")
    paths.append(tmp_path / "gone.png")
    batches = list(PixelFeaturizer().image_batches([str(p) for p in paths], batch_size=4, workers=2,
                                                   with_errors=True))
    emb = np.concatenate([e for e, _, _ in batches])
    ok = np.concatenate([o for _, o, _ in batches])
    errors = [w for _, _, ws in batches for w in ws]
    assert ok.tolist() == [True] * 4 + [False, True, False]
    assert errors == [""] * 4 + ["OSError: broken data stream when reading image file", "",
        f"UnidentifiedImageError: cannot identify image file '{tmp_path / 'gone.png'}'"]
    assert not emb[~ok].any()
    assert np.array_equal(emb[ok], np.stack([old_pixels(p, 16) for p, good in zip(paths, ok) if good]))
    two = list(PixelFeaturizer().image_batches([str(p) for p in paths], batch_size=4, workers=2))
    assert [len(t) for t in two] == [2, 2] and [len(e) for e, _ in two] == [4, 3] and np.array_equal(np.concatenate([e for e, _ in two]), emb)


@pytest.mark.parametrize("n, k, block_rows", [(600, 7, 37), (300, 7, 300), (50, 49, 50), (2, 1, 1)])
def test_exact_neighbours_on_cpu_equal_brute_force(n, k, block_rows):
    rng = np.random.default_rng(n)
    X = rng.standard_normal((n, 16)).astype(np.float32) * rng.uniform(0.1, 10, (n, 1)).astype(np.float32)
    idx, sim = _exact(X, k, "cpu", 12 * n * block_rows, None)
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    S = U @ U.T
    np.fill_diagonal(S, -np.inf)
    truth = np.argsort(-S, axis=1, kind="stable")[:, :k]
    assert idx.dtype == np.int64 and sim.dtype == np.float32
    assert np.array_equal(idx, truth)
    assert np.allclose(sim, np.take_along_axis(S, truth, 1), atol=1e-6)


def test_exact_neighbours_order_ties_by_row_index_and_report_each_block():
    X = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [1, 0]], np.float32)  # rows 0, 1, 2, 4 are copies
    seen = []
    idx, sim = find_nearest_neighbors(X, k=3, max_block_bytes=12 * 5 * 2, progress=lambda d, t: seen.append((d, t)))
    assert idx[[0, 1, 2, 4]].tolist() == [[1, 2, 4], [0, 2, 4], [0, 1, 4], [0, 1, 2]]
    # Row 3 is equally far from all four: any three of them, in row order (which three is a tie).
    assert set(idx[3]) < {0, 1, 2, 4} and idx[3].tolist() == sorted(idx[3])
    assert np.allclose(sim[[0, 1, 2, 4]], 1.0) and np.allclose(sim[3], 0.0)
    assert seen == [(5, 5)]  # one block: blocks are whole tiles of EXACT_TILE_ROWS rows
    seen = []
    find_nearest_neighbors(np.random.default_rng(0).standard_normal((600, 4)).astype(np.float32), k=3,
                           max_block_bytes=12 * 600 * 300, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(256, 600), (512, 600), (600, 600)]


def test_resolve_device_asks_torch_when_told_to_and_keeps_cpu_cpu():
    """`ask_torch` (the approximate-search path, which imports torch anyway) asks torch; 'cpu' stays 'cpu'."""
    code = ("import sys; from labelkit.features import resolve_device; "
            "print(resolve_device('cpu', ask_torch=True), resolve_device('auto', ask_torch=True) in ('cpu', 'cuda'), "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["cpu", "True", "True"]


def test_exact_blocks_give_the_same_bits_whatever_the_block_size():
    """The Ray engine cuts exact blocks differently from the local one; the neighbours and their
    similarities must be the same bits (FAISS gets the same tiles either way)."""
    from labelkit.neighbors import exact_block, exact_block_rows, normalized_rows

    rng = np.random.default_rng(3)
    E = normalized_rows(rng.standard_normal((1000, 64)).astype(np.float32))
    E[700] = E[10]  # an exact copy: a tie the two cuts must break the same way
    whole = exact_block(E, 0, 1000, 9)
    for rows in (exact_block_rows(12 * 1000 * 300, 1000), exact_block_rows(1 << 30, 1000, cap=300)):
        parts = [exact_block(E, s, min(1000, s + rows), 9) for s in range(0, 1000, rows)]
        assert np.array_equal(np.concatenate([p[0] for p in parts]), whole[0])
        assert np.array_equal(np.concatenate([p[1] for p in parts]), whole[1])
