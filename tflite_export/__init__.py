"""Deployment side of tfq_ext: full-integer TFLite export, verification and runtime helpers.

Modules:
    convert: Keras model -> full-integer flatbuffer (``convert``), ``ConversionError``.
    report: integer-only rule and XNNPACK delegation (``verify``, ``ConversionReport``).
    runtime: interpreters, delegation report, batched inference, latency measurement.
    inspect: human-readable listing of a flatbuffer.

Later modules (flatbuffer editing, codebook compression, Edge TPU checks) live beside these and are imported
by their own module path.

The package attributes ``convert`` and ``inspect`` are the functions, which hide the modules of the same name;
reach module-level helpers with ``from tflite_export.convert import is_qat_model``.
"""

from tflite_export.convert import ConversionError, convert
from tflite_export.inspect import inspect
from tflite_export.report import ConversionReport, verify
from tflite_export.runtime import (compare_latency, delegation_report, make_interpreter, measure_latency, run,
                                   run_raw)

__all__ = [
    "convert",
    "verify",
    "inspect",
    "ConversionReport",
    "ConversionError",
    "make_interpreter",
    "delegation_report",
    "run",
    "run_raw",
    "measure_latency",
    "compare_latency",
]
