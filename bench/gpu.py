"""GPU figures, each next to its limit measured in the same run (issue 22).

    python bench/gpu.py                         # on a GPU: 20k JPEGs, ViT-B-32 fp16, probe 1M x 512 x 100
    python bench/gpu.py --device cpu --n 64 --probe-rows 2000 --probe-dim 32 --probe-classes 4 \\
        --neighbor-rows 2000                    # the same table on CPU, small

Prints one Markdown table (``| figure | value | unit |``) preceded by a ``device:`` line:

- **embed**: images/s of ``labelkit.embed.embed`` over N JPEGs the script writes, against the
  decode limit (the DataLoader alone, no model) and the model limit (the image tower on batches
  of the same decoded images already on the device); the ratio end-to-end / min(limits), and the
  batch size and worker count used. Random-init weights: throughput does not depend on them.
- **probe**: ``labelkit.probe.get_out_of_sample_probs`` on synthetic Gaussian-class embeddings
  (rows x dim, classes) with ``device=`` the bench device and then ``device="cpu"``, same
  arguments and seed: seconds each, the speed-up, and the out-of-sample accuracy of both.
- **neighbours**: ``labelkit.neighbors.find_nearest_neighbors`` (exact, blocked) on the device and
  on CPU (CPU at ``--cpu-neighbor-rows``, brute force being quadratic), in rows/s; and a faiss
  IVF index on the GPU when the installed faiss has GPU support (recall@k against the exact
  search), else a row saying it has none.

On a CPU-only machine "device" and "cpu" are the same CPU, so the ratios are about 1; the table
is still printed so the script cannot rot (tests/test_bench_gpu.py runs it small).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument("--n", type=int, default=20000, help="JPEG files to write and embed")
    p.add_argument("--image-size", type=int, default=256, help="side of the written JPEGs")
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random-init weights)")
    p.add_argument("--model-config", default=None, help="an open_clip model config JSON to register first")
    p.add_argument("--batch-size", type=int, default=None, help="default 256 on CUDA, 32 on CPU")
    p.add_argument("--workers", type=int, default=None, help="decode workers; default all cores on CUDA, 1 on CPU")
    p.add_argument("--probe-rows", type=int, default=1_000_000)
    p.add_argument("--probe-dim", type=int, default=512)
    p.add_argument("--probe-classes", type=int, default=100)
    p.add_argument("--probe", default="torch", help="the probe= argument of get_out_of_sample_probs")
    p.add_argument("--probe-c", type=float, default=None, help="one C instead of the default C search")
    p.add_argument("--neighbor-rows", type=int, default=1_000_000)
    p.add_argument("--cpu-neighbor-rows", type=int, default=50_000)
    p.add_argument("--k", type=int, default=10, help="neighbours per row")
    p.add_argument("--skip", default="", help="comma-separated parts to leave out: embed, probe, neighbours")
    return p.parse_args(argv)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def write_jpegs(root: Path, n: int, size: int) -> list[Path]:
    """N distinct JPEGs (rolled copies of one noise image, 10 class folders), written on threads."""
    from PIL import Image

    base = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    for c in range(10):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    paths = [root / f"c{i % 10}" / f"{i:06d}.jpg" for i in range(n)]

    def one(i: int) -> None:
        Image.fromarray(np.roll(base, i, axis=i % 2)).save(paths[i], quality=90)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(one, range(n)))
    return paths


def bench_embed(args, device: str, rows: list) -> None:
    import torch

    from labelkit.embed import OpenCLIPFeaturizer, embed, image_batches
    from labelkit.ingest import ingest

    cuda = device.startswith("cuda")
    bs = args.batch_size or (256 if cuda else 32)
    workers = args.workers if args.workers is not None else ((os.cpu_count() or 1) if cuda else 1)
    f = OpenCLIPFeaturizer(args.model, None, device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = [str(p) for p in sorted(write_jpegs(tmp / "data", args.n, args.image_size))]
        ingest(tmp / "data", tmp / "ws")

        # decode limit: the DataLoader alone; keep a few decoded batches for the model limit
        kept = []
        t = time.perf_counter()
        for images, _ in image_batches(paths, f.preprocess, f.size, lambda x: x, device="cpu",
                                       batch_size=bs, workers=workers):
            if len(kept) < 8:
                kept.append(images)
        decode = args.n / (time.perf_counter() - t)

        # model limit: the same decoded images, already on the device, through the image tower
        on_device = [x.to(device) for x in kept]
        f.encode_image_tensor(on_device[0])  # warm-up (cuDNN autotune, allocator)
        sync(device)
        done, i = 0, 0
        t = time.perf_counter()
        while done < args.n:
            x = on_device[i % len(on_device)]
            f.encode_image_tensor(x)
            done, i = done + len(x), i + 1
        sync(device)
        model = done / (time.perf_counter() - t)
        del on_device, kept
        if cuda:
            torch.cuda.empty_cache()

        t = time.perf_counter()
        embed(tmp / "ws", featurizer=f, batch_size=bs, workers=workers)
        e2e = args.n / (time.perf_counter() - t)

    rows += [(f"embed: decode limit (DataLoader alone, {workers} workers)", decode, "img/s"),
             (f"embed: model limit ({args.model} on {device}, batches on device)", model, "img/s"),
             ("embed: labelkit embed end to end", e2e, "img/s"),
             ("embed: end to end / min(decode, model) (target >= 0.9)", e2e / min(decode, model), "ratio"),
             ("embed: batch size", bs, "images"),
             ("embed: decode workers", workers, "processes"),
             ("embed: JPEG files", args.n, f"files ({args.image_size}x{args.image_size})")]


def synthetic_embeddings(n: int, d: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes, float32, built in chunks: unit noise around means ~ N(0, s²I).

    s = 6 / sqrt(2d) puts class means about 6 noise widths apart, whatever d: a linear probe gets
    most rows right but not all, so an accuracy difference between two paths can show.
    """
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((k, d), dtype=np.float32) * np.float32(6 / np.sqrt(2 * d))
    labels = rng.integers(0, k, n)
    X = np.empty((n, d), np.float32)
    step = 1 << 16
    for s in range(0, n, step):
        e = min(n, s + step)
        X[s:e] = means[labels[s:e]] + rng.standard_normal((e - s, d), dtype=np.float32)
    return X, labels


