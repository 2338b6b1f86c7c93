"""Embedding throughput: decode-only, model-only and end-to-end `labelkit embed`, same run.

    python bench/embed.py --n 20000 --device cuda     # GPU: ViT-B-32, fp16 autocast
    python bench/embed.py --n 400 --device cpu        # CPU

Generates N random 256×256 JPEGs, ingests them (not timed), then reports images/s for
(a) decoding + preprocessing on DataLoader workers without a model, (b) the image tower on
synthetic tensors, (c) `labelkit.embed.embed` end to end, and (c) / min(a, b). Random weights run at
the same speed as pretrained ones.
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


def main() -> None:
    import torch

    from labelkit.embed import OpenCLIPFeaturizer, embed, image_batches
    from labelkit.ingest import ingest

    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    f = OpenCLIPFeaturizer(args.model, None, device)
    bs = args.batch_size or (256 if device == "cuda" else 32)
    import os
    workers = args.workers if args.workers is not None else (min(8, os.cpu_count() or 1) if device == "cuda" else 1)

    with tempfile.TemporaryDirectory() as tmp:
        from PIL import Image

        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        base = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
        for i in range(args.n):
            d = tmp / "data" / f"c{i % 10}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.roll(base, i, axis=0)).save(d / f"{i:06d}.jpg", quality=90)
        ingest(tmp / "data", tmp / "ws")
        paths = [str(p) for p in sorted((tmp / "data").rglob("*.jpg"))]

        t = time.perf_counter()
        for _ in image_batches(paths, f.preprocess, f.size, lambda x: x, device="cpu", batch_size=bs, workers=workers):
            pass
        decode = args.n / (time.perf_counter() - t)

        x = torch.randn(bs, 3, f.size, f.size, device=device)
        f.encode_image_tensor(x)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        steps = max(3, args.n // bs)
        t = time.perf_counter()
        for _ in range(steps):
            f.encode_image_tensor(x)
        if device == "cuda":
            torch.cuda.synchronize()
        model = steps * bs / (time.perf_counter() - t)

        t = time.perf_counter()
        embed(tmp / "ws", featurizer=f, batch_size=bs, workers=workers)
        e2e = args.n / (time.perf_counter() - t)

    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"{args.model} on {name}, batch {bs}, {workers} decode workers, {args.n} JPEGs 256x256")
    print(f"(a) decode only:  {decode:8.1f} img/s")
    print(f"(b) model only:   {model:8.1f} img/s")
    print(f"(c) end to end:   {e2e:8.1f} img/s")
    print(f"(c) / min(a, b):  {e2e / min(decode, model):.2f}")


if __name__ == "__main__":
    main()
