"""Fixtures of the binding's tests: synthetic checkpoints made with the `ckptconv` command, the
command's own conversions of them (the reference), and an independent safetensors reader."""

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

import ckptconv


def cli_binary() -> str:
    from ckptconv import _build_info

    path = os.environ.get("CKPTCONV_BINARY") or _build_info.CKPTCONV_BINARY
    if not os.path.isfile(path):
        path = shutil.which("ckptconv") or path
    assert os.path.isfile(path), f"the ckptconv command is not at {path}"
    return path


def run_cli(*args, check=True):
    r = subprocess.run([cli_binary(), *map(str, args)], capture_output=True, text=True)
    if check:
        assert r.returncode == 0, f"ckptconv {' '.join(map(str, args))}: {r.returncode}\n{r.stderr}"
    return r


SMALL = ["--layers", "2", "--experts", "4", "--hidden", "256", "--inter", "160", "--shards", "3"]


def read_safetensors(directory):
    """{name: (dtype, shape, bytes)} of every .safetensors file in `directory`: 8-byte
    little-endian header length, JSON header, data (written independently of the code under test)."""
    out = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        data = path.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        base = 8 + n
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            assert name not in out, f"{name} in two shards"
            out[name] = (entry["dtype"], tuple(entry["shape"]), data[base + begin:base + end])
    return out


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("ckptconv")


@pytest.fixture(scope="session")
def fp8(work):
    """A small MiniMax-M2-style HF FP8 checkpoint (3 shards)."""
    d = work / "fp8"
    run_cli("synth", "--family", "minimax_m2", "--out", d, *SMALL)
    return d


@pytest.fixture(scope="session")
def cli_out(work, fp8):
    """The command's conversion of a checkpoint, memoized: cli_out(src, "--to", "native") -> dir."""
    made = {}

    def convert(src, *args):
        key = (str(src), args)
        if key not in made:
            d = work / f"cli-{len(made)}"
            run_cli("convert", "--in", src, "--out", d, *args)
            made[key] = d
        return made[key]

    return convert


@pytest.fixture(scope="session")
def native(cli_out, fp8):
    """The FP8 checkpoint converted to native BF16 by the command."""
    return cli_out(fp8, "--to", "native")
