"""Human-readable listing of a TFLite flatbuffer: ``inspect``.

Prints the nodes in execution order with operand dtypes and shapes and whether XNNPACK runs each, the
constant buffers (weights, biases, shapes) with their sizes, then the :class:`ConversionReport` table (I/O
quantization, op and dtype histograms, delegation summary).

A compressed file (``tflite_export.compress``, either layout) is decompressed in memory: its compressed
weights are listed first, and the listing is of the dense model it loads as.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

import numpy as np

from tflite_export._graph import StaticGraph, check_flatbuffer, dtype_name, load_static_graph
from tflite_export.report import ConversionReport, build_report, read_compressed, with_compression
from tflite_export.runtime import _delegated_nodes

__all__ = ["inspect"]


def _read(path_or_bytes: Any) -> bytes:
    """Bytes of a flatbuffer given as bytes or a path, with errors that name the argument."""
    if isinstance(path_or_bytes, (str, os.PathLike)):
        path = os.fspath(path_or_bytes)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"`path_or_bytes` names no file. Received: path_or_bytes={path_or_bytes!r}")
        with open(path, "rb") as f:
            content = f.read()
        try:
            return check_flatbuffer(content, "path_or_bytes")
        except ValueError:
            raise ValueError(
                f"`path_or_bytes` is not a TFLite flatbuffer: bytes 4..8 of the file are {content[4:8]!r}, "
                f"not b'TFL3'. Received: path_or_bytes={path_or_bytes!r}") from None
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return check_flatbuffer(path_or_bytes, "path_or_bytes")
    raise TypeError(f"`path_or_bytes` must be a file path or the bytes of a TFLite flatbuffer. "
                    f"Received: path_or_bytes={path_or_bytes!r:.80} (type {type(path_or_bytes).__name__})")


def _operand(graph: StaticGraph, index: int) -> str:
    details = graph.tensors[index]
    shape = ",".join(str(int(s)) for s in details["shape_signature"])
    return f"{dtype_name(details['dtype'])}[{shape}]"


def inspect(path_or_bytes: Any, file: TextIO | None = None) -> ConversionReport:
    """Prints what a flatbuffer holds and returns its :class:`ConversionReport`.

    The report's integer-only check allows a float interface (``float_io=True``) when a graph input or output
    is float, since such a file was converted that way on purpose; the float tensors inside are still flagged.

    Args:
        path_or_bytes: A path to a ``.tflite`` file or the flatbuffer bytes.
        file: Stream to print to (default ``sys.stdout``).

    Returns:
        The :class:`ConversionReport` of the flatbuffer.

    Raises:
        FileNotFoundError: The path names no file.
        TypeError: ``path_or_bytes`` is neither a path nor bytes.
        ValueError: The content is not a TFLite flatbuffer (no ``TFL3`` identifier at bytes 4..8), the
            interpreter cannot read it, or it is a malformed compressed file (the message names the node, entry
            or tensor).
    """
    out = sys.stdout if file is None else file
    content = _read(path_or_bytes)
    dense, layout, weights = read_compressed(content)
    graph = load_static_graph(dense)
    float_io = any(np.issubdtype(np.dtype(d["dtype"]), np.floating)
                   for d in graph.input_details + graph.output_details)
    report = with_compression(build_report(dense, graph, float_io), len(content), layout, weights)
    _, delegated, _ = _delegated_nodes(dense)

    if layout != "dense":
        stored = sum(w.bytes_after for w in weights)
        dense_bytes = sum(w.bytes_before for w in weights)
        how = ("TfqCodebookDecode nodes, removed in the listing below" if layout == "kernel"
               else "weights stored past the end of the flatbuffer")
        print(f"Compressed file ({layout} layout, {how}): {len(content):,} bytes, {len(dense):,} bytes "
              f"decompressed; {len(weights)} compressed weights, {dense_bytes:,} -> {stored:,} bytes (table at the "
              f"end). The listing is of the decompressed model.", file=out)

    print(f"Ops in execution order ({len(graph.ops)} nodes):", file=out)
    print(f"  {'#':>3} {'op':<22} {'xnnpack':<7}  inputs -> outputs", file=out)
    for op in graph.ops:
        inputs = " ".join(_operand(graph, t) for t in op["inputs"])
        outputs = " ".join(_operand(graph, t) for t in op["outputs"])
        flag = "yes" if op["index"] in delegated else "NO"
        print(f"  {op['index']:>3} {op['op_name']:<22} {flag:<7}  {inputs} -> {outputs}", file=out)

    constants = sorted(graph.constants, key=graph.nbytes, reverse=True)
    print(f"Constant buffers ({len(constants)} tensors, {report.weight_bytes:,} bytes):", file=out)
    print(f"  {'bytes':>9} {'dtype':<8} {'shape':<18} name", file=out)
    for index in constants:
        details = graph.tensors[index]
        shape = str([int(s) for s in details["shape"]])
        name = details["name"] if len(details["name"]) <= 80 else details["name"][:77] + "..."
        print(f"  {graph.nbytes(index):>9,} {dtype_name(details['dtype']):<8} {shape:<18} {name}", file=out)

    # The report's table adds the I/O quantization, op and dtype histograms and the delegation summary.
    print(str(report), file=out)
    return report
