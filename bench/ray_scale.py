"""Local vs Ray engine on the same synthetic image rows: ingest, embed (pixel baseline), issues.

    python bench/ray_scale.py [--n 100000] [--cpus 2] [--stages ingest,embed,neighbors,folds,issues]

Generates N 16x16 PNGs in 10 class folders (a class pattern plus noise, 5% of files in a wrong
folder), runs each stage with ``engine='local'`` and ``engine='ray'`` on a local Ray cluster of
`--cpus` CPUs, checks that both give the same table, and prints seconds, rows/s, the ratio
(ray / local throughput) and Ray's throughput per worker. ``neighbors`` and ``folds`` time the
parts of `issues` that Ray runs as tasks on their own: the k-NN search, and the probe's final
5-fold at one setting (``raw C=1``, what the probe picks on these rows; training rows capped as
in the probe) through the serial fold map and through Ray's. ``issues`` is the whole verb: the
probe's candidate selection runs on the driver under both engines, its final k-fold's models
(above 20,000 rows) run as Ray tasks, the neighbour search is sharded, confident learning runs
on the gathered probabilities; its phases are printed per engine. ``neighbors``, ``folds`` and
``issues`` read the embeddings: without ``embed`` in `--stages` they are computed once, locally
and untimed, and copied to the Ray workspace. Needs the extra: ``pip install -e ".[ray]"``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_images(root: Path, n: int, classes: int = 10, noise_rate: float = 0.05, seed: int = 0) -> None:
    """Write n PNGs: class c is a bright band at row 1.5c plus noise; `noise_rate` land in a wrong folder."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
    for i in range(n):
        true = i % classes
        img = rng.integers(0, 90, (16, 16), dtype=np.uint8)
        img[int(1.5 * true):int(1.5 * true) + 2] += 150
        given = (true + rng.integers(1, classes)) % classes if rng.random() < noise_rate else true
        Image.fromarray(img, mode="L").save(root / f"class{given}" / f"{i:07d}.png")


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - t


def copy_embeddings(src: Path, dst: Path) -> None:
    """Give workspace `dst` (same items as `src`) the embeddings `src` computed, and its embed record."""
    from labelkit.workspace import Workspace

    shutil.copytree(src / "embeddings", dst / "embeddings", dirs_exist_ok=True)
    Workspace(dst).update_stage("embed", Workspace(src).read_manifest()["stages"]["embed"])


def compare_issues(local: Path, remote: Path) -> str:
    """Return 'yes' when both engines wrote the same issues table, else how close they are.

    The final k-fold's models run on a task's threads instead of the driver's, so their float32
    probabilities may differ in the last bits; the flagged rows are what must not change.
    """
    import pyarrow.parquet as pq

    a, b = (pq.read_table(ws / "issues.parquet") for ws in (local, remote))
    if a.equals(b):
        return "yes"
    flagged = [t.filter(t.column("is_label_issue")).column("id").to_pylist() for t in (a, b)]
    pa_, pb = (np.stack(pq.read_table(ws / "probs.parquet").column("pred_probs").to_numpy(zero_copy_only=False))
               for ws in (local, remote))
    delta = float(np.abs(pa_ - pb).max())
    return f"{'same flags' if flagged[0] == flagged[1] else 'FLAGS DIFFER'}, max |dp| {delta:.1e}"


def issue_phases(ws: Path) -> dict:
    """Return the issues record's phase seconds: probe selection, final folds, search, CL, checks."""
    from labelkit.workspace import Workspace

    record = Workspace(ws).read_manifest()["stages"]["issues"]
    seconds = (record.get("probe") or {}).get("seconds", {})
    phases = record.get("phase_seconds", {})
    return {"probe selection": seconds.get("selection", 0.0),
            "probe final folds": seconds.get("total", 0.0) - seconds.get("selection", 0.0),
            "neighbours": sum(v for k, v in phases.items() if k not in ("probe", "confident_learning", "checks")),
            "confident learning": phases.get("confident_learning", 0.0), "checks": phases.get("checks", 0.0),
            "chosen": (record.get("probe") or {}).get("chosen", "")}


