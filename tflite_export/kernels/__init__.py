"""Builds and loads the custom kernels (C/C++ sources in this folder) with the machine's compiler: TfqCodebookDecode
and the integer graph-aggregation ops (TfqSegmentSum, TfqSegmentMean, TfqGcnAggregate, TfqDegreeNorm).

The kernel is built lazily, on first use, rather than by the package's install step: its library name
carries a hash of the sources, the compile flags and the TensorFlow it links against, so an edited source or
a reinstalled TensorFlow rebuilds it, which an install-time build would miss (the Makefile's install stamp
only tracks ``pyproject.toml``). ``python -m tflite_export.kernels`` builds it ahead of time.

Libraries (``kind``):

- ``"tflite"``: ``tfq_codebook_core.c`` + ``tfq_codebook_decode_tflite.cc`` (+ ``tfq_graph_core.c`` +
  ``tfq_graph_ops_tflite.cc``), linked against TensorFlow's ``libtensorflow_cc.so.2``; registered through
  ``InterpreterWithCustomOps`` by the names :data:`REGISTERER` (codebook) and :data:`GRAPH_REGISTERER` (graph ops).
- ``"c_api_mock"``: the TFLite C API entry points (``tfq_codebook_decode_c_api.c``, and the graph ops'
  ``tfq_graph_ops_c_api.c`` over ``tfq_graph_core.c``) with a test stand-in for the C API
  (``mock_tflite_c_api.c``); TensorFlow's wheel exports no C API to test them against.
- ``"loader"``: ``tfq_codebook_core.c`` + ``tfq_loader.c``, plain C without TensorFlow: the loader that turns
  a loader-layout compressed file into the dense model (``FORMAT.md``); :func:`decompress_native` calls it.
- ``"graph"``: ``tfq_graph_core.c``, plain C: the graph ops' arithmetic, for :func:`graph_op_native` (tests).

Outputs go to ``tflite_export/kernels/build/`` (ignored by git), or to ``$TFQ_EXT_KERNEL_DIR`` /
``~/.cache/tfq_ext/kernels`` when the package folder is read-only. ``$CC`` and ``$CXX`` choose the compilers
(default ``gcc`` and ``g++``); nothing is downloaded.
"""

from __future__ import annotations

import ctypes
import hashlib
import numbers
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

__all__ = ["REGISTERER", "GRAPH_REGISTERER", "GRAPH_OPS", "KernelBuildError", "build_library", "load_library",
           "registerer", "graph_registerer", "graph_op_native", "decompress_native", "main"]

REGISTERER = "TfqCodebookDecodeRegister"
GRAPH_REGISTERER = "TfqGraphOpsRegister"
# Custom-op names of the graph ops, in the order of TfqGraphOp (tfq_graph_core.h).
GRAPH_OPS = ("TfqSegmentSum", "TfqSegmentMean", "TfqGcnAggregate", "TfqDegreeNorm")
_HERE = Path(__file__).resolve().parent
_HEADERS = ["tfq_codebook_core.h"]
_SOURCES = {
    "tflite": ["tfq_codebook_core.c", "tfq_codebook_decode_tflite.cc", "tfq_graph_core.c", "tfq_graph_ops_tflite.cc"],
    "c_api_mock": ["tfq_codebook_core.c", "tfq_codebook_decode_c_api.c", "tfq_graph_core.c", "tfq_graph_ops_c_api.c",
                   "mock_tflite_c_api.c"],
    "loader": ["tfq_codebook_core.c", "tfq_loader.c"],
    "graph": ["tfq_codebook_core.c", "tfq_graph_core.c"],
}
# Headers hashed for a kind besides _HEADERS (kept per kind so that adding one rebuilds only its kind).
_EXTRA_HEADERS = {"loader": ["tfq_loader.h"], "graph": ["tfq_graph_core.h"],
                  "tflite": ["tfq_graph_core.h", "tfq_tflite_abi.h"], "c_api_mock": ["tfq_graph_core.h", "tfq_c_api.h"]}
