"""ckptconv.convert(): the same files, byte for byte, as `ckptconv convert` with the same options;
the same errors (kind, exit status, one-line message); progress; options checked as the command
checks them."""

import os
from pathlib import Path

import pytest

import ckptconv
from conftest import read_safetensors, run_cli


def files_of(directory):
    root = Path(directory)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("args,kwargs", [
    (["--to", "dequant"], {}),
    (["--to", "native", "--max-shard-size", "300KB"], dict(to="native", max_shard_size="300KB")),
    (["--to", "native", "--ep-size", "3"], dict(to="native", ep_size=3)),
    (["--to", "native", "--ep-rank", "1", "--ep-size", "2", "--dtype", "f16"],
     dict(to="native", ep_rank=1, ep_size=2, dtype="f16")),
])
def test_convert_writes_what_the_command_writes(work, fp8, cli_out, args, kwargs):
    ref = cli_out(fp8, *args)
    out = work / f"api-{abs(hash(tuple(args)))}"
    s = ckptconv.convert(fp8, out, threads=2, memory_budget=8 << 20, **kwargs)
    assert files_of(out) == files_of(ref)
    assert s["output"] == os.fspath(out) and s["shards"] >= 1
    assert s["output_tensors"] > 0 and s["output_bytes"] > 0 and s["execute_seconds"] >= 0


def test_export_with_real_fp8(work, native, cli_out):
    ref = cli_out(native, "--to", "hf", "--quantize", "real")
    out = work / "api-hf-real"
    s = ckptconv.convert(native, out, to="hf", quantize="real")
    assert files_of(out) == files_of(ref)
    assert s["quantized"] > 0


def test_overwrite_resume_and_progress(work, fp8, cli_out):
    ref = cli_out(fp8, "--to", "native")
    out = work / "api-again"
    calls = []
    ckptconv.convert(fp8, out, to="native", progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1][0] == calls[-1][1] > 0
    with pytest.raises(ckptconv.Error) as e:
        ckptconv.convert(fp8, out, to="native")  # not empty
    r = run_cli("convert", "--in", fp8, "--out", out, "--to", "native", check=False)
    assert (e.value.kind, e.value.exit_code) != ("other", 1)
    assert r.returncode == e.value.exit_code and r.stderr.strip() == f"ckptconv: {e.value}"
    s = ckptconv.convert(fp8, out, to="native", overwrite=True)
    assert files_of(out) == files_of(ref)
    with pytest.raises(ckptconv.Error) as e:
        ckptconv.convert(fp8, out, to="native", resume=True)  # complete: nothing to resume
    r = run_cli("convert", "--in", fp8, "--out", out, "--to", "native", "--resume", check=False)
    assert r.returncode == e.value.exit_code and r.stderr.strip() == f"ckptconv: {e.value}"


def test_an_interrupted_run_resumes(work, fp8, cli_out):
    ref = cli_out(fp8, "--to", "native", "--max-shard-size", "300KB")
    out = work / "api-interrupted"

    def stop(done, total):
        if done > total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ckptconv.convert(fp8, out, to="native", max_shard_size="300KB", memory_budget="4MiB", threads=1,
                         progress=stop)
    assert files_of(out) != files_of(ref)
    s = ckptconv.convert(fp8, out, to="native", max_shard_size="300KB", resume=True)
    assert files_of(out) == files_of(ref)
    assert s["shards"] > 1


def test_progress_exception_stops_the_run(work, fp8):
    out = work / "api-stopped"

    def stop(done, total):
        raise KeyError("enough")

    with pytest.raises(KeyError, match="enough"):
        ckptconv.convert(fp8, out, to="native", memory_budget="4MiB", threads=1, progress=stop)
    assert not any(p.suffix == ".safetensors" for p in out.glob("*")) if out.exists() else True


def test_missing_input_is_the_commands_error(work):
    missing = work / "does-not-exist"
    with pytest.raises(ckptconv.Error) as e:
        ckptconv.convert(missing, work / "out-missing")
    err = e.value
    assert err.exit_code in (3, 4) and err.kind in ("invalid_input", "io")
    assert "\n" not in str(err) and str(err)
    r = run_cli("convert", "--in", missing, "--out", work / "out-missing-cli", check=False)
    assert r.returncode == err.exit_code
    assert r.stderr.strip() == f"ckptconv: {err}"