def fold_jobs(ws, C: float = 1.0, n_folds: int = 5, seed: int = 0):
    """Return (X, labels, jobs): the probe's final k-fold over the workspace's rows at ``raw C``, as the probe
    builds it above 20,000 rows (stratified folds, training rows capped per model, torch engine)."""
    from labelkit.features import load_workspace_embeddings
    from labelkit.probe import MAX_FOLD_ROWS, FoldJob, _cap_rows, _fold_ids, _Setting

    X = load_workspace_embeddings(ws)[2]
    y = ws.read_items_table().column("label_id").to_numpy().astype(np.int64)
    fold_of = _fold_ids(y, n_folds, seed)
    setting, n_classes = _Setting("raw", C=C), int(y.max()) + 1
    jobs = [FoldJob(_cap_rows(np.flatnonzero(fold_of != f), y, MAX_FOLD_ROWS, seed + f), np.flatnonzero(fold_of == f),
                    setting, n_classes, "torch", "cpu", seed) for f in range(n_folds)]
    return X, y, jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster.")
    parser.add_argument("--stages", default="ingest,embed,neighbors,folds,issues")
    args = parser.parse_args()
    stages = set(args.stages.split(","))
    if stages & {"embed", "neighbors", "folds", "issues"}:
        stages |= {"ingest"}  # every later stage reads the items table

    import pyarrow.parquet as pq
    import ray

    from labelkit.embed import embed
    from labelkit.engines.ray import embed_pool, fold_cpus, find_nearest_neighbors as ray_neighbors
    from labelkit.features import load_workspace_embeddings
    from labelkit.ingest import ingest
    from labelkit.issues import issues
    from labelkit.engines.ray import fold_map
    from labelkit.neighbors import find_nearest_neighbors
    from labelkit.probe import fit_fold, serial_fold_map
    from labelkit.workspace import Workspace

    load_before = os.getloadavg()
    _, init_s = timed(ray.init, num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    fold_tasks = min(5, args.cpus // fold_cpus(ray, 5))  # the final 5-fold's tasks running at once
    workers = {"ingest": args.cpus, "embed": embed_pool(ray)["size"], "neighbors": args.cpus, "folds": fold_tasks,
               "issues": fold_tasks}
    print(f"n={args.n:,}  ray cluster: {args.cpus} CPUs (started in {init_s:.1f}s, not counted)  "
          f"load average {load_before[0]:.1f} {load_before[1]:.1f} {load_before[2]:.1f}")
    rows, phases = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        _, gen_s = timed(make_images, data, args.n)
        print(f"generated {args.n:,} PNGs in {gen_s:.1f}s", flush=True)
        ws = {e: Path(tmp) / e for e in ("local", "ray")}
        for stage in ("ingest", "embed", "neighbors", "folds", "issues"):
            if stage not in stages:
                continue
            needs_copy = "embed" not in stages and not (ws["ray"] / "embeddings").exists()
            if stage in ("neighbors", "folds", "issues") and needs_copy:
                embed(ws["local"], model="pixels")  # untimed: these stages only read the embeddings
                copy_embeddings(ws["local"], ws["ray"])
            seconds = {}
            for engine in ("local", "ray"):
                if stage == "ingest":
                    _, seconds[engine] = timed(ingest, data, ws[engine], engine=engine)
                elif stage == "embed":
                    _, seconds[engine] = timed(embed, ws[engine], model="pixels", engine=engine)
                elif stage == "neighbors":
                    matrix = load_workspace_embeddings(Workspace(ws["local"]))[2]
                    fn = find_nearest_neighbors if engine == "local" else ray_neighbors
                    out, seconds[engine] = timed(fn, matrix, k=10)
                    if engine == "local":
                        local_nn = out
                    else:
                        agree = float((np.sort(out[0], 1) == np.sort(local_nn[0], 1)).all(1).mean())
                elif stage == "folds":
                    if engine == "local":
                        X, y, jobs = fold_jobs(Workspace(ws["local"]))
                    fmap = serial_fold_map if engine == "local" else fold_map
                    out, seconds[engine] = timed(lambda: list(fmap(fit_fold, X, y, jobs)))
                    if engine == "local":
                        local_folds = out
                    else:
                        fold_delta = max(float(np.abs(a - b).max()) for a, b in zip(local_folds, out))
                else:
                    _, seconds[engine] = timed(issues, ws[engine], engine=engine, device="cpu")
                    phases[engine] = issue_phases(ws[engine])
                print(f"  {stage} {engine}: {seconds[engine]:.1f}s", flush=True)
            if stage in ("ingest", "embed"):
                name = "items.parquet" if stage == "ingest" else next(
                    (ws["local"] / "embeddings").glob("*.parquet")).relative_to(ws["local"]).as_posix()
                same = "yes" if pq.read_table(ws["local"] / name).equals(pq.read_table(ws["ray"] / name)) else "NO"
            elif stage == "folds":
                same = f"max |dp| {fold_delta:.1e}"
            elif stage == "neighbors":
                # Above 20,000 rows both search the same IVF index; FAISS's kernel vs one BLAS product
                # may order near-ties differently.
                same = f"{agree:.4f} of rows"
            else:
                same = compare_issues(ws["local"], ws["ray"])
            rows.append((stage, seconds["local"], seconds["ray"], workers[stage], same))
    load_after = os.getloadavg()

    print(f"\n{'stage':<10} {'local s':>8} {'ray s':>8} {'local rows/s':>13} {'ray rows/s':>11} "
          f"{'ray/local':>9} {'workers':>7} {'rows/s/worker':>13} same")
    for stage, loc, rem, w, same in rows:
        print(f"{stage:<10} {loc:8.1f} {rem:8.1f} {args.n / loc:13,.0f} {args.n / rem:11,.0f} {loc / rem:9.2f} "
              f"{w:7d} {args.n / rem / w:13,.0f} {same}")
    if phases:
        print(f"\nissues phases (s), probe chosen: {phases['local']['chosen']} (local), "
              f"{phases['ray']['chosen']} (ray)")
        for phase in ("probe selection", "probe final folds", "neighbours", "confident learning", "checks"):
            loc, rem = phases["local"][phase], phases["ray"][phase]
            ratio = loc / rem if rem else float("nan")
            print(f"  {phase:<20} local {loc:7.1f}  ray {rem:7.1f}  ray/local {ratio:5.2f}")
    print(f"\nload average before {load_before[0]:.1f}, after {load_after[0]:.1f} "
          f"(1-min; 5-min {load_after[1]:.1f}, 15-min {load_after[2]:.1f})")
    ray.shutdown()


if __name__ == "__main__":
    main()
