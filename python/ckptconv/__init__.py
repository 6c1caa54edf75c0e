"""ckptconv: convert safetensors checkpoints between the HuggingFace layout and NeMo AutoModel's
native layout, and dequantize FP8 — from Python, over the same library as the ``ckptconv`` command.

Two entry points:

``convert(input, output, **options)``
    What ``ckptconv convert`` does (same options, same output, same errors); returns a summary
    dict. The GIL is released while it runs; Ctrl-C stops it.

``open(path, **options).tensors(**options)``
    Streams every converted tensor as ``(name, array)`` without writing anything: one tensor is
    assembled and handed over at a time, so memory is the budget plus the few tensors being
    assembled plus what the caller keeps. Arrays are numpy views over the assembled bytes (no
    copy). ``numpy`` has no bfloat16, so BF16 tensors arrive as ``uint16`` arrays and FP8 / E8M0
    ones as ``uint8``; ``Checkpoint.plan()`` (or ``.dtypes()``) names each tensor's safetensors
    dtype, ``bf16_to_float32`` widens BF16 exactly, and ``torch=True`` yields torch tensors of the
    real dtype instead.

Options (both): to ("dequant" | "native" | "hf"), family ("auto" or a family name), dtype ("bf16" |
"f16" | "f32"), mtp ("auto" | "on" | "off"), ep_rank (None or int), ep_size (int), quantize ("none" |
"placeholder" | "real"), max_shard_size and memory_budget (bytes, or "5GB" / "1GiB" strings),
threads (0: all cores), io ("mmap" | "pread"), remote (None, or a dict for an s3:// or http(s)://
input: concurrency, retries, timeout_s and credentials — see remote_from_env()), device ("cpu" |
"cuda" | "cuda:N" | "auto": where dequantization and grouping run; the GPU's results are
bit-identical; a GPU that cannot be used is an Error of kind "usage" saying why).

Every failure of the library raises ``ckptconv.Error`` (a RuntimeError) whose ``str`` is the one
line ``ckptconv`` prints after ``ckptconv: ``, with ``.kind`` ("usage", "invalid_input", "io",
"other") and ``.exit_code`` (2, 3, 4, 1) — the command's exit status for that failure.
"""

from __future__ import annotations

import atexit
import os
import resource
import time
import weakref
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple

from . import _ckptconv
from ._ckptconv import Error

__all__ = [
    "Checkpoint",
    "Error",
    "TensorInfo",
    "TensorIterator",
    "bf16_to_float32",
    "convert",
    "open",
    "parse_size",
    "remote_from_env",
    "version",
]

__version__ = _ckptconv.version()

# The conversion options and their defaults: `ckptconv convert`'s.
_DEFAULTS: Dict[str, Any] = {
    "to": "dequant",
    "family": "auto",
    "dtype": "bf16",
    "mtp": "auto",
    "ep_rank": None,
    "ep_size": 1,
    "quantize": "none",
    "max_shard_size": "5GB",
    "threads": 0,
    "memory_budget": "1GiB",
    "io": "mmap",
    "remote": None,
    "device": "cpu",
}


def remote_from_env(environ=None) -> Dict[str, Any]:
    """The `remote` option from the variables the command line reads: AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION (or AWS_DEFAULT_REGION),
    AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) and HF_TOKEN. The library itself never reads the
    environment: pass the result as ``remote=`` to convert() or open() for an s3:// or
    http(s):// input."""
    env = os.environ if environ is None else environ
    names = {
        "aws_access_key_id": ("AWS_ACCESS_KEY_ID",),
        "aws_secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
        "aws_session_token": ("AWS_SESSION_TOKEN",),
        "aws_region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
        "aws_endpoint_url": ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"),
        "bearer_token": ("HF_TOKEN",),
    }
    remote: Dict[str, Any] = {}
    for key, variables in names.items():
        for v in variables:
            if env.get(v):
                remote[key] = env[v]
                break
    return remote


def version() -> str:
    """The library's version, "MAJOR.MINOR.PATCH"."""
    return _ckptconv.version()


def parse_size(value, name: str = "size") -> int:
    """Bytes of a size: an int, or a string such as "5GB", "512MiB", "1e9" (Error kind usage otherwise)."""
    return _ckptconv.parse_size(value, name)


def _options(base: Dict[str, Any], overrides: Dict[str, Any], where: str) -> Dict[str, Any]:
    unknown = sorted(set(overrides) - set(_DEFAULTS))
    if unknown:
        raise TypeError(f"{where}() got unexpected keyword argument(s): {', '.join(unknown)}")
    merged = dict(base)
    merged.update(overrides)
    return merged


def _plan(path, opts: Dict[str, Any]):
    return _ckptconv.plan(
        os.fspath(path),
        to=str(opts["to"]),
        family=str(opts["family"]),
        dtype=str(opts["dtype"]),
        mtp=str(opts["mtp"]),
        ep_rank=opts["ep_rank"],
        ep_size=int(opts["ep_size"]),
        quantize=str(opts["quantize"]),
        max_shard_size=opts["max_shard_size"],
        threads=int(opts["threads"]),
        memory_budget=opts["memory_budget"],
        io=str(opts["io"]),
        remote=opts["remote"],
        device=str(opts["device"]),
    )


