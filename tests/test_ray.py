"""`--engine ray`: the same tables as the local engine, on a real local Ray cluster (no mocks).

Skipped without the extra (``pip install -e ".[ray]"``), except the test that checks the error
a user gets without it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import ROOT, SAMPLE, one_line
from labelkit.errors import LabelkitError


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def _png(path: Path, value: int, size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8), mode="L").save(path)
    return path


def _items(ws: Path):
    return pq.read_table(ws / "items.parquet")


# ---------------------------------------------------------------------------------------------
# Without the extra


def test_engine_ray_without_ray_exits_2_with_install_command(tmp_path):
    ws = tmp_path / "ws"
    code = ("import sys; sys.modules['ray'] = None; from labelkit.cli import main; "
            f"sys.exit(main(['ingest', {str(SAMPLE / 'digits')!r}, '-w', {str(ws)!r}, '--engine', 'ray']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr) == ('error: --engine ray needs Ray Data, which is not installed; run: pip install '
                                     '"labelkit[ray]" (or pip install "ray[data]>=2.60").')
    assert not ws.exists()  # validated before anything is written


def test_unknown_engine_is_a_parameter_error(cli, tmp_path):
    code, _, err = cli("embed", "-w", tmp_path / "ws", "--engine", "spark")
    assert code == 2
    assert one_line(err) == "error: The 'engine' parameter of embed must be one of local, ray. Got 'spark' instead."


# ---------------------------------------------------------------------------------------------
# On a local cluster


def test_task_map_keeps_order_and_user_errors(ray_cluster):
    from labelkit.engines.ray import task_map

    assert list(task_map(abs, range(-1000, 0), batch_size=37, max_in_flight=3)) == list(range(1000, 0, -1))

    def refuse(x):
        raise LabelkitError(f"row {x} is bad")

    with pytest.raises(LabelkitError, match="row 0 is bad"):
        list(task_map(refuse, range(5)))


def test_ingest_ray_gives_the_local_items_table(ray_cluster, cli, tmp_path):
    from labelkit.ingest import ingest

    data = tmp_path / "data"
    for i in range(30):
        _png(data / ("a" if i % 3 else "b") / f"{i:02d}.png", i)
    (data / "a" / "empty.png").write_bytes(b"")
    big = _png(tmp_path / "big.png", 99, size=(64, 64)).read_bytes()
    (data / "b" / "truncated.png").write_bytes(big[:len(big) // 2])
    table = data / "table.csv"
    table.write_text("image_path,label\n" + "".join(f"{p.relative_to(data).as_posix()},{p.parent.name}\n"
                                                    for p in sorted(data.rglob("*.png")))
                     + "missing.png,a\n../outside.png,b\n")
    for source in (data, table):
        local, remote = tmp_path / f"local-{source.name}", tmp_path / f"ray-{source.name}"
        ingest(source, local)
        code, _, err = cli("ingest", source, "-w", remote, "--engine", "ray")
        assert code == 0, err
        a, b = _items(local), _items(remote)
        assert a.num_rows == (34 if source == table else 32)
        assert a.equals(b)  # every column, row by row
        errors = [e for e in b.column("error").to_pylist() if e]
        assert "empty file (0 bytes)" in errors and any(e.startswith("corrupt image") for e in errors)
        if source == table:
            assert "image file not found: missing.png" in errors
            assert any(e.startswith("image path outside the table's folder") for e in errors)


def test_ingest_ray_on_sample_digits(ray_cluster, tmp_path):
    from labelkit.ingest import ingest

    ingest(SAMPLE / "digits", tmp_path / "local")
    ingest(SAMPLE / "digits", tmp_path / "ray", engine="ray")
    a, b = _items(tmp_path / "local"), _items(tmp_path / "ray")
    assert a.num_rows == 1797 and a.equals(b)


def test_neighbors_ray_equal_local(ray_cluster):
    from labelkit.engines.ray import find_nearest_neighbors as ray_neighbors
    from labelkit.neighbors import find_nearest_neighbors

    rng = np.random.default_rng(0)
    E = rng.standard_normal((700, 24)).astype(np.float32)
    E[5] = E[600] * 3  # a planted duplicate (same direction)
    idx, sim = find_nearest_neighbors(E, k=5)
    # A small scratch budget forces many blocks, i.e. many tasks.
    ridx, rsim = ray_neighbors(E, k=5, max_block_bytes=4 * 700 * 50)
    assert ridx[5, 0] == 600 and ridx[600, 0] == 5 and rsim[5, 0] == pytest.approx(1.0, abs=1e-6)
    assert np.array_equal(idx, ridx)
    assert np.abs(sim - rsim).max() <= 1e-6


def test_neighbors_ray_above_the_exact_limit_use_the_local_ivf_index(ray_cluster):
    """Above the exact-search limit the local engine is approximate; Ray searches the same index."""
    from labelkit.engines.ray import find_nearest_neighbors as ray_neighbors
    from labelkit.neighbors import find_nearest_neighbors

    rng = np.random.default_rng(1)
    centres = rng.standard_normal((20, 32)).astype(np.float32)
    E = centres[rng.integers(0, 20, 3000)] + 0.3 * rng.standard_normal((3000, 32)).astype(np.float32)
    exact, _ = find_nearest_neighbors(E, k=5, exact_max_rows=10_000)
    idx, sim, info = find_nearest_neighbors(E, k=5, exact_max_rows=1000, seed=3, return_info=True)
    assert info["index"] == "faiss.IndexIVFFlat"
    ridx, rsim = ray_neighbors(E, k=5, exact_max_rows=1000, seed=3)
    assert not np.array_equal(ridx, exact)  # approximate: it did not fall back to exact search
    # Same cells and probes; the local engine scores each cell by one BLAS product, FAISS by its own
    # kernel, so similarities agree to float32 rounding and neighbours up to near-ties.
    assert np.allclose(sim, rsim, atol=1e-5)
    same = (np.sort(idx, 1) == np.sort(ridx, 1)).all(1)
    assert same.mean() >= 0.995, same.mean()


@pytest.mark.slow
def test_embed_ray_resumes_and_equals_local(ray_cluster, tmp_path):
    """Half the rows are left in a part from a 'killed' run; Ray embeds only the rest, and the final
    table equals the local engine's, row for row."""
    import pyarrow as pa

    from labelkit.embed import embed
    from labelkit.ingest import ingest
    from labelkit.workspace import embedding_matrix, write_table

    local, remote = tmp_path / "local", tmp_path / "ray"
    ingest(SAMPLE / "digits", local)
    ingest(SAMPLE / "digits", remote, engine="ray")
    ref = embed(local, model="pixels")
    final = local / ref.path
    full = pq.read_table(final)
    parts = remote / Path(ref.path).with_suffix(".parts")
    write_table(full.slice(0, 700), parts / "part-0.parquet")
    result = embed(remote, model="pixels", engine="ray", batch_size=128, chunk_rows=256)
    assert (result.embedded_now, result.cached, result.failed) == (1797 - 700, 700, 0)
    assert not parts.exists()
    got = pq.read_table(remote / result.path)
    assert got.column("id").equals(full.column("id"))
    assert got.column("content_hash").equals(full.column("content_hash"))
    diff = np.abs(embedding_matrix(got.column("embedding")) - embedding_matrix(full.column("embedding"))).max()
    assert diff <= 1e-4
    again = embed(remote, model="pixels", engine="ray")
    assert again.up_to_date and again.embedded_now == 0
    assert isinstance(got.schema.field("embedding").type, pa.FixedSizeListType)