# Kinds built and linked with the C compiler alone (no C++ compiler needed).
_C_ONLY = {"loader", "graph"}
_CFLAGS = ["-std=c11", "-O2", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra"]
_CXXFLAGS = ["-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra", "-fno-exceptions"]
# Per-source flags: the graph ops' sum and requantization loops vectorize at -O3 (gcc 12's -O2 leaves them scalar).
_EXTRA_FLAGS = {"tfq_graph_core.c": ["-O3"]}
_LOCK = threading.Lock()
_LOADED: dict[str, ctypes.CDLL] = {}


class KernelBuildError(RuntimeError):
    """The kernel library could not be compiled or loaded; the message holds the compiler's output."""


def _compiler(env_name: str, default: str) -> list[str]:
    command = shlex.split(os.environ.get(env_name, default))
    if not command or shutil.which(command[0]) is None:
        raise KernelBuildError(
            f"No {'C++' if env_name == 'CXX' else 'C'} compiler found to build the TfqCodebookDecode kernel: "
            f"`{command[0] if command else ''}` is not on PATH. Install gcc/g++ (e.g. `apt-get install "
            f"build-essential`) or set ${env_name}. Received: {env_name}={os.environ.get(env_name)!r}")
    return command


def _tensorflow_dir() -> str:
    """The installed ``tensorflow`` package folder (which holds ``libtensorflow_cc.so.2``), found without
    importing TensorFlow, so that a build does not pay for the import."""
    import importlib.util

    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        raise KernelBuildError("The `tensorflow` package is not installed; it provides libtensorflow_cc.so.2, "
                               "which the TfqCodebookDecode kernel links against.")
    return next(iter(spec.submodule_search_locations))


def _link_flags(kind: str) -> list[str]:
    if kind != "tflite":
        return ["-lm"] if kind in ("graph", "c_api_mock") else []  # tfq_graph_core.c uses frexp / llround
    tf_dir = _tensorflow_dir()
    if not os.path.exists(os.path.join(tf_dir, "libtensorflow_cc.so.2")):
        raise KernelBuildError(f"libtensorflow_cc.so.2 is missing from {tf_dir}; the kernel links against it. "
                               f"Reinstall tensorflow (`pip install tensorflow==2.21.*`).")
    # The library is linked by its soname so that it binds to the copy TensorFlow already loaded.
    return [f"-L{tf_dir}", "-l:libtensorflow_cc.so.2", f"-Wl,-rpath,{tf_dir}"]


def _output_dir() -> Path:
    override = os.environ.get("TFQ_EXT_KERNEL_DIR")
    if override:
        return Path(override)
    local = _HERE / "build"
    try:
        local.mkdir(exist_ok=True)
        if os.access(local, os.W_OK):
            return local
    except OSError:
        pass
    return Path.home() / ".cache" / "tfq_ext" / "kernels"


def _check_kind(kind: str) -> str:
    if kind not in _SOURCES:
        raise ValueError(f"`kind` must be one of {sorted(_SOURCES)}. Received: kind={kind!r}")
    return kind


def build_library(kind: str = "tflite", *, force: bool = False) -> Path:
    """Compiles a kernel library unless an up-to-date one exists, and returns its path.

    Args:
        kind: ``"tflite"`` (the kernel for TensorFlow's interpreter), ``"c_api_mock"`` (the C API entry
            point over a test stand-in) or ``"loader"`` (the C loader of :func:`decompress_native`).
        force: Rebuild even if the library exists.

    Returns:
        Path of the shared library.

    Raises:
        KernelBuildError: No compiler, TensorFlow's library is missing, or compilation failed.
    """
    kind = _check_kind(kind)
    cc = _compiler("CC", "gcc")
    cxx = None if kind in _C_ONLY else _compiler("CXX", "g++")
    link = _link_flags(kind)
    digest = hashlib.sha256()
    for name in _HEADERS + _EXTRA_HEADERS.get(kind, []) + _SOURCES[kind]:
        digest.update(name.encode() + b"\0" + (_HERE / name).read_bytes())
    digest.update(repr((cc, cxx, _CFLAGS, _CXXFLAGS, _EXTRA_FLAGS, link)).encode())
    out_dir = _output_dir()
    target = out_dir / f"libtfq_{kind}-{digest.hexdigest()[:16]}.so"
    if target.exists() and not force:
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
        objects = []
        for name in _SOURCES[kind]:
            obj = os.path.join(scratch, name + ".o")
            flags = (_CXXFLAGS if name.endswith(".cc") else _CFLAGS) + _EXTRA_FLAGS.get(name, [])
            _run([*(cxx if name.endswith(".cc") else cc), *flags, f"-I{_HERE}", "-c", str(_HERE / name),
                  "-o", obj])
            objects.append(obj)
        partial = os.path.join(scratch, target.name)
        _run([*(cc if cxx is None else cxx), "-shared", *objects, "-o", partial, *link])
        os.replace(partial, target)  # atomic: a concurrent build or load never sees half a file
    for stale in out_dir.glob(f"libtfq_{kind}-*.so"):
        if stale != target:
            stale.unlink(missing_ok=True)  # builds of older sources; a process that loaded one keeps its copy
    return target


def _run(command: list[str]) -> None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelBuildError(f"Could not run `{shlex.join(command)}`: {exc}") from exc
    if result.returncode != 0:
        raise KernelBuildError(f"Building the TfqCodebookDecode kernel failed (exit {result.returncode}):\n"
                               f"$ {shlex.join(command)}\n{result.stderr.strip()}")


def load_library(kind: str = "tflite") -> ctypes.CDLL:
    """Builds if needed and loads a kernel library once per process.

    The ``"tflite"`` library is loaded with ``RTLD_GLOBAL`` after TensorFlow, so that TensorFlow's interpreter
    finds :data:`REGISTERER` with ``dlsym`` and the library binds to TensorFlow's own TFLite runtime.
    """
    kind = _check_kind(kind)
    with _LOCK:
        if kind not in _LOADED:
            if kind == "tflite":
                from tfq_ext._keras import tf  # noqa: F401  (loads libtensorflow_cc.so.2 first)
            path = build_library(kind)
            # The loader is called through ctypes only: keep its symbols out of the global namespace.
            mode = ctypes.RTLD_LOCAL if kind in ("loader", "graph") else ctypes.RTLD_GLOBAL
            try:
                library = ctypes.CDLL(str(path), mode=mode)
            except OSError as exc:
                raise KernelBuildError(f"Could not load the kernel library {path}: {exc}") from exc
            if kind == "loader":
                _declare_loader(library)
            if kind == "graph":
                _declare_graph(library)
            _LOADED[kind] = library
        return _LOADED[kind]


def registerer() -> str:
    """Loads the kernel and returns the registerer name for ``custom_op_registerers``."""
    load_library("tflite")
    return REGISTERER


def graph_registerer() -> str:
    """Loads the kernels and returns the graph ops' registerer name for ``custom_op_registerers``."""
    load_library("tflite")
    return GRAPH_REGISTERER


def _declare_graph(library: ctypes.CDLL) -> None:
    i64, i32, dbl, ptr = ctypes.c_int64, ctypes.c_int32, ctypes.c_double, ctypes.c_void_p
    library.tfq_graph_run_buffer.argtypes = [ctypes.c_int, ptr, i64, i64, ptr, i64, ptr, i64, dbl, i32, dbl, i32,
                                             ptr, i64, ctypes.c_char_p, ctypes.c_size_t]
    library.tfq_graph_run_buffer.restype = ctypes.c_int


def graph_op_native(op: str, data, segment_ids, num_segments: int, *, gather=None, in_scale: float = 1.0,
                    in_zero: int = 0, out_scale: float = 1.0, out_zero: int = 0):
    """Runs one graph op's C arithmetic (``tfq_graph_core.c``) on numpy arrays: the reference the TFLite kernel
    and the tests share. ``data`` is int8 ``[M, ...]``; returns int8 ``[num_segments, ...]`` (TfqDegreeNorm:
    ``data``'s shape; ``num_segments`` is then ignored).

    Raises:
        ValueError: an unknown op, or the core refused the input (its message: a bad index, size or scale).
    """
    import numpy as np

    if op not in GRAPH_OPS:
        raise ValueError(f"`op` must be one of {GRAPH_OPS}. Received: op={op!r}")
    data = np.ascontiguousarray(data, dtype=np.int8)
    if data.ndim < 1:
        raise ValueError(f"`data` must have at least one dimension. Received shape {data.shape}")
    ids = np.ascontiguousarray(segment_ids, dtype=np.int32).reshape(-1)
    index = GRAPH_OPS.index(op)
    segments = data.shape[0] if op == "TfqDegreeNorm" else int(num_segments)
    inner = int(np.prod(data.shape[1:], dtype=np.int64))
    out = np.zeros((max(segments, 0),) + data.shape[1:], np.int8)
    gather_arr = None if gather is None else np.ascontiguousarray(gather, dtype=np.int32).reshape(-1)
    if gather_arr is not None and gather_arr.shape != ids.shape:
        raise ValueError(f"`gather` must have one entry per segment id ({ids.size}). Received {gather_arr.size}")
    err = ctypes.create_string_buffer(_ERR_LEN)
    status = load_library("graph").tfq_graph_run_buffer(
        index, data.ctypes.data, data.shape[0], inner, ids.ctypes.data, ids.size,
        None if gather_arr is None else gather_arr.ctypes.data, segments, float(in_scale), int(in_zero),
        float(out_scale), int(out_zero), out.ctypes.data, out.size, err, _ERR_LEN)
    if status != 0:
        raise ValueError(err.value.decode("utf-8", "replace"))
    return out


_ERR_LEN = 512


def _declare_loader(library: ctypes.CDLL) -> None:
    """ctypes signatures of the ``tfq_loader.h`` functions."""
    size_t, size_p, char_p = ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t), ctypes.c_char_p
    library.tfq_default_max_bytes.argtypes = [size_t]
    library.tfq_default_max_bytes.restype = size_t
    library.tfq_decompressed_size.argtypes = [char_p, size_t, size_t, size_p, char_p, size_t]
    library.tfq_decompressed_size.restype = ctypes.c_int
    library.tfq_decompress_into.argtypes = [char_p, size_t, size_t, ctypes.c_void_p, size_t, size_p, char_p,
                                            size_t]
    library.tfq_decompress_into.restype = ctypes.c_int
    library.tfq_decompress.argtypes = [char_p, size_t, size_t, ctypes.POINTER(ctypes.c_void_p), size_p,
                                       char_p, size_t]
    library.tfq_decompress.restype = ctypes.c_int
    library.tfq_free.argtypes = [ctypes.c_void_p]
    library.tfq_free.restype = None


