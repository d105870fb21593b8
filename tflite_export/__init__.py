"""Deployment side of tfq_ext: full-integer TFLite export, verification and runtime helpers.

Modules:
    convert: Keras model -> full-integer flatbuffer (``convert``), ``ConversionError``.
    report: integer-only rule and XNNPACK delegation (``verify``, ``ConversionReport``).
    runtime: interpreters, delegation report, batched inference, latency measurement.
    inspect: human-readable listing of a flatbuffer.
    codebook: lossless codebook compression of int8 weights (``compress``, ``decompress``,
        ``load_interpreter``) with the ``TfqCodebookDecode`` custom op; its C kernel is in ``kernels``.
    edgetpu: static Edge TPU compatibility check (``tflite_export.edgetpu.check``).
    flatbuffer: editing finished flatbuffers with TensorFlow's generated object API.
    strip: the same file without inner tensor names and converter metadata (``strip``).

The package attributes ``convert``, ``inspect`` and ``strip`` are the functions, which hide the modules of the
same name; reach module-level helpers with ``from tflite_export.convert import is_qat_model``.
"""

from tflite_export.codebook import (CompressionReport, TensorCompression, compress, decompress, describe,
                                    is_compressed, load_interpreter)
from tflite_export.convert import ConversionError, convert
from tflite_export.edgetpu import EdgeTpuReport
from tflite_export.inspect import inspect
from tflite_export.report import ConversionReport, verify
from tflite_export.runtime import (compare_latency, delegation_report, make_interpreter, measure_latency, run,
                                   run_raw)
from tflite_export.strip import strip

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
    "compress",
    "decompress",
    "describe",
    "is_compressed",
    "load_interpreter",
    "CompressionReport",
    "TensorCompression",
    "EdgeTpuReport",
    "strip",
]
