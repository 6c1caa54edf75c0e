#!/usr/bin/env python3
"""Per-tensor statistics of a checkpoint's routed experts, streamed.

A data-preparation job in the shape of many: convert an HF FP8 MoE checkpoint to NeMo's native
layout on the fly (FP8 dequantized to BF16, each layer's experts grouped into
`...mlp.experts.gate_and_up_projs` [E, hidden, 2*inter] and `...mlp.experts.down_projs`
[E, inter, hidden]) and reduce every grouped tensor to mean / std / min / max of its values
(BF16 widened exactly to float32) and its NaN count — without writing the converted checkpoint
and without holding more than one converted tensor at a time. Peak memory is the conversion's
memory budget, plus the few tensors being assembled, plus the one being reduced here (plus one
chunk of float32 scratch), whatever the size of the model.

    PYTHONPATH=build/python python3 examples/python/expert_stats.py CHECKPOINT [--memory-budget 1GiB]
"""

import argparse
import json
import math
import resource
import sys
import time

import numpy as np

import ckptconv

EXPERT_SUFFIXES = (".mlp.experts.gate_and_up_projs", ".mlp.experts.down_projs",
                   ".mixer.experts.gate_and_up_projs", ".mixer.experts.down_projs")


def as_float32(chunk, dtype):
    """A chunk of a tensor's elements as float32, exactly (BF16 arrives as its uint16 bit patterns)."""
    if dtype == "BF16":
        return (chunk.astype(np.uint32) << 16).view(np.float32)
    return chunk.astype(np.float32, copy=False)


def tensor_stats(array, dtype, chunk_elems=1 << 20):
    """mean, std (population), min, max over the non-NaN values, and the NaN count: one pass in
    chunks, so the scratch is one chunk however large the tensor (partial moments merged exactly
    as in Chan et al.'s parallel variance)."""
    flat = array.reshape(-1)
    n, mean, m2, lo, hi, nans = 0, 0.0, 0.0, math.inf, -math.inf, 0
    for start in range(0, flat.size, chunk_elems):
        x = as_float32(flat[start:start + chunk_elems], dtype)
        bad = np.isnan(x)
        k = int(np.count_nonzero(bad))
        if k:
            nans += k
            x = x[~bad]
        if x.size == 0:
            continue
        cn = x.size
        cmean = float(np.mean(x, dtype=np.float64))
        d = np.subtract(x, cmean, dtype=np.float64)
        cm2 = float(np.dot(d, d))
        lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
        delta = cmean - mean
        total = n + cn
        mean += delta * cn / total
        m2 += cm2 + delta * delta * n * cn / total
        n = total
    std = math.sqrt(m2 / n) if n else math.nan
    return {"mean": mean if n else math.nan, "std": std, "min": lo if n else math.nan,
            "max": hi if n else math.nan, "nan": nans, "elements": int(flat.size)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="HF checkpoint directory (FP8 or not) of a MoE family")
    ap.add_argument("--family", default="auto")
    ap.add_argument("--memory-budget", default="1GiB", help="the conversion's budget (default 1GiB)")
    ap.add_argument("--threads", type=int, default=0, help="worker threads (0: all cores)")
    ap.add_argument("--io", default="mmap", choices=["mmap", "pread"])
    ap.add_argument("--json", action="store_true", help="one JSON object per tensor, then a summary")
    args = ap.parse_args(argv)

    t0 = time.monotonic()
    ck = ckptconv.open(args.checkpoint, to="native", dtype="bf16", family=args.family,
                       memory_budget=args.memory_budget, threads=args.threads, io=args.io)
    try:
        plan = {t.key: t for t in ck.plan()}
    except ckptconv.Error as e:
        print(f"expert_stats: {e}", file=sys.stderr)
        return e.exit_code
    experts = [k for k in plan if k.endswith(EXPERT_SUFFIXES)]
    if not experts:
        print("expert_stats: this checkpoint has no grouped experts", file=sys.stderr)
        return 1

    seen_bytes, nan_total = 0, 0
    try:
        # Tensors arrive in the order they complete; each array is freed when the loop drops it.
        for name, array in ck.tensors(names=experts):
            info = plan[name]
            s = tensor_stats(array, info.dtype)
            seen_bytes += info.nbytes
            nan_total += s["nan"]
            if args.json:
                print(json.dumps({"name": name, "dtype": info.dtype, "shape": list(info.shape), **s}))
            else:
                print(f"{name:<52} {str(list(info.shape)):<18} mean {s['mean']:+.4e} std {s['std']:.4e} "
                      f"min {s['min']:+.4e} max {s['max']:+.4e} nan {s['nan']}")
            del array
    except ckptconv.Error as e:
        print(f"expert_stats: {e}", file=sys.stderr)
        return e.exit_code
    wall = time.monotonic() - t0
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    summary = {"tensors": len(experts), "bytes": seen_bytes, "nan": nan_total, "seconds": round(wall, 3),
               "peak_rss_bytes": peak_rss, "memory_budget": ckptconv.parse_size(args.memory_budget)}
    if args.json:
        print(json.dumps({"summary": summary}))
    else:
        print(f"{len(experts)} expert tensors, {seen_bytes / 1e9:.2f} GB of BF16, {nan_total} NaN, "
              f"in {wall:.2f} s; peak RSS {peak_rss / 2**20:.1f} MiB "
              f"(memory budget {summary['memory_budget'] / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
