"""ckptconv.open(...).tensors(): every streamed tensor is the tensor `ckptconv convert` writes,
byte for byte, with the plan's dtype and shape; stopping early cancels promptly and frees
everything; memory stays bounded while iterating; errors arrive typed."""

import gc
import time

import numpy as np
import pytest

import ckptconv
from conftest import SMALL, read_safetensors, run_cli

NP = {"BF16": np.uint16, "F32": np.float32, "F16": np.float16, "F8_E4M3": np.uint8, "U8": np.uint8}


def check_same(stream_items, reference, plan):
    """The streamed (name, array) pairs are exactly the reference checkpoint's tensors."""
    seen = set()
    for name, array in stream_items:
        assert name not in seen, f"{name} delivered twice"
        seen.add(name)
        dtype, shape, data = reference[name]
        assert plan[name].dtype == dtype and plan[name].shape == shape
        assert isinstance(array, np.ndarray)
        assert array.dtype == NP[dtype], (name, array.dtype, dtype)
        assert array.shape == shape
        assert array.flags.c_contiguous
        assert array.tobytes() == data, f"{name}: bytes differ"
    assert seen == set(reference)


@pytest.mark.parametrize("threads", [1, 3])
def test_native_tensors_are_the_commands(fp8, native, threads):
    ck = ckptconv.open(fp8, to="native", threads=threads, memory_budget="4MiB")
    plan = {i.key: i for i in ck.plan()}
    check_same(ck.tensors(), read_safetensors(native), plan)
    assert ck.summary()["output_tensors"] == len(plan)
    assert "model.layers.1.mlp.experts.gate_and_up_projs" in plan
    assert plan["model.layers.1.mlp.experts.gate_and_up_projs"].shape == (4, 256, 320)


def test_dequant_tensors_are_the_commands(fp8, cli_out):
    ref = read_safetensors(cli_out(fp8, "--to", "dequant"))
    ck = ckptconv.open(fp8)  # to="dequant" is the default, as for `ckptconv convert`
    check_same(ck.tensors(threads=2, memory_budget=4 << 20), ref, {i.key: i for i in ck.plan()})


def test_hf_real_fp8_export_is_the_commands(native, cli_out):
    ref = read_safetensors(cli_out(native, "--to", "hf", "--quantize", "real"))
    assert any(d == "F8_E4M3" for d, _, _ in ref.values())
    ck = ckptconv.open(native, to="hf", quantize="real", memory_budget="4MiB", threads=2)
    check_same(ck.tensors(), ref, {i.key: i for i in ck.plan()})
    assert ck.summary()["quantized"] > 0


def test_f32_output_and_dtypes(fp8, cli_out):
    ref = read_safetensors(cli_out(fp8, "--to", "native", "--dtype", "f32"))
    ck = ckptconv.open(fp8, to="native", dtype="f32")
    assert ck.dtypes() == {n: d for n, (d, _, _) in ref.items()}
    check_same(ck.tensors(), ref, {i.key: i for i in ck.plan()})


def test_names_selects_and_bf16_widens(fp8, native):
    ref = read_safetensors(native)
    want = ["model.layers.0.mlp.experts.down_projs", "model.embed_tokens.weight"]
    ck = ckptconv.open(fp8, to="native")
    got = dict(ck.tensors(names=want))
    assert sorted(got) == sorted(want)
    for n in want:
        assert got[n].tobytes() == ref[n][2]
    w = ckptconv.bf16_to_float32(got[want[0]])
    assert w.dtype == np.float32 and w.shape == got[want[0]].shape
    # Widening is exact: the high half of each float32 is the BF16 pattern, the low half zero.
    assert np.array_equal((w.view(np.uint32) >> 16).astype(np.uint16), got[want[0]])
    assert dict(ck.tensors(names=[])) == {}
    with pytest.raises(ckptconv.Error) as e:
        ck.tensors(names=["no.such.tensor"])
    assert e.value.kind == "usage" and e.value.exit_code == 2 and "no.such.tensor" in str(e.value)


