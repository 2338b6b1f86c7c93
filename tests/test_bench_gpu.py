"""bench/gpu.py runs on CPU with tiny sizes and prints every row of its table, each with a number."""

import re
import subprocess
import sys

from conftest import ROOT, TINY_CLIP_CONFIG

ROWS = [
    "embed: decode limit", "embed: model limit", "embed: labelkit embed end to end",
    "embed: end to end / min(decode, model)", "embed: batch size", "embed: decode workers", "embed: JPEG files",
    "probe: seconds, device=cpu (", "probe: seconds, device=cpu (same arguments)", "probe: cpu time / device time",
    "probe: out-of-sample accuracy, device=cpu", "probe: accuracy difference, device - cpu",
    "neighbours: exact search on cpu, 300 rows, k=5",
]


def test_gpu_bench_prints_its_table_on_cpu(tmp_path):
    args = ["--device", "cpu", "--n", "12", "--model-config", TINY_CLIP_CONFIG, "--batch-size", "4", "--workers", "0",
            "--probe-rows", "300", "--probe-dim", "8", "--probe-classes", "3", "--probe", "sklearn",
            "--probe-c", "1", "--neighbor-rows", "300", "--k", "5"]
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), *map(str, args)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("device: cpu (CPU)")
    table, units = {}, {}
    for line in lines:
        m = re.fullmatch(r"\| (.+) \| (-?[\d,]+(?:\.\d+)?) \| (.+) \|", line)
        if m:
            table[m[1]] = float(m[2].replace(",", ""))
            units[m[1]] = m[3]
    for row in ROWS:
        hits = [v for k, v in table.items() if k.startswith(row)]
        assert hits, f"no row {row!r} in:\n{done.stdout}"
    value = {k.split(" (")[0].split(":")[1].strip(): v for k, v in table.items()}
    assert value["JPEG files"] == 12 and value["batch size"] == 4 and value["decode workers"] == 0
    rates = [v for k, v in table.items() if units[k] in ("img/s", "rows/s", "s")]
    assert len(rates) == 6 and all(v > 0 for v in rates)
    assert 0.5 < table[next(k for k in table if "accuracy, device=cpu" in k)] <= 1  # the probe learned the classes
    assert table[next(k for k in table if "accuracy difference" in k)] == 0  # one path on a CPU-only run
    assert "approximate GPU index not measured" in done.stdout  # faiss-cpu, no GPU: said, not skipped