@pytest.mark.parametrize("kwargs,flags", [
    (dict(to="sideways"), ["--to", "sideways"]),
    (dict(dtype="int4"), ["--dtype", "int4"]),
    (dict(max_shard_size="huge"), ["--max-shard-size", "huge"]),
    (dict(quantize="real"), ["--quantize", "real"]),
    (dict(to="native", ep_rank=3, ep_size=2), ["--to", "native", "--ep-rank", "3", "--ep-size", "2"]),
    (dict(memory_budget="1KiB"), ["--memory-budget", "1KiB"]),
    (dict(device="tpu"), ["--device", "tpu"]),
])
def test_bad_options_are_usage_errors(work, fp8, kwargs, flags):
    with pytest.raises(ckptconv.Error) as e:
        ckptconv.convert(fp8, work / "out-bad", **kwargs)
    assert e.value.kind == "usage" and e.value.exit_code == 2, str(e.value)
    assert "\n" not in str(e.value)
    r = run_cli("convert", "--in", fp8, "--out", work / "out-bad-cli", *flags, check=False)
    assert r.returncode == 2
    assert not (work / "out-bad").exists()


def test_sizes_accept_ints_and_strings():
    assert ckptconv.parse_size(5) == 5
    assert ckptconv.parse_size("5GB") == 5_000_000_000
    assert ckptconv.parse_size("1GiB") == 1 << 30
    for bad in ["5 parsecs", -1, 1.5, True]:
        with pytest.raises(ckptconv.Error) as e:
            ckptconv.parse_size(bad, "memory_budget")
        assert e.value.exit_code == 2


def test_output_tensors_match_the_streamed_ones(work, fp8):
    out = work / "api-stream-vs-write"
    ckptconv.convert(fp8, out, to="native")
    written = read_safetensors(out)
    streamed = {n: a.tobytes() for n, a in ckptconv.open(fp8, to="native").tensors()}
    assert streamed == {n: d for n, (_, _, d) in written.items()}


def test_remote_options_reach_the_library_and_never_its_messages(tmp_path):
    # Nothing listens on port 1: with no retries the first failed request ends the plan, and the
    # message counts one try — the dict's retries reached the client. No secret is printed.
    remote = {"retries": 0, "timeout_s": 1, "aws_access_key_id": "AKIDEXAMPLE",
              "aws_secret_access_key": "never-in-a-message", "aws_endpoint_url": "http://127.0.0.1:1"}
    for url in ("http://127.0.0.1:1/model/", "s3://bucket/model/"):
        with pytest.raises(ckptconv.Error) as e:
            ckptconv.convert(url, tmp_path / "out", remote=remote)
        assert "never-in-a-message" not in str(e.value)
        if e.value.kind == "io":
            assert "after 1 tries" in str(e.value)
        else:  # a build without libcurl reads local files only, and says so
            assert e.value.kind == "usage" and "local files only" in str(e.value)
    with pytest.raises(ckptconv.Error) as e:
        ckptconv.convert("http://127.0.0.1:1/model/", tmp_path / "out", remote={"retry": 1})
    assert e.value.kind == "usage" and "unknown key 'retry'" in str(e.value)


def test_remote_from_env_reads_the_command_lines_variables():
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "eu-west-1",
           "AWS_ENDPOINT_URL": "http://minio:9000", "HF_TOKEN": "t", "UNRELATED": "x"}
    assert ckptconv.remote_from_env(env) == {
        "aws_access_key_id": "k", "aws_secret_access_key": "s", "aws_region": "eu-west-1",
        "aws_endpoint_url": "http://minio:9000", "bearer_token": "t"}
    assert ckptconv.remote_from_env({}) == {}


def test_device_cpu_is_reported_and_an_unusable_gpu_refused(work, fp8):
    s = ckptconv.convert(fp8, work / "out-cpu", to="native", device="cpu")
    assert s["device"] == "cpu"
    if os.environ.get("CKPT_TEST_HAS_GPU"):
        return
    with pytest.raises(ckptconv.Error) as e:  # no driver or no device here, or no CUDA in the build
        ckptconv.convert(fp8, work / "out-gpu", to="native", device="cuda")
    assert e.value.kind == "usage" and "--device cuda" in str(e.value), str(e.value)