def test_arrays_are_zero_copy_views_that_own_their_bytes(fp8):
    ck = ckptconv.open(fp8, to="native")
    gc.collect()
    baseline = ckptconv._ckptconv.buffer_stats()["live"]
    name, a = next(iter(ck.tensors(names=["model.layers.0.mlp.experts.down_projs"])))
    assert ckptconv._ckptconv.buffer_stats()["live"] == baseline + 1  # the iterator is gone: only a
    assert not a.flags.owndata and a.base is not None  # a view over the capsule-owned buffer
    before = ckptconv._ckptconv.buffer_stats()["live"]
    b = a.reshape(-1)
    del a
    gc.collect()
    assert ckptconv._ckptconv.buffer_stats()["live"] == before  # b still holds the buffer
    b[:] = 1  # writable
    del b
    gc.collect()
    assert ckptconv._ckptconv.buffer_stats()["live"] == before - 1


def test_breaking_out_cancels_promptly_and_iterating_again_works(fp8, native):
    ck = ckptconv.open(fp8, to="native", threads=2, memory_budget="4MiB")
    for _ in range(3):
        t0 = time.monotonic()
        for name, array in ck.tensors():
            break
        del name, array
        gc.collect()
        assert time.monotonic() - t0 < 10
        assert ckptconv._ckptconv.buffer_stats()["live"] == 0  # everything it assembled is freed
    it = ck.tensors()
    next(it)
    it.close()  # explicit close
    assert list(it) == []
    with ck.tensors() as it:  # context manager
        next(it)
    # A generator dropped without being iterated at all, and one never exhausted but collected.
    ck.tensors()
    it = ck.tensors()
    next(it)
    del it
    gc.collect()
    assert ckptconv._ckptconv.buffer_stats()["live"] == 0
    check_same(ck.tensors(), read_safetensors(native), {i.key: i for i in ck.plan()})


def test_two_iterators_of_one_checkpoint_at_once(fp8, native):
    ck = ckptconv.open(fp8, to="native", threads=2)
    ref = read_safetensors(native)
    a, b = ck.tensors(), ck.tensors()
    got_a, got_b = {}, {}
    for (na, xa), (nb, xb) in zip(a, b):
        got_a[na], got_b[nb] = xa.tobytes(), xb.tobytes()
    got_a.update((n, x.tobytes()) for n, x in a)
    got_b.update((n, x.tobytes()) for n, x in b)
    assert got_a == got_b == {n: d for n, (_, _, d) in ref.items()}


def test_memory_is_bounded_while_iterating(work):
    # Enough tensors that an iterator which converted everything up front would hold far more
    # than one in flight per pipeline slot.
    src = work / "fp8-layers"
    run_cli("synth", "--family", "minimax_m2", "--out", src, "--layers", "8", "--experts", "8",
            "--hidden", "256", "--inter", "256", "--shards", "2")
    ck = ckptconv.open(src, to="native", threads=1, memory_budget="4MiB")
    plan = ck.plan()
    total = sum(i.nbytes for i in plan)
    largest = max(i.nbytes for i in plan)
    stats = ckptconv._ckptconv.buffer_stats
    assert stats()["live"] == 0
    ckptconv._ckptconv.reset_buffer_peak()
    count = 0
    peak_live = 0
    for name, array in ck.tensors():
        count += 1
        peak_live = max(peak_live, stats()["live"])
        del array
    assert count == len(plan) > 60
    s = stats()
    # threads=1 under a 4 MiB budget: 2 items in flight, so at most 2 tensors being assembled, one
    # blocked delivering, one queued and the one the loop holds.
    assert s["peak"] <= 6, s
    assert peak_live <= 6
    assert s["peak_bytes"] <= 6 * largest and s["peak_bytes"] < total / 4, (s, total)
    assert s["live"] == 0

    # Keeping every array holds every tensor: the counters do see what the caller keeps.
    kept = list(ck.tensors())
    assert stats()["live"] == len(plan) and stats()["live_bytes"] == total
    del kept
    gc.collect()
    assert stats()["live"] == 0