@pytest.mark.slow
def test_embed_ray_records_undecodable_rows_like_local(ray_cluster, tmp_path):
    from labelkit.embed import embed
    from labelkit.ingest import ingest

    data = tmp_path / "data"
    for i in range(12):
        _png(data / ("a" if i % 2 else "b") / f"{i:02d}.png", i)
    results = {}
    for engine in ("local", "ray"):
        ingest(data, tmp_path / engine)
    (data / "a" / "03.png").write_bytes(b"not a png any more")  # changed after ingest: fails to decode
    for engine in ("local", "ray"):
        results[engine] = embed(tmp_path / engine, model="pixels", engine=engine)
    assert (results["ray"].embedded_now, results["ray"].failed) == (results["local"].embedded_now, 1) == (11, 1)
    a, b = (pq.read_table(tmp_path / e / results[e].errors_path) for e in ("local", "ray"))
    assert b.column("id").to_pylist() == ["a/03.png"] and a.equals(b)
    assert pq.read_table(tmp_path / "ray" / results["ray"].path).equals(pq.read_table(tmp_path / "local" / results["local"].path))


@pytest.mark.slow
def test_audit_ray_flags_the_same_rows_as_local(ray_cluster, cli, tmp_path):
    """The issue's acceptance check: `labelkit audit sample_data/digits --engine ray` = local."""
    results = {}
    for engine in ("local", "ray"):
        ws = tmp_path / engine
        code, out, err = cli("audit", SAMPLE / "digits", "-w", ws, "--model", "pixels", "--no-report",
                             "--engine", engine, "--json")
        assert code == 1, err  # the planted noise fails the default gate either way
        results[engine] = ws
    a, b = (pq.read_table(results[e] / "issues.parquet") for e in ("local", "ray"))
    flagged = a.filter(a.column("is_label_issue")).column("id").to_pylist()
    assert len(flagged) > 45  # most of the 90 planted errors
    assert b.filter(b.column("is_label_issue")).column("id").to_pylist() == flagged
    # Every column equal; similarities to float32 rounding: FAISS's exact search runs in the Ray workers
    # on whichever BLAS that process bound first, which may round a product's last bits differently.
    assert a.column_names == b.column_names
    for name in a.column_names:
        x, y = a.column(name), b.column(name)
        if pa.types.is_floating(x.type):
            assert np.allclose(x.to_numpy(zero_copy_only=False), y.to_numpy(zero_copy_only=False), rtol=1e-5,
                               atol=1e-6, equal_nan=True), name
        else:
            assert x.equals(y), name