def bench_probe(args, device: str, rows: list) -> None:
    from labelkit.probe import get_out_of_sample_probs

    X, y = synthetic_embeddings(args.probe_rows, args.probe_dim, args.probe_classes)
    grid = {} if args.probe_c is None else {"C_grid": (args.probe_c,), "raw_C_grid": None}
    figures = []
    for dev in dict.fromkeys((device, "cpu")):  # on a CPU-only run the two are one run
        t = time.perf_counter()
        probs, _, _ = get_out_of_sample_probs(X, y, n_classes=args.probe_classes, probe=args.probe, device=dev,
                                              seed=0, **grid)
        sync(dev)
        figures.append((time.perf_counter() - t, float((probs.argmax(1) == y).mean())))
    (t_dev, acc_dev), (t_cpu, acc_cpu) = figures[0], figures[-1]
    shape = (f"{args.probe_rows} x {args.probe_dim}, {args.probe_classes} classes, probe={args.probe}"
             + ("" if args.probe_c is None else f", C={args.probe_c:g}"))
    rows += [(f"probe: seconds, device={device} ({shape})", t_dev, "s"),
             ("probe: seconds, device=cpu (same arguments)", t_cpu, "s"),
             ("probe: cpu time / device time (target >= 10)", t_cpu / t_dev, "ratio"),
             (f"probe: out-of-sample accuracy, device={device}", acc_dev, "fraction"),
             ("probe: out-of-sample accuracy, device=cpu", acc_cpu, "fraction"),
             ("probe: accuracy difference, device - cpu (target within 0.01)", acc_dev - acc_cpu, "fraction")]


def bench_neighbours(args, device: str, rows: list, notes: list) -> None:
    from labelkit.neighbors import find_nearest_neighbors

    X, _ = synthetic_embeddings(args.neighbor_rows, args.probe_dim, args.probe_classes, seed=1)
    t = time.perf_counter()
    exact, _ = find_nearest_neighbors(X, k=args.k, device=device)
    sync(device)
    rows.append((f"neighbours: exact search on {device}, {len(X)} rows, k={args.k}",
                 len(X) / (time.perf_counter() - t), "rows/s"))
    if device != "cpu":  # brute force is quadratic: the CPU gets fewer rows
        n_cpu = min(len(X), args.cpu_neighbor_rows)
        t = time.perf_counter()
        find_nearest_neighbors(X[:n_cpu], k=args.k, device="cpu")
        rows.append((f"neighbours: exact search on cpu, {n_cpu} rows, k={args.k}",
                     n_cpu / (time.perf_counter() - t), "rows/s"))

    import faiss

    if not (device.startswith("cuda") and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0):
        why = "the installed faiss has no GPU support" if not hasattr(faiss, "StandardGpuResources") else \
            "no GPU in this run"
        notes.append(f"neighbours: approximate GPU index not measured: {why} (faiss {faiss.__version__}).")
        return
    E = X / np.linalg.norm(X, axis=1, keepdims=True)
    nlist = int(4 * np.sqrt(len(E)))
    res = faiss.StandardGpuResources()
    index = faiss.GpuIndexIVFFlat(res, E.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    t = time.perf_counter()
    index.train(E[np.random.default_rng(0).choice(len(E), min(len(E), 64 * nlist), replace=False)])
    index.add(E)
    index.nprobe = 16
    _, approx = index.search(E, args.k + 1)
    rate = len(E) / (time.perf_counter() - t)
    approx = approx[:, 1:]  # the first hit is the row itself
    recall = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(approx[:10000], exact[:10000])]))
    rows += [(f"neighbours: faiss GpuIndexIVFFlat (nlist={nlist}, nprobe=16), build + search", rate, "rows/s"),
             (f"neighbours: faiss IVF recall@{args.k} against exact (10k rows)", recall, "fraction")]


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from labelkit.features import resolve_device

    if args.model_config:
        import open_clip

        open_clip.add_model_config(Path(args.model_config))
        args.model = Path(args.model_config).stem
    device = resolve_device(args.device)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    rows: list[tuple[str, float, str]] = []
    notes: list[str] = []
    started = time.perf_counter()
    if "embed" not in skip:
        bench_embed(args, device, rows)
    if "probe" not in skip:
        bench_probe(args, device, rows)
    if "neighbours" not in skip:
        bench_neighbours(args, device, rows, notes)
    print(f"device: {device} ({name}); {os.cpu_count()} CPU cores; torch {torch.__version__}; "
          f"total {time.perf_counter() - started:.1f} s")
    print()
    print("| figure | value | unit |")
    print("|---|---:|---|")
    for figure, value, unit in rows:
        text = f"{value:,}" if isinstance(value, int) else (f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3f}")
        print(f"| {figure} | {text} | {unit} |")
    for note in notes:
        print()
        print(note)


if __name__ == "__main__":
    main()