def test_progress_is_reported_and_its_exception_stops_the_run(fp8):
    ck = ckptconv.open(fp8, to="native", threads=2, memory_budget="4MiB")
    calls = []
    list(ck.tensors(progress=lambda done, total: calls.append((done, total))))
    total = ck.summary()["output_bytes"]
    assert calls and calls[-1] == (total, total)
    assert all(t == total and 0 <= d <= total for d, t in calls)

    def boom(done, total):
        raise ValueError("stop here")

    gc.collect()
    baseline = ckptconv._ckptconv.buffer_stats()["live"]
    with pytest.raises(ValueError, match="stop here"):
        for _ in ck.tensors(progress=boom):
            pass
    assert ckptconv._ckptconv.buffer_stats()["live"] <= baseline + 1  # `_`, if any tensor came
    assert len(list(ck.tensors())) == len(ck.plan())


def test_errors_are_typed(work, fp8):
    with pytest.raises(ckptconv.Error) as e:
        ckptconv.open(work / "missing").plan()
    assert e.value.exit_code in (3, 4) and e.value.kind in ("invalid_input", "io")
    assert "\n" not in str(e.value) and "missing" in str(e.value)
    assert isinstance(e.value, RuntimeError)
    for bad in [dict(to="sideways"), dict(dtype="f8"), dict(mtp="maybe"), dict(io="dma"),
                dict(memory_budget="lots"), dict(memory_budget=1024), dict(to="native", ep_size=2, ep_rank=2),
                dict(quantize="real"), dict(threads=-1), dict(to="native", family="no_such_family")]:
        with pytest.raises(ckptconv.Error) as e:
            ckptconv.open(fp8, **bad).plan()
        assert e.value.kind == "usage" and e.value.exit_code == 2, (bad, e.value.kind, str(e.value))
    with pytest.raises(TypeError):
        ckptconv.open(fp8, colour="blue")
    # An input that breaks the safetensors format: exit 3, and the command's very line.
    bad = work / "bad-input"
    bad.mkdir(exist_ok=True)
    (bad / "model.safetensors").write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    with pytest.raises(ckptconv.Error) as e:
        ckptconv.open(bad).plan()
    assert e.value.exit_code == 3 and e.value.kind == "invalid_input"
    r = run_cli("convert", "--in", bad, "--out", work / "never", check=False)
    assert r.returncode == 3 and r.stderr.strip() == f"ckptconv: {e.value}"


def test_torch_without_torch_is_a_clear_error(fp8):
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torch is installed here")
    gc.collect()
    baseline = ckptconv._ckptconv.buffer_stats()["live"]
    with pytest.raises(ImportError, match=r"torch=True\) needs PyTorch"):
        ckptconv.open(fp8, to="native").tensors(torch=True)
    assert ckptconv._ckptconv.buffer_stats()["live"] == baseline


def test_every_expert_parallel_rank_at_once(fp8, cli_out):
    ref_dir = cli_out(fp8, "--to", "native", "--ep-size", "3")
    ref = {}
    for rank in sorted(p for p in ref_dir.iterdir() if p.is_dir()):
        ref.update({f"{rank.name}/{n}": v for n, v in read_safetensors(rank).items()})
    assert len(ref) > 0 and all(k.startswith("rank-000") for k in ref)
    ck = ckptconv.open(fp8, to="native", ep_size=3, threads=2)
    plan = {i.key: i for i in ck.plan()}
    assert set(plan) == set(ref)
    check_same(ck.tensors(), ref, plan)
    one = "rank-0001/model.layers.0.mlp.experts.down_projs"
    assert [n for n, _ in ck.tensors(names=[one])] == [one]
