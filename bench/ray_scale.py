"""Local vs Ray engine on the same synthetic image rows: ingest, embed (pixel baseline), issues.

    python bench/ray_scale.py [--n 100000] [--cpus 2] [--stages ingest,embed,neighbors,issues]

Generates N 16x16 PNGs in 10 class folders (a class pattern plus noise, 5% of files in a wrong
folder), runs each stage with ``engine='local'`` and ``engine='ray'`` on a local Ray cluster of
`--cpus` CPUs, checks that both give the same table, and prints seconds, rows/s, the ratio
(ray / local throughput) and Ray's throughput per worker. ``neighbors`` times the part of
`issues` that Ray shards (the k-NN search) on its own; ``issues`` is the whole verb, whose probe
runs on the driver under both engines (``neighbors`` and ``issues`` imply ``ingest,embed``).
Needs the extra: ``pip install -e ".[ray]"``.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster.")
    parser.add_argument("--stages", default="ingest,embed,neighbors,issues")
    args = parser.parse_args()
    stages = set(args.stages.split(","))
    if stages & {"neighbors", "issues"}:
        stages |= {"ingest", "embed"}  # they read the embeddings the earlier stages write

    import pyarrow.parquet as pq
    import ray

    from labelkit.embed import embed
    from labelkit.engines.ray import embed_pool, find_nearest_neighbors as ray_neighbors
    from labelkit.features import load_workspace_embeddings
    from labelkit.ingest import ingest
    from labelkit.issues import issues
    from labelkit.neighbors import find_nearest_neighbors
    from labelkit.workspace import Workspace

    _, init_s = timed(ray.init, num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    workers = {"ingest": args.cpus, "embed": embed_pool(ray)["size"], "neighbors": args.cpus, "issues": args.cpus}
    print(f"n={args.n:,}  ray cluster: {args.cpus} CPUs (started in {init_s:.1f}s, not counted)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        _, gen_s = timed(make_images, data, args.n)
        print(f"generated {args.n:,} PNGs in {gen_s:.1f}s")
        ws = {e: Path(tmp) / e for e in ("local", "ray")}
        for stage in ("ingest", "embed", "neighbors", "issues"):
            if stage not in stages:
                continue
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
                        assert np.array_equal(out[0], local_nn[0]), "neighbour indices differ"
                else:
                    _, seconds[engine] = timed(issues, ws[engine], engine=engine, device="cpu")
            if stage in ("ingest", "embed", "issues"):
                name = {"ingest": "items.parquet", "issues": "issues.parquet"}.get(stage)
                if name is None:
                    name = next((ws["local"] / "embeddings").glob("*.parquet")).relative_to(ws["local"]).as_posix()
                same = pq.read_table(ws["local"] / name).equals(pq.read_table(ws["ray"] / name))
            else:
                same = True
            rows.append((stage, seconds["local"], seconds["ray"], workers[stage], same))

    print(f"\n{'stage':<10} {'local s':>8} {'ray s':>8} {'local rows/s':>13} {'ray rows/s':>11} "
          f"{'ray/local':>9} {'workers':>7} {'rows/s/worker':>13} same")
    for stage, loc, rem, w, same in rows:
        print(f"{stage:<10} {loc:8.1f} {rem:8.1f} {args.n / loc:13,.0f} {args.n / rem:11,.0f} {loc / rem:9.2f} "
              f"{w:7d} {args.n / rem / w:13,.0f} {'yes' if same else 'NO'}")
    ray.shutdown()


if __name__ == "__main__":
    main()
