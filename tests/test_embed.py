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


def test_missing_pretrained_weights_one_line_error(cli, small_digits, empty_hub_cache):
    before = _files(small_digits)
    code, _, err = cli("embed", "-w", small_digits, "--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k")
    assert code == 2
    assert one_line(err) == ("error: Could not load pretrained weights 'laion2b_s34b_b79k' for ViT-B-32: looked only in "
                             f"the local cache {empty_hub_cache} for laion/CLIP-ViT-B-32-laion2B-s34B-b79K/"
                             "open_clip_pytorch_model.bin because downloads are off (HF_HUB_OFFLINE=1), and it is not "
                             "there.")
    assert _files(small_digits) == before


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


# ---------------------------------------------------------------------------------------------
# Weights the user names load or stop the run; only the default may fall back (issue 21, items 4 and 5)


def _files(root) -> dict:
    """Return {relative path: (size, mtime)} of every file under `root`: a write changes it."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, so weights cached on this machine cannot change a result."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


class LocalHub:
    """A Hugging Face endpoint on 127.0.0.1 that serves one file: a checkpoint the test saved."""

    def __init__(self, repo: str, filename: str, payload: bytes):
        import hashlib
        import http.server
        import threading

        self.requests: list[tuple[str, str]] = []
        hub, sha = self, hashlib.sha256(payload).hexdigest()
        wanted = f"/{repo}/resolve/main/{filename}"

        class Handler(http.server.BaseHTTPRequestHandler):
            def _head(self) -> bool:
                hub.requests.append((self.command, self.path))
                if self.path != wanted:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return False
                self.send_response(200)
                self.send_header("X-Repo-Commit", "0" * 40)
                self.send_header("ETag", f'"{sha}"')
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                return True

            def do_HEAD(self):
                self._head()

            def do_GET(self):
                if self._head():
                    self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def downloads(self) -> list[str]:
        return [path for method, path in self.requests if method == "GET" and "/resolve/" in path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def online_hub(tiny_clip, tiny_checkpoint, empty_hub_cache, monkeypatch):
    """The default CLIP is the tiny model with a pretrained tag whose weights a local hub serves.

    Only where huggingface_hub sends its requests changes (its endpoint constants, which it reads
    from HF_ENDPOINT at import); open_clip's model creation and loading and huggingface_hub's
    download, cache and progress code run as they do for a user.
    """
    import open_clip
    import open_clip.pretrained
    from huggingface_hub import constants

    import labelkit.embed

    hub = LocalHub("labelkit/lk-tiny", "open_clip_pytorch_model.bin", tiny_checkpoint.read_bytes())
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, tiny_clip,
                        {"lktest": open_clip.pretrained._pcfg(hf_hub="labelkit/lk-tiny/")})
    monkeypatch.setattr(labelkit.embed, "DEFAULT_CLIP", (tiny_clip, "lktest"))
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield hub
    hub.close()


def test_auto_downloads_the_default_clip_with_progress_then_uses_the_cache(online_hub, tiny_checkpoint, small_digits):
    seen = []
    f = load_featurizer("auto", device="cpu", progress=lambda done, total, what: seen.append((done, total, what)))
    assert f.key == "LK-Tiny-lktest" and f.warning is None
    assert online_hub.downloads() == ["/labelkit/lk-tiny/resolve/main/open_clip_pytorch_model.bin"]
    size = tiny_checkpoint.stat().st_size
    assert seen and seen[-1] == (size, size, "Downloading LK-Tiny lktest")
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    saved = torch.load(tiny_checkpoint)["state_dict"]
    loaded = f.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())  # the served weights, not a random init
    # Downloaded once: offline now, the default still loads, from the cache, without asking the hub.
    requests = len(online_hub.requests)
    again = load_featurizer("auto", device="cpu", offline=True)
    assert again.key == "LK-Tiny-lktest" and again.warning is None and len(online_hub.requests) == requests
    result = embed(small_digits, offline=True)
    assert result.key == "LK-Tiny-lktest" and result.rows == 200 and result.warning is None


@pytest.mark.parametrize("how", ["--offline", "HF_HUB_OFFLINE=1"])
def test_auto_offline_falls_back_to_pixels_and_says_what_was_tried(online_hub, empty_hub_cache, monkeypatch, how):
    if how != "--offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    f = load_featurizer("auto", device="cpu", offline=how == "--offline")
    assert f.key == "pixels-16-std"
    assert f.warning == (
        "PIXEL BASELINE: images are embedded as 16x16 pixels because the default CLIP weights (LK-Tiny / lktest) did "
        "not load. Could not load pretrained weights 'lktest' for LK-Tiny: looked only in the local cache "
        f"{empty_hub_cache} for labelkit/lk-tiny/open_clip_pytorch_model.bin because downloads are off ({how}), and "
        "it is not there. Label-error detection on pixels is far weaker than on CLIP features; run once with network "
        "access (without --offline / HF_HUB_OFFLINE=1) to download them, or pass --model LK-Tiny --pretrained "
        "/path/to/checkpoint.pt.")
    assert online_hub.downloads() == []


def test_auto_with_an_unreachable_hub_falls_back_naming_the_socket_error(online_hub, empty_hub_cache, monkeypatch):
    import socket

    from huggingface_hub import constants

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    f = load_featurizer("auto", device="cpu")
    assert f.key == "pixels-16-std"
    assert (f"because http://127.0.0.1:{port} is unreachable (ConnectionRefusedError: [Errno 111] Connection refused), "
            "and it is not there. ") in f.warning
    assert "downloads are off" not in f.warning and "fix the connection and run again" in f.warning


def test_auto_with_a_named_pretrained_never_falls_back(cli, small_digits, empty_hub_cache):
    import open_clip

    before = _files(small_digits)
    code, _, err = cli("embed", "-w", small_digits, "--pretrained", "nosuchtag")
    assert code == 2
    tags = ", ".join(open_clip.list_pretrained_tags_by_model("ViT-B-32"))
    assert one_line(err) == (f"error: Unknown pretrained tag 'nosuchtag' for ViT-B-32 (known tags: {tags}); pass a "
                             "known tag or --pretrained /path/to/checkpoint.pt.")
    assert _files(small_digits) == before


@pytest.mark.parametrize("case", ["missing file", "corrupt file", "unknown model", "unknown tag", "pixels size"])
def test_named_model_or_weights_that_cannot_load_exit_2_and_write_nothing(cli, tiny_clip, small_digits, tmp_path,
                                                                          case):
    missing, corrupt = tmp_path / "nope" / "missing.pt", tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a checkpoint")
    args, message = {
        "missing file": (["--model", tiny_clip, "--pretrained", missing],
                         f"Checkpoint file {missing} (--pretrained) does not exist."),
        "corrupt file": (["--model", tiny_clip, "--pretrained", corrupt],
                         f"Could not load checkpoint {corrupt} for LK-Tiny: it is not a PyTorch (zip or pickle) or "
                         "safetensors file (it starts with b'this is not '). "
                         "Pass --pretrained /path/to/checkpoint.pt (a local open_clip checkpoint of LK-Tiny), or "
                         "--model pixels for the pixel baseline."),
        "unknown model": (["--model", "NoSuchNet-B-32"],
                          "Unknown open_clip model 'NoSuchNet-B-32'; see `python -c \"import open_clip; "
                          "print(open_clip.list_models())\"` (e.g. ViT-B-32), or use --model pixels / minilm-l6-v2."),
        "unknown tag": (["--model", tiny_clip, "--pretrained", "laion2b"],
                        "Unknown pretrained tag 'laion2b' for LK-Tiny (open_clip knows no pretrained tags for it); "
                        "pass a known tag or --pretrained /path/to/checkpoint.pt."),
        "pixels size": (["--model", "pixels-x"],
                        "The 'model' parameter of embed must be pixels or pixels-N with N an int in the range "
                        "[1, 256]. Got 'pixels-x' instead."),
    }[case]
    before = _files(small_digits)
    code, out, err = cli("embed", "-w", small_digits, *args)
    assert (code, out) == (2, "")
    assert one_line(err) == "error: " + message
    assert _files(small_digits) == before


def test_audit_checks_a_named_checkpoint_before_ingest_writes(cli, tiny_clip, tmp_path):
    ws = tmp_path / "ws"
    code, _, err = cli("audit", SAMPLE / "digits", "-w", ws, "--model", tiny_clip, "--pretrained", tmp_path / "x.pt")
    assert code == 2 and one_line(err) == f"error: Checkpoint file {tmp_path / 'x.pt'} (--pretrained) does not exist."
    assert not ws.exists()


# ---------------------------------------------------------------------------------------------
# A row that fails to embed keeps its reason (issue 21, item 6)


def _broken_png(good: bytes) -> bytes:
    """Return `good` with its pixel data replaced by zeros: chunk CRCs check out, zlib does not."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return good[:8] + good[8:33] + chunk(b"IDAT", bytes(50)) + chunk(b"IEND", b"")