def decompress_native(data: bytes, *, max_bytes: int | None = None) -> bytes:
    """The dense model of a loader-layout compressed file, decoded by the C loader (``tfq_loader.c``).

    The same bytes as :func:`tflite_export.decompress` gives for a loader-layout file, from the code an
    Android app ships (see ``README.md`` in this folder). A file that is not compressed, or is loaded
    already (as long as its descriptor's ``dense_size``), comes back unchanged; a kernel-layout file is
    refused (use :func:`tflite_export.decompress`, or compress with ``layout="loader"``). The input is never
    modified.

    Args:
        data: The bytes of the compressed TFLite file (``bytes``, ``bytearray`` or ``memoryview``).
        max_bytes: Upper bound on the dense model's size, checked before anything is allocated; None gives
            the loader's default ``max(16 MiB, 256 * len(data))``, which stops decompression bombs.

    Returns:
        The dense TFLite flatbuffer.

    Raises:
        TypeError: ``data`` is not bytes-like, or ``max_bytes`` is not an integer.
        ValueError: ``max_bytes`` < 1, or the file is malformed (the message is the loader's, naming the
            entry or buffer at fault).
        KernelBuildError: The loader library could not be built.
    """
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)  # a private copy: the caller's object is never handed to C
    if not isinstance(data, bytes):
        hint = " To read a file, pass its bytes (`open(path, 'rb').read()`)." if isinstance(
            data, (str, os.PathLike)) else ""
        raise TypeError(f"`data` must be the bytes of a TFLite file (bytes, bytearray or memoryview).{hint} "
                        f"Received: data of type {type(data).__name__}")
    if max_bytes is not None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, numbers.Integral):
            raise TypeError(f"`max_bytes` must be an integer number of bytes or None (the default bound). "
                            f"Received: max_bytes={max_bytes!r} (type {type(max_bytes).__name__})")
        largest = 2 ** (8 * ctypes.sizeof(ctypes.c_size_t)) - 1
        if not 1 <= max_bytes <= largest:
            raise ValueError(f"`max_bytes` must be between 1 and {largest} (or None for the default bound). "
                             f"Received: max_bytes={max_bytes}")
        max_bytes = int(max_bytes)
    library = load_library("loader")
    out = ctypes.c_void_p()
    out_len = ctypes.c_size_t()
    err = ctypes.create_string_buffer(_ERR_LEN)
    status = library.tfq_decompress(data, len(data), max_bytes or 0, ctypes.byref(out), ctypes.byref(out_len),
                                    err, _ERR_LEN)
    if status != 0:
        raise ValueError(f"`data` cannot be decompressed: {err.value.decode('utf-8', 'replace')}. "
                         f"Received: data of {len(data)} bytes")
    try:
        return ctypes.string_at(out.value, out_len.value) if out_len.value else b""
    finally:
        library.tfq_free(out)


def main(argv: list[str] | None = None) -> int:
    """``python -m tflite_export.kernels [--force]``: builds the kernel libraries and prints their paths."""
    args = sys.argv[1:] if argv is None else argv
    force = "--force" in args
    for kind in _SOURCES:
        print(build_library(kind, force=force))
    return 0