def _check_progress(progress):
    if progress is not None and not callable(progress):
        raise TypeError("progress must be None or a callable taking (done_bytes, total_bytes)")


# ------------------------------------------------------------------------------------------------
# convert


def convert(
    input,
    output,
    to: str = "dequant",
    family: str = "auto",
    dtype: str = "bf16",
    mtp: str = "auto",
    ep_rank: Optional[int] = None,
    ep_size: int = 1,
    quantize: str = "none",
    max_shard_size="5GB",
    threads: int = 0,
    memory_budget="1GiB",
    io: str = "mmap",
    remote: Optional[Dict[str, Any]] = None,
    device: str = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    progress: Optional[Callable[[int, int], Any]] = None,
) -> Dict[str, Any]:
    """Converts the checkpoint at `input` (a directory of shards or one .safetensors file) into the
    directory `output`, exactly as ``ckptconv convert --in input --out output`` with the same
    options would; returns a summary dict (the keys of ``ckptconv convert --json`` but
    buffers_allocated, plus quantized).

    `progress`, if given, is called from a worker thread (holding the GIL) a few times a second
    with (done_bytes, total_bytes); an exception it raises stops the run and is re-raised here.
    """
    _check_progress(progress)
    opts = dict(to=to, family=family, dtype=dtype, mtp=mtp, ep_rank=ep_rank, ep_size=ep_size,
                quantize=quantize, max_shard_size=max_shard_size, threads=threads,
                memory_budget=memory_budget, io=io, remote=remote, device=device)
    t0 = time.monotonic()
    plan = _plan(input, opts)
    t1 = time.monotonic()
    s = plan.write(os.fspath(output), bool(overwrite), bool(resume), progress)
    t2 = time.monotonic()
    execute = s.pop("execute_seconds")
    summary = {
        "input": os.fspath(input),
        "output": os.fspath(output),
        "direction": to,
        "dtype": dtype,
        **s,
        "plan_seconds": t1 - t0,
        "execute_seconds": execute,
        "total_seconds": t2 - t0,
        "output_gb_per_s": s["output_bytes"] / execute / 1e9 if execute > 0 else 0.0,
        # The whole process's peak, as the command reports its own.
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "io": io,
    }
    return summary


# ------------------------------------------------------------------------------------------------
# open / tensors


class TensorInfo(NamedTuple):
    """One output tensor of a plan. `dtype` is the safetensors dtype ("BF16", "F8_E4M3", "F32", …)."""

    name: str
    dtype: str
    shape: Tuple[int, ...]
    nbytes: int
    shard: int   # the output shard a written checkpoint puts it in
    subdir: str  # "" or, with ep_size > 1 and no ep_rank, "rank-0000", …

    @property
    def key(self) -> str:
        """The name `tensors()` yields: `name`, or "rank-NNNN/name" when every rank is planned."""
        return f"{self.subdir}/{self.name}" if self.subdir else self.name


# The numpy dtype each safetensors dtype is handed as (element-exact where numpy has the type).
NUMPY_DTYPES: Dict[str, str] = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "U32": "uint32",
    "I32": "int32", "U64": "uint64", "I64": "int64", "F16": "float16", "BF16": "uint16",
    "F32": "float32", "F64": "float64", "F8_E4M3": "uint8", "F8_E5M2": "uint8", "F8_E8M0": "uint8",
    "F8_E4M3FNUZ": "uint8", "F8_E5M2FNUZ": "uint8", "C64": "complex64",
    # F4, F6_E2M3, F6_E3M2: packed bits; handed as a flat uint8 array of the tensor's bytes.
}


def bf16_to_float32(array):
    """A BF16 tensor (the uint16 array `tensors()` yields) widened exactly to float32."""
    import numpy as np

    a = np.asarray(array)
    if a.dtype != np.uint16:
        raise TypeError(f"expected the uint16 array of a BF16 tensor, got {a.dtype}")
    return (a.astype(np.uint32) << 16).view(np.float32)


_TORCH_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64",
    "U16": "uint16", "U32": "uint32", "U64": "uint64",
    "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu",
    "F8_E4M3FNUZ": "float8_e4m3fnuz", "F8_E5M2FNUZ": "float8_e5m2fnuz", "C64": "complex64",
}


def _import_torch():
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "ckptconv: tensors(torch=True) needs PyTorch, which cannot be imported here "
            f"({e}); install torch, or use torch=False for numpy arrays"
        ) from e
    return torch


def _to_torch(torch, info: TensorInfo, array):
    """A torch tensor over the array's bytes (no copy): frombuffer(...).view(dtype).reshape(shape)."""
    name = _TORCH_DTYPES.get(info.dtype)
    dtype = getattr(torch, name, None) if name else None
    if dtype is None:  # an old torch without the type, or a sub-byte dtype: the raw bytes
        dtype, shape = torch.uint8, (info.nbytes,)
    else:
        shape = info.shape
    if info.nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    flat = torch.frombuffer(array.reshape(-1).view("uint8"), dtype=torch.uint8)
    return flat.view(dtype).reshape(shape)


