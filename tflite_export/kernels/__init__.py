"""Builds and loads the TfqCodebookDecode kernel (C/C++ sources in this folder) with the machine's compiler.

The kernel is built lazily, on first use, rather than by the package's install step: its library name
carries a hash of the sources, the compile flags and the TensorFlow it links against, so an edited source or
a reinstalled TensorFlow rebuilds it, which an install-time build would miss (the Makefile's install stamp
only tracks ``pyproject.toml``). ``python -m tflite_export.kernels`` builds it ahead of time.

Libraries (``kind``):

- ``"tflite"``: ``tfq_codebook_core.c`` + ``tfq_codebook_decode_tflite.cc``, linked against TensorFlow's
  ``libtensorflow_cc.so.2``; registered through ``InterpreterWithCustomOps`` by the name :data:`REGISTERER`.
- ``"c_api_mock"``: the TFLite C API entry point (``tfq_codebook_decode_c_api.c``) with a test stand-in for
  the C API (``mock_tflite_c_api.c``); TensorFlow's wheel exports no C API to test it against.

Outputs go to ``tflite_export/kernels/build/`` (ignored by git), or to ``$TFQ_EXT_KERNEL_DIR`` /
``~/.cache/tfq_ext/kernels`` when the package folder is read-only. ``$CC`` and ``$CXX`` choose the compilers
(default ``gcc`` and ``g++``); nothing is downloaded.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

__all__ = ["REGISTERER", "KernelBuildError", "build_library", "load_library", "registerer", "main"]

REGISTERER = "TfqCodebookDecodeRegister"
_HERE = Path(__file__).resolve().parent
_HEADERS = ["tfq_codebook_core.h"]
_SOURCES = {
    "tflite": ["tfq_codebook_core.c", "tfq_codebook_decode_tflite.cc"],
    "c_api_mock": ["tfq_codebook_core.c", "tfq_codebook_decode_c_api.c", "mock_tflite_c_api.c"],
}
_CFLAGS = ["-std=c11", "-O2", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra"]
_CXXFLAGS = ["-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra", "-fno-exceptions"]
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
        return []
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
        kind: ``"tflite"`` (the kernel for TensorFlow's interpreter) or ``"c_api_mock"`` (the C API entry
            point over a test stand-in).
        force: Rebuild even if the library exists.

    Returns:
        Path of the shared library.

    Raises:
        KernelBuildError: No compiler, TensorFlow's library is missing, or compilation failed.
    """
    kind = _check_kind(kind)
    cc, cxx = _compiler("CC", "gcc"), _compiler("CXX", "g++")
    link = _link_flags(kind)
    digest = hashlib.sha256()
    for name in _HEADERS + _SOURCES[kind]:
        digest.update(name.encode() + b"\0" + (_HERE / name).read_bytes())
    digest.update(repr((cc, cxx, _CFLAGS, _CXXFLAGS, link)).encode())
    out_dir = _output_dir()
    target = out_dir / f"libtfq_{kind}-{digest.hexdigest()[:16]}.so"
    if target.exists() and not force:
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as scratch:
        objects = []
        for name in _SOURCES[kind]:
            obj = os.path.join(scratch, name + ".o")
            flags = _CXXFLAGS if name.endswith(".cc") else _CFLAGS
            _run([*(cxx if name.endswith(".cc") else cc), *flags, f"-I{_HERE}", "-c", str(_HERE / name),
                  "-o", obj])
            objects.append(obj)
        partial = os.path.join(scratch, target.name)
        _run([*cxx, "-shared", *objects, "-o", partial, *link])
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
            try:
                _LOADED[kind] = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            except OSError as exc:
                raise KernelBuildError(f"Could not load the kernel library {path}: {exc}") from exc
        return _LOADED[kind]


def registerer() -> str:
    """Loads the kernel and returns the registerer name for ``custom_op_registerers``."""
    load_library("tflite")
    return REGISTERER


def main(argv: list[str] | None = None) -> int:
    """``python -m tflite_export.kernels [--force]``: builds the kernel libraries and prints their paths."""
    args = sys.argv[1:] if argv is None else argv
    force = "--force" in args
    for kind in _SOURCES:
        print(build_library(kind, force=force))
    return 0
