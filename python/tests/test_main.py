"""`python3 -m ckptconv` is the command: same output, same exit status."""

import subprocess
import sys

from conftest import read_safetensors, run_cli


def run_module(*args):
    return subprocess.run([sys.executable, "-m", "ckptconv", *map(str, args)], capture_output=True, text=True)


def test_help():
    r = run_module("--help")
    assert r.returncode == 0
    assert "convert" in r.stdout and "Exit status" in r.stdout
    r = run_module("convert", "--help")
    assert r.returncode == 0 and "--memory-budget" in r.stdout


def test_convert_through_the_module(work, fp8, cli_out):
    out = work / "module-native"
    r = run_module("convert", "--in", fp8, "--out", out, "--to", "native")
    assert r.returncode == 0, r.stderr
    assert read_safetensors(out) == read_safetensors(cli_out(fp8, "--to", "native"))


def test_exit_codes_are_the_commands(work):
    args = ["convert", "--in", work / "no-such-input", "--out", work / "module-x"]
    r = run_module(*args)
    direct = run_cli(*args, check=False)
    assert r.returncode == direct.returncode and r.returncode in (3, 4), (r.returncode, r.stderr)
    assert r.stderr == direct.stderr and r.stderr.startswith("ckptconv: ") and r.stderr.count("\n") == 1
    r = run_module("convert", "--in", work, "--out", work / "module-y", "--to", "sideways")
    assert r.returncode == 2
    r = run_module("no-such-subcommand")
    assert r.returncode == 2
