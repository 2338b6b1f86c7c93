import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ROOT, SAMPLE, TINY_CLIP_CONFIG, one_line
from labelkit.embed import OpenCLIPFeaturizer, embed, load_featurizer
from labelkit.ingest import ingest
from labelkit.workspace import Workspace, read_embeddings


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_clip, tmp_path_factory):
    """A checkpoint of a seeded random-init tiny CLIP, saved by the test: the --pretrained PATH route."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(tiny_clip)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def small_digits(tmp_path_factory):
    """A 200-image slice of the sample digits, ingested."""
    import shutil

    src = tmp_path_factory.mktemp("src") / "digits"
    for k in range(10):
        (src / str(k)).mkdir(parents=True)
        for p in sorted((SAMPLE / "digits" / str(k)).glob("*.png"))[:20]:
            shutil.copy(p, src / str(k) / p.name)
    ws = tmp_path_factory.mktemp("ws") / "ws"
    ingest(src, ws)
    return ws


def test_pixels_embedding_is_complete_and_standardised(digits_ws):
    ids, X = read_embeddings(Workspace(digits_ws).embeddings_path("pixels-16-std"))
    items = Workspace(digits_ws).read_items()
    assert ids == items["id"].tolist() and X.shape == (1797, 768)
    assert np.allclose(X.mean(1), 0, atol=1e-5) and np.allclose(np.linalg.norm(X, axis=1), 1, atol=1e-4)


def test_second_run_is_a_noop_that_says_so(cli, digits_copy):
    path = Workspace(digits_copy).embeddings_path("pixels-16-std")
    mtime = path.stat().st_mtime_ns
    code, out, _ = cli("embed", "-w", digits_copy, "--model", "pixels")
    assert code == 0
    assert one_line(out) == "Up to date: 1797 rows already embedded with pixels-16-std; nothing to do."
    assert path.stat().st_mtime_ns == mtime


def test_tiny_clip_towers_give_unit_vectors_of_the_right_dimension(tiny_clip):
    f = OpenCLIPFeaturizer(tiny_clip, None, "cpu")
    assert f.dim == 32 and "RANDOM weights" in f.warning
    T = f.encode_texts(["a photo of a cat", "a photo of a dog", "x"])
    I = f.encode_images([str(p) for p in sorted((SAMPLE / "digits" / "3").glob("*.png"))[:5]])
    for M, n in ((T, 3), (I, 5)):
        assert M.shape == (n, 32) and M.dtype == np.float32
        assert np.allclose(np.linalg.norm(M, axis=1), 1, atol=1e-5)
    assert not np.allclose(T[0], T[1])


def test_checkpoint_path_loads_the_saved_weights(cli, tiny_clip, tiny_checkpoint, small_digits):
    import open_clip

    code, out, err = cli("embed", "-w", small_digits, "--model", tiny_clip, "--pretrained", tiny_checkpoint)
    assert code == 0, err
    key = [p for p in (small_digits / "embeddings").glob("LK-Tiny-tiny-*.parquet")]
    assert len(key) == 1
    ids, X = read_embeddings(key[0])
    # The same weights through open_clip directly give the same vectors.
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(tiny_clip)
    model.eval()
    from PIL import Image

    items = Workspace(small_digits).read_items().set_index("id")
    imgs = torch.stack([preprocess(Image.open(items.loc[i, "image_path"]).convert("RGB")) for i in ids[:8]])
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.encode_image(imgs), dim=-1).numpy()
    assert np.allclose(X[:8], ref, atol=1e-4)
    # A different (random) model gives different vectors: the checkpoint really was loaded.
    other = OpenCLIPFeaturizer(tiny_clip, None, "cpu").encode_images([items.loc[i, "image_path"] for i in ids[:8]])
    assert not np.allclose(other, ref, atol=1e-2)


def test_missing_pretrained_weights_one_line_error(cli, small_digits):
    code, _, err = cli("embed", "-w", small_digits, "--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k")
    assert code == 2
    assert one_line(err) == ("error: Could not load pretrained weights 'laion2b_s34b_b79k' for ViT-B-32: they are not "
                             "in the local cache and downloads are off (HF_HUB_OFFLINE). Pass --pretrained "
                             "/path/to/checkpoint.pt (a local open_clip checkpoint), or --model pixels for the pixel baseline.")


def test_auto_on_images_without_weights_uses_pixels_and_warns_loudly(cli, small_digits):
    f = load_featurizer("auto", modality="image")
    assert f.key == "pixels-16-std" and "PIXEL BASELINE" in f.warning
    code, _, err = cli("embed", "-w", small_digits)
    assert code == 0 and "WARNING: PIXEL BASELINE" in one_line(err)
    warnings = Workspace(small_digits).read_manifest()["warnings"]
    assert any("PIXEL BASELINE" in w["message"] for w in warnings)


def test_killed_run_resumes_and_completes(tiny_clip, tiny_checkpoint, small_digits, tmp_path):
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(small_digits, ws, ignore=shutil.ignore_patterns("embeddings"))
    script = (f"import open_clip, time; open_clip.add_model_config({str(TINY_CLIP_CONFIG)!r})\n"
              "import labelkit.embed as e\n"
              "orig = e.OpenCLIPFeaturizer.encode_image_tensor\n"
              "def slow(self, x):\n    time.sleep(0.3); return orig(self, x)\n"
              "e.OpenCLIPFeaturizer.encode_image_tensor = slow\n"
              f"e.embed({str(ws)!r}, model={tiny_clip!r}, pretrained={str(tiny_checkpoint)!r}, batch_size=8, "
              "chunk_rows=16, workers=0)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    parts_dir = None
    deadline = time.time() + 120
    while time.time() < deadline:
        found = list((ws / "embeddings").glob("*.parts/part-*.parquet")) if (ws / "embeddings").exists() else []
        if len(found) >= 2:
            parts_dir = found[0].parent
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert parts_dir is not None, "the subprocess wrote no chunk in time"
    stored = len(list(parts_dir.glob("part-*.parquet")))
    result = embed(ws, model=tiny_clip, pretrained=str(tiny_checkpoint), batch_size=8, workers=0)
    assert result.cached >= 16 * stored - 16 and result.embedded_now == 200 - result.cached
    assert result.rows == 200 and not parts_dir.exists()
    ids, X = read_embeddings(ws / result.path)
    assert ids == Workspace(ws).read_items()["id"].tolist()
    # Resumed rows equal a clean run's.
    clean = tmp_path / "clean"
    shutil.copytree(small_digits, clean, ignore=shutil.ignore_patterns("embeddings"))
    ref = embed(clean, model=tiny_clip, pretrained=str(tiny_checkpoint), batch_size=8, workers=0)
    assert np.allclose(read_embeddings(clean / ref.path)[1], X, atol=1e-5)


def test_minilm_similarities_are_semantic(text_ws):
    from labelkit.embed import MiniLMFeaturizer

    f = MiniLMFeaturizer()
    a, b, c = f.encode_texts(["The cat sat on the mat.", "A cat was sitting on a rug.",
                              "Quarterly revenue grew by eight percent."])
    assert a @ b > a @ c + 0.3
    ids, X = read_embeddings(Workspace(text_ws).embeddings_path("minilm-l6-v2"))
    assert X.shape == (400, 384)