# ---------------------------------------------------------------------------------------------
# The probe's final k-fold as Ray tasks


def _blobs(n: int = 2000, d: int = 16, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return (X, labels): k Gaussian classes with 5 % of the labels flipped."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    X = (2.0 * rng.standard_normal((k, d))[y] + rng.standard_normal((n, d))).astype(np.float32)
    flip = rng.random(n) < 0.05
    y[flip] = (y[flip] + rng.integers(1, k, flip.sum())) % k
    return X, y


def _counting(fold_map, calls: list):
    """Return `fold_map`, also recording the number of jobs of every call (so a test knows Ray ran them)."""
    def run(fit, X, labels, jobs):
        calls.append(len(jobs))
        return fold_map(fit, X, labels, jobs)

    return run


def test_fold_map_keeps_job_order_and_user_errors(ray_cluster):
    import time

    from labelkit.engines.ray import fold_cpus, fold_map

    X = np.arange(12, dtype=np.float32).reshape(6, 2)
    labels = np.arange(6)

    def first_finishes_last(X, labels, job):
        time.sleep(0.3 * (3 - job))
        return X[job] * labels[job]

    out = fold_map(first_finishes_last, X, labels, [0, 1, 2, 3])
    assert [r.tolist() for r in out] == [[0, 0], [2, 3], [8, 10], [18, 21]]

    def refuse(X, labels, job):
        raise LabelkitError(f"fold {job} cannot be fit")

    with pytest.raises(LabelkitError, match="fold 0 cannot be fit"):
        list(fold_map(refuse, X, labels, [0, 1]))
    # On the 2-CPU cluster five folds get one CPU each (two run side by side); a lone model gets both.
    assert (fold_cpus(ray_cluster, 5), fold_cpus(ray_cluster, 1)) == (1, 2)


def test_fold_map_runs_cuda_jobs_on_cpu_without_cluster_gpus(ray_cluster):
    from labelkit.engines.ray import fold_map
    from labelkit.probe import FoldJob, _Setting

    job = FoldJob(np.arange(4), np.arange(4, 6), _Setting("raw", C=1.0), 2, "torch", "cuda", 0)
    devices = list(fold_map(lambda X, labels, job: job.device, np.zeros((6, 2), np.float32), np.zeros(6), [job]))
    assert devices == ["cpu"]


@pytest.mark.slow
@pytest.mark.parametrize("probe", ["logreg", "torch", "mlp"])
def test_probe_final_folds_on_ray_equal_serial(ray_cluster, probe):
    """Above max_selection_rows the final k-fold runs; as Ray tasks it gives the serial probabilities."""
    from labelkit.engines import fold_mapper
    from labelkit.probe import get_out_of_sample_probs

    X, y = _blobs()
    holdout = np.zeros(len(y), bool)
    if probe == "mlp":  # and the held-out rows' model, a sixth job
        holdout[::10] = True
    kw = dict(n_classes=4, probe=probe, max_selection_rows=300, holdout=holdout, seed=3)
    serial, folds, choice = get_out_of_sample_probs(X, y, **kw)
    calls: list[int] = []
    remote, rfolds, rchoice = get_out_of_sample_probs(X, y, fold_map=_counting(fold_mapper("ray"), calls), **kw)
    assert calls == [6 if holdout.any() else 5]  # every model of the final k-fold went through Ray
    assert rchoice.chosen == choice.chosen and choice.fold_train_rows > 0
    assert remote.dtype == np.float32 and np.array_equal(folds, rfolds)
    assert np.allclose(remote, serial, atol=1e-5)
    assert (folds[holdout] == -1).all() and (remote.argmax(1) == y).mean() > 0.85


@pytest.mark.slow
def test_probe_held_out_model_on_ray_when_the_selection_is_final(ray_cluster):
    """Below max_selection_rows only the held-out rows need a model: one Ray task."""
    from labelkit.engines import fold_mapper
    from labelkit.probe import get_out_of_sample_probs

    X, y = _blobs(600, seed=1)
    holdout = np.zeros(len(y), bool)
    holdout[:60] = True
    serial, _, _ = get_out_of_sample_probs(X, y, n_classes=4, probe="logreg", holdout=holdout)
    calls: list[int] = []
    remote, _, _ = get_out_of_sample_probs(X, y, n_classes=4, probe="logreg", holdout=holdout,
                                           fold_map=_counting(fold_mapper("ray"), calls))
    assert calls == [1]
    assert np.allclose(remote, serial, atol=1e-5)