_live_iterators: "weakref.WeakSet[TensorIterator]" = weakref.WeakSet()


@atexit.register
def _close_live_iterators():  # no engine thread may outlive the interpreter
    for it in list(_live_iterators):
        it.close()


class TensorIterator:
    """The converted tensors of one run, as ``(name, array)`` in the order they complete (not the
    plan's order: several tensors are assembled at once).

    Nothing is converted until the first ``next()``. The engine runs on a background thread and
    stops when it has one finished tensor waiting, so stopping early (``break``, ``close()``, the
    iterator being garbage collected, ``with`` ending) cancels the run promptly and frees what it
    held. ``info`` maps each name to its ``TensorInfo``.
    """

    def __init__(self, stream, infos: List[TensorInfo], torch_module=None):
        self._stream = stream
        self._infos = infos
        self._torch = torch_module
        self.info: Dict[str, TensorInfo] = {i.key: i for i in infos}
        _live_iterators.add(self)

    def __iter__(self) -> "TensorIterator":
        return self

    def __next__(self):
        try:
            index, array = next(self._stream)
        except BaseException:
            self._stream.close()  # the end, an error or an interrupt: the run is over
            raise
        info = self._infos[index]
        if self._torch is not None:
            return info.key, _to_torch(self._torch, info, array)
        return info.key, array

    def close(self) -> None:
        """Stops the conversion (if it runs) and frees its memory; iteration then ends."""
        self._stream.close()

    @property
    def delivered(self) -> int:
        """How many tensors were handed out so far."""
        return self._stream.delivered

    def __enter__(self) -> "TensorIterator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        stream = getattr(self, "_stream", None)
        if stream is not None:
            stream.close()


class Checkpoint:
    """A checkpoint opened for streaming conversion (``ckptconv.open``). Nothing is read until a
    method needs it: ``plan()`` and ``summary()`` read headers only; ``tensors()`` converts.
    Options given here are the defaults of every method, which may override any of them."""

    def __init__(self, path, **options):
        self.path = os.fspath(path)
        self._options = _options(_DEFAULTS, options, "open")
        self._cache: Optional[Tuple[tuple, Any]] = None  # (options key, _ckptconv.Plan)

    def __repr__(self) -> str:
        changed = {k: v for k, v in self._options.items() if v != _DEFAULTS[k]}
        extra = "".join(f", {k}={v!r}" for k, v in changed.items())
        return f"ckptconv.open({self.path!r}{extra})"

    def _conversion(self, overrides: Dict[str, Any], where: str, fresh: bool = False):
        opts = _options(self._options, overrides, where)
        key = tuple(sorted((k, repr(v)) for k, v in opts.items()))
        if self._cache is not None and self._cache[0] == key and not (fresh and self._cache[1].busy):
            return self._cache[1]
        plan = _plan(self.path, opts)
        if self._cache is None or not self._cache[1].busy:
            self._cache = (key, plan)
        return plan

    def plan(self, **options) -> List[TensorInfo]:
        """The output tensors (name, dtype, shape, nbytes, shard, subdir), in plan order, without
        converting anything."""
        return [TensorInfo(n, d, tuple(s), b, k, sub) for (_, n, d, s, b, k, sub) in
                self._conversion(options, "plan").tensors()]

    def dtypes(self, **options) -> Dict[str, str]:
        """Each output tensor's safetensors dtype, by the name `tensors()` yields."""
        return {i.key: i.dtype for i in self.plan(**options)}

    def summary(self, **options) -> Dict[str, int]:
        """Counts and bytes of the plan: input/output tensors and bytes, dequantized, quantized,
        dropped, shards."""
        return dict(self._conversion(options, "summary").summary())

    def tensors(self, names: Optional[Iterable[str]] = None, torch: bool = False,
                progress: Optional[Callable[[int, int], Any]] = None, **options) -> TensorIterator:
        """Converts and yields ``(name, array)`` for every output tensor (or those in `names`).

        Arrays are numpy views over the assembled bytes (BF16 as uint16, FP8 as uint8 — see
        ``plan()``); with ``torch=True``, torch tensors of the real dtype over the same bytes.
        `progress` is called as for ``convert``. Planning errors (a bad option, an unknown name,
        an invalid input) raise here; conversion errors raise from the iteration.
        """
        _check_progress(progress)
        torch_module = _import_torch() if torch else None
        conv = self._conversion(options, "tensors", fresh=True)
        infos = [TensorInfo(n, d, tuple(s), b, k, sub) for (_, n, d, s, b, k, sub) in conv.tensors()]
        selected = None if names is None else [str(n) for n in names]
        return TensorIterator(conv.stream(selected, progress), infos, torch_module)

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self._cache = None


def open(path, **options) -> Checkpoint:  # noqa: A001 - the package's verb, as in io.open
    """Opens the checkpoint at `path` (a directory of shards or one .safetensors file) for
    streaming conversion; `options` (those of ``convert``, less output/resume/overwrite/progress)
    become the defaults of its methods. Reads nothing yet."""
    return Checkpoint(path, **options)
