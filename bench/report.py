"""The report at scale: a 100,000-row image workspace → report.html size and build time.

Generates N distinct 16×16 PNGs in 10 class folders (noisy digit-like blobs, 5 % in the wrong
folder), ingests them, embeds them with the pixel baseline, runs `issues` with synthetic
out-of-sample probabilities (`--pred-probs`: the report's size does not depend on where they come
from, and this keeps the bench to minutes), then times `labelkit report` and prints the HTML size
against the 5 MB budget, with the time to parse it in Python's HTML parser as a proxy for "opens
fast".

    python bench/report.py [--n 100000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> None:
    from PIL import Image

    from labelkit.embed import embed
    from labelkit.ingest import ingest
    from labelkit.issues import issues
    from labelkit.report import report
    from labelkit.workspace import Workspace

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        centres = rng.integers(0, 256, (10, 16, 16))
        true = rng.integers(0, 10, args.n)
        given = np.where(rng.random(args.n) < 0.05, rng.integers(0, 10, args.n), true)
        for k in range(10):
            (tmp / "data" / str(k)).mkdir(parents=True)
        for i in range(args.n):
            img = np.clip(centres[true[i]] + rng.normal(0, 40, (16, 16)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp / "data" / str(given[i]) / f"{i:06d}.png")
        print(f"generated {args.n:,} PNGs in {time.perf_counter() - t:.0f}s")
        ws = Workspace(tmp / "ws")
        t = time.perf_counter()
        ingest(tmp / "data", ws)
        embed(ws, model="pixels")
        items = ws.read_items(columns=["id", "label_id"])
        idx = np.array([int(Path(i).stem) for i in items["id"]])
        logits = rng.normal(0, 1, (len(idx), 10))
        logits[np.arange(len(idx)), true[idx]] += 3
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        np.save(tmp / "p.npy", probs.astype(np.float32))
        issues(ws, pred_probs=tmp / "p.npy")
        print(f"ingest + embed + issues: {time.perf_counter() - t:.0f}s")
        t = time.perf_counter()
        result = report(ws)
        took = time.perf_counter() - t
        html = result.html_path.read_text(encoding="utf-8")
        t = time.perf_counter()
        HTMLParser().feed(html)
        parse = time.perf_counter() - t
        size = result.html_path.stat().st_size
        print(f"report of {args.n:,} rows: {size / 1e6:.2f} MB (budget 5 MB, ratio {size / 5e6:.2f}), built in "
              f"{took:.1f}s, parsed in {parse * 1000:.0f} ms")
        for note in result.to_dict().get("notes", []) or []:
            print("  page says:", note)


if __name__ == "__main__":
    main()
