"""Runs every reader of compressed files on fuzz cases; used by test_fuzz.py in a separate process.

``python -m tests.tflite_export.fuzz_worker CASES_DIR START RESULTS`` reads ``CASES_DIR/<i>.tflite`` from case
``START`` on, and appends one JSON line per case to ``RESULTS``; before each case it writes ``{"start": i}`` so
that the parent can attribute a crash (a signal) or a hang to the case that caused it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
from pathlib import Path


def _digest(data) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()[:16]


def _invoke(content, registerers=None) -> str:
    """Digest of the outputs for all-zero inputs, on the builtin kernels (XNNPACK's int8 rounding may differ
    from theirs by one step, and the kernel path runs decoded layers outside XNNPACK)."""
    import numpy as np

    from tflite_export import make_interpreter

    interpreter = make_interpreter(content, use_xnnpack=False,
                                   **({"custom_op_registerers": registerers} if registerers else {}))
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    interpreter.invoke()
    outputs = [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]
    return _digest(b"".join(o.tobytes() for o in outputs))


def _call(results: dict, name: str, fn, content: bytes, *, runtime: bool = False) -> None:
    """Records ``ok:<digest>``, ``ValueError`` or ``EXC:<type>: <message>`` for one reader."""
    before = _digest(content)
    try:
        value = fn(content)
        results[name] = "ok:" + (_digest(value) if isinstance(value, bytes) else str(value))
    except ValueError as exc:
        results[name] = "ValueError"
        results[name + "_message"] = str(exc)[:200]
    except Exception as exc:  # noqa: BLE001 - what the fuzz test is looking for
        kind = "runtime" if runtime else "EXC"
        results[name] = f"{kind}:{type(exc).__name__}: {str(exc)[:200]}"
    if _digest(content) != before:
        results["mutated_input"] = name


def run_case(content: bytes) -> dict:
    import tflite_export
    from tflite_export import codebook, edgetpu, kernels

    results: dict = {}
    try:
        results["layout"] = codebook.layout_of(content)
    except ValueError:
        results["layout"] = "unreadable"
    except Exception as exc:  # noqa: BLE001
        results["layout"] = f"EXC:{type(exc).__name__}: {exc}"
    _call(results, "decompress", codebook.decompress, content)
    _call(results, "native", kernels.decompress_native, content)
    _call(results, "describe", lambda c: len(codebook.describe(c)), content)
    _call(results, "verify", lambda c: tflite_export.verify(c).delegate_partitions, content)
    _call(results, "edgetpu", lambda c: edgetpu.check(c).compatible, content)
    _call(results, "strip", lambda c: tflite_export.strip(c), content)
    with contextlib.redirect_stdout(io.StringIO()):
        _call(results, "inspect", lambda c: tflite_export.inspect(c, file=io.StringIO()).integer_only, content)
    # what the loaded model computes: through Python decompress, and through the C kernel for kernel layout
    if results["decompress"].startswith("ok:"):
        _call(results, "run_decompressed", lambda c: _invoke(codebook.decompress(c)), content, runtime=True)
    if results["native"].startswith("ok:"):
        _call(results, "run_native", lambda c: _invoke(kernels.decompress_native(c)), content, runtime=True)
    if results["strip"].startswith("ok:") and results["layout"] == "dense":
        _call(results, "run_original", _invoke, content, runtime=True)
        _call(results, "run_stripped", lambda c: _invoke(tflite_export.strip(c)), content, runtime=True)
    if results["layout"] == "kernel":
        _call(results, "run_kernel", lambda c: _invoke(c, [kernels.registerer()]), content, runtime=True)
    return results


def main(argv: list[str]) -> int:
    cases, start, out = Path(argv[0]), int(argv[1]), Path(argv[2])
    count = len(list(cases.glob("*.tflite")))
    import tflite_export.kernels as kernels

    kernels.load_library("tflite")  # built once here, not inside the first case
    with out.open("a") as stream:
        for i in range(start, count):
            stream.write(json.dumps({"start": i}) + "\n")
            stream.flush()
            content = (cases / f"{i}.tflite").read_bytes()
            stream.write(json.dumps({"case": i, **run_case(content)}) + "\n")
            stream.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
