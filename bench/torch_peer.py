#!/usr/bin/env python3
"""The plain PyTorch conversion users run today, as a speed and memory peer for ckptconv.

HF MiniMax-M2-style FP8 checkpoint -> NeMo AutoModel native layout (SPEC §3, §4 minimax_m2):
every `X.weight` (F8_E4M3) with an `X.weight_scale_inv` partner (F32 128x128 blocks) is dequantized
on the device as weight.float() * scale expanded over its blocks (ragged edges cropped) -> --dtype;
`block_sparse_moe.gate` / `e_score_correction_bias` move under `mlp.gate`; each layer's routed
experts w1/w3/w2 are stacked into `mlp.experts.gate_and_up_projs` [E, hidden, 2*inter] (slot e =
cat(w1_e^T, w3_e^T, -1)) and `mlp.experts.down_projs` [E, inter, hidden] (slot e = w2_e^T).
Output: one safetensors file per input shard (a layer's grouped experts go to the file of the shard
that completed it), model.safetensors.index.json, and the input's other small files copied as is.

    python3 bench/torch_peer.py --in M2-fp8 --out M2-native [--device cuda|cpu] [--dtype bf16]

Needs torch and safetensors only.
"""
import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import time

import torch
from safetensors import safe_open
from safetensors.torch import save_file

EXPERT = re.compile(r"^(?P<p>.*)layers\.(?P<L>\d+)\.block_sparse_moe\.experts\.(?P<e>\d+)\.(?P<w>w[123])\.weight$")
RENAMES = [(".block_sparse_moe.gate.weight", ".mlp.gate.weight"),
           (".block_sparse_moe.e_score_correction_bias", ".mlp.gate.e_score_correction_bias")]
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}


def dequant(w, s, block, dtype):
    """round(float32(w) * float32(scale[i // br][j // bc])) in dtype; edge blocks may be ragged."""
    rows, cols = w.shape
    br, bc = block
    s = s.float().repeat_interleave(br, 0)[:rows].repeat_interleave(bc, 1)[:, :cols]
    return (w.float() * s).to(dtype)


def rename(key):
    for old, new in RENAMES:
        if key.endswith(old):
            return key[: -len(old)] + new
    return key


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--in", dest="inp", required=True, help="HF checkpoint folder (index + shards)")
    ap.add_argument("--out", required=True, help="output folder (native layout)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    a = ap.parse_args()
    dtype, dev = DTYPES[a.dtype], a.device
    load_dev = "cuda:0" if dev == "cuda" else "cpu"  # tensors land on the device as they are read
    t0 = time.perf_counter()

    index = os.path.join(a.inp, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            where = json.load(f)["weight_map"]
    else:  # one file
        with safe_open(os.path.join(a.inp, "model.safetensors"), framework="pt") as f:
            where = {k: "model.safetensors" for k in f.keys()}
    by_file = {}
    for k in sorted(where):
        by_file.setdefault(where[k], []).append(k)
    block = (128, 128)
    cfg_path = os.path.join(a.inp, "config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            qc = json.load(f).get("quantization_config") or {}
        block = tuple(qc.get("weight_block_size") or block)

    # Which experts each layer needs (ids 0..E-1 as the index lists them).
    need = {}
    for k in where:
        m = EXPERT.match(k)
        if m:
            need.setdefault((m["p"], int(m["L"])), set()).add((int(m["e"]), m["w"]))
    pending = {layer: {} for layer in need}

    os.makedirs(a.out, exist_ok=True)
    weight_map, total = {}, 0
    with contextlib.ExitStack() as stack:
        handles = {}

        def get(key):
            name = where[key]
            if name not in handles:
                path = os.path.join(a.inp, name)
                handles[name] = stack.enter_context(safe_open(path, framework="pt", device=load_dev))
            return handles[name].get_tensor(key)

        for name in sorted(by_file):
            out = {}
            for key in by_file[name]:
                if key.endswith("_scale_inv"):
                    continue  # consumed by its weight, or dropped as upstream does
                t = get(key)
                if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
                    if key + "_scale_inv" not in where:
                        raise SystemExit(f"{key}: FP8 weight without {key}_scale_inv")
                    t = dequant(t, get(key + "_scale_inv"), block, dtype)
                m = EXPERT.match(key)
                if not m:
                    out[rename(key)] = t
                    continue
                layer = (m["p"], int(m["L"]))
                got = pending[layer]
                got[(int(m["e"]), m["w"])] = t
                if len(got) < len(need[layer]):
                    continue
                n = max(e for e, _ in got) + 1
                base = f"{layer[0]}layers.{layer[1]}.mlp.experts."
                out[base + "gate_and_up_projs"] = torch.stack(
                    [torch.cat([got[(e, "w1")].t(), got[(e, "w3")].t()], dim=-1) for e in range(n)]).to(dtype)
                out[base + "down_projs"] = torch.stack([got[(e, "w2")].t() for e in range(n)]).to(dtype)
                del pending[layer]
            if not out:
                continue
            out = {k: v.contiguous().cpu() for k, v in out.items()}  # save_file wants host tensors
            save_file(out, os.path.join(a.out, name), metadata={"format": "pt"})
            for k, v in out.items():
                weight_map[k] = name
                total += v.numel() * v.element_size()
            del out
    if pending:
        raise SystemExit(f"incomplete expert layers: {sorted(pending)[:4]}")

    with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
    for name in os.listdir(a.inp):
        src = os.path.join(a.inp, name)
        if os.path.isfile(src) and not name.endswith(".safetensors") and name != "model.safetensors.index.json":
            shutil.copy(src, os.path.join(a.out, name))

    secs = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    gpu = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else 0.0
    print(f"torch_peer: {len(weight_map)} tensors, {total / 1e9:.2f} GB written in {secs:.2f} s "
          f"({total / 1e9 / secs:.2f} GB/s), peak RSS {rss:.2f} GiB, peak GPU {gpu:.2f} GiB")
    print(f"total seconds: {secs:.3f}")


if __name__ == "__main__":
    main()