@pytest.fixture
def broken_rows_ws(tmp_path):
    """12 digit images in 2 classes, ingested; then one PNG that passes ingest's checks but cannot be decoded,
    and one file replaced by text after ingest."""
    import shutil

    src = tmp_path / "src"
    for k in ("0", "1"):
        (src / k).mkdir(parents=True)
        for p in sorted((SAMPLE / "digits" / k).glob("*.png"))[:6]:
            shutil.copy(p, src / k / p.name)
    first = sorted((src / "0").glob("*.png"))[1]
    first.write_bytes(_broken_png(first.read_bytes()))
    ws = tmp_path / "ws"
    result = ingest(src, ws)
    assert result.usable_rows == 12  # the broken PNG is not caught by ingest
    changed = sorted((src / "1").glob("*.png"))[2]
    changed.write_text("not an image any more")
    return ws, Workspace(ws).read_items().set_index("image_path"), first, changed


def test_failed_rows_keep_their_reason_in_the_table_the_cli_and_issues(cli, broken_rows_ws):
    ws, items, broken, changed = broken_rows_ws
    by_path = {str(p): i for p, i in zip(items.index, items["id"])}
    broken_id = next(i for p, i in by_path.items() if p.endswith(f"0/{broken.name}"))
    changed_id = next(i for p, i in by_path.items() if p.endswith(f"1/{changed.name}"))
    changed_path = next(p for p in by_path if p.endswith(f"1/{changed.name}"))

    code, out, err = cli("embed", "-w", ws, "--model", "pixels")
    assert code == 0
    assert "10 rows with pixels-16-std" in one_line(out) and "2 failed to decode" in one_line(out)
    assert "".join(err.split()) == "".join(  # rich wraps long paths mid-word
        f"WARNING: 2 rows could not be embedded (reasons in {ws}/embeddings/pixels-16-std.errors.parquet), first: "
        f"WARNING: {broken_id}: OSError: broken data stream when reading image file "
        f"WARNING: {changed_id}: UnidentifiedImageError: cannot identify image file '{changed_path}'".split())
    import pyarrow.parquet as pq

    errors = pq.read_table(ws / "embeddings" / "pixels-16-std.errors.parquet").to_pylist()
    hashes = dict(zip(items["id"], items["content_hash"]))
    assert errors == [
        {"id": broken_id, "content_hash": hashes[broken_id], "error": "OSError: broken data stream when reading image file"},
        {"id": changed_id, "content_hash": hashes[changed_id],
         "error": f"UnidentifiedImageError: cannot identify image file '{changed_path}'"}]
    ids, X = read_embeddings(ws / "embeddings" / "pixels-16-std.parquet")
    assert len(ids) == 10 and broken_id not in ids and changed_id not in ids
    warnings = [w["message"] for w in Workspace(ws).read_manifest()["warnings"]]
    assert warnings == [f"2 rows could not be embedded (e.g. {broken_id!r}: OSError: broken data stream when reading "
                        "image file; all in embeddings/pixels-16-std.errors.parquet); repair or remove those files and "
                        "run `labelkit ingest` again."]

    code, _, err = cli("issues", "-w", ws)
    assert code == 2
    assert one_line(err) == (
        f"error: 2 usable rows have no embedding in pixels-16-std because they failed to embed, e.g. {broken_id!r}: "
        f"OSError: broken data stream when reading image file (all reasons in {ws}/embeddings/"
        f"pixels-16-std.errors.parquet); repair or remove those files, then run `labelkit ingest` and `labelkit embed "
        f"-w {ws}` again.")

    # Repaired, the row embeds on the next run and the reasons table goes with the failure.
    changed.write_bytes((SAMPLE / "digits" / "1" / changed.name).read_bytes())
    again = embed(ws, model="pixels")
    assert (again.embedded_now, again.failed, again.errors_path) == (1, 1, "embeddings/pixels-16-std.errors.parquet")
    assert [e["id"] for e in pq.read_table(ws / again.errors_path).to_pylist()] == [broken_id]
