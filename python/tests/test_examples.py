"""examples/python/expert_stats.py runs on a small synthetic checkpoint, and its statistics are
those of the experts `ckptconv convert --to native` writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import read_safetensors

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "python" / "expert_stats.py"


def test_expert_stats(fp8, native):
    r = subprocess.run([sys.executable, str(EXAMPLE), str(fp8), "--json", "--memory-budget", "8MiB",
                        "--threads", "2"], capture_output=True, text=True, env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    rows, summary = lines[:-1], lines[-1]["summary"]
    ref = read_safetensors(native)
    experts = {n for n in ref if n.endswith((".gate_and_up_projs", ".down_projs"))}
    assert {row["name"] for row in rows} == experts and summary["tensors"] == len(experts) == 4
    for row in rows:
        dtype, shape, data = ref[row["name"]]
        assert dtype == "BF16" and tuple(row["shape"]) == shape
        x = (np.frombuffer(data, np.uint16).astype(np.uint32) << 16).view(np.float32)
        x = x[~np.isnan(x)]
        assert np.isclose(row["mean"], x.mean(dtype=np.float64), rtol=1e-9, atol=1e-12)
        assert np.isclose(row["std"], x.std(dtype=np.float64), rtol=1e-9)
        assert row["min"] == float(x.min()) and row["max"] == float(x.max())
    assert summary["peak_rss_bytes"] > 0


def test_expert_stats_on_a_missing_checkpoint(work):
    r = subprocess.run([sys.executable, str(EXAMPLE), str(work / "nothing-here")], capture_output=True, text=True)
    assert r.returncode in (3, 4) and r.stderr.startswith("expert_stats: ")
