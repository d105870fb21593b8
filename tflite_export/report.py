"""Checks that a flatbuffer is integer-only and reports what XNNPACK runs: ``verify``, ``ConversionReport``.

The dtype rule for a full-integer model:

- Activations (tensors some node writes, and the graph inputs) must be int8; int32 is accepted as well
  (ops such as ARG_MAX or SHAPE write indices or sizes, not quantized values).
- Constants (tensors no node writes) must be int8 (weights) or int32 (biases, shapes, axes). int16, int64 and
  bool constants are accepted only without quantization parameters: those are shapes, axes, paddings and
  masks that some ops take in wider types, not weight data (a quantized int16/int64 constant would be
  16x8-scheme weight or bias data, which int8 hardware cannot run).
- Any float tensor is a violation, except, when ``float_io=True``, a float graph input that only QUANTIZE
  nodes (and SHAPE nodes, which read its dimensions only) read and a float graph output that a DEQUANTIZE node
  writes: the converter's float-interface wrapper.
- Tensors of further subgraphs (control flow bodies) are checked by dtype only; any float one is a violation.

A compressed file (``tflite_export.compress``, either layout) is decompressed in memory first: the report
lists its compressed weights (``compressed_weights``) and checks the dense model it loads as.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tflite_export._graph import StaticGraph, check_flatbuffer, dtype_name, load_static_graph

__all__ = ["ConversionReport", "verify", "tensor_violations", "build_report", "read_compressed",
           "with_compression", "compressed_weights_table"]

_INTEGER_OK = {"int8", "int32"}
_CONSTANT_ONLY = {"int16", "int64", "bool"}


@dataclasses.dataclass
class ConversionReport:
    """What a TFLite flatbuffer holds and how much of it XNNPACK runs.

    Attributes:
        size_bytes: Size of the flatbuffer.
        num_nodes: Original nodes of subgraph 0.
        num_delegated: Original nodes the default XNNPACK delegate took over.
        delegate_partitions: DELEGATE nodes XNNPACK created.
        not_delegated: Op names of the nodes XNNPACK left to the builtin kernels, in execution order.
        op_histogram: Op name -> number of nodes.
        dtype_histogram: Dtype name -> number of tensors (all subgraphs).
        inputs: Per graph input: ``name``, ``dtype``, ``shape``, ``scale``, ``zero_point``.
        outputs: Per graph output, same keys.
        float_tensors: ``(name, dtype)`` of float tensors that break the integer-only rule.
        disallowed_tensors: ``(name, dtype, reason)`` of non-float tensors that break it.
        weight_bytes: Bytes of all constant tensors (weights, biases, shapes).
        float_io: Whether float graph inputs/outputs were allowed.
        layout: ``"dense"``, or the layout of a compressed file (``"loader"`` or ``"kernel"``); for a compressed
            file every other field but ``size_bytes`` describes the decompressed model.
        compressed_weights: ``tflite_export.TensorCompression`` per compressed weight (name, shape, encoding,
            bits, K, bytes before and after); empty for a dense file.
        dense_size_bytes: Size of the decompressed model (equal to ``size_bytes`` for a dense file).
    """

    size_bytes: int
    num_nodes: int
    num_delegated: int
    delegate_partitions: int
    not_delegated: list[str]
    op_histogram: dict[str, int]
    dtype_histogram: dict[str, int]
    inputs: list[dict]
    outputs: list[dict]
    float_tensors: list[tuple[str, str]]
    disallowed_tensors: list[tuple[str, str, str]]
    weight_bytes: int
    float_io: bool = False
    layout: str = "dense"
    compressed_weights: list = dataclasses.field(default_factory=list)
    dense_size_bytes: int = 0

    @property
    def integer_only(self) -> bool:
        """True when no tensor breaks the integer-only rule."""
        return not self.float_tensors and not self.disallowed_tensors

    @property
    def fully_delegated(self) -> bool:
        """True when XNNPACK took over every node."""
        return self.num_delegated == self.num_nodes

    def to_dict(self) -> dict:
        """A JSON-serializable dict of all fields plus ``integer_only`` and ``fully_delegated``."""
        result = dataclasses.asdict(self)
        result["float_tensors"] = [list(t) for t in self.float_tensors]
        result["disallowed_tensors"] = [list(t) for t in self.disallowed_tensors]
        result["integer_only"] = self.integer_only
        result["fully_delegated"] = self.fully_delegated
        return result

    def __str__(self) -> str:
        def io_row(kind: str, d: dict) -> str:
            quant = f"scale={d['scale']:.6g} zero_point={d['zero_point']}" if d["scale"] else "not quantized"
            return f"  {kind:<7} {d['name']:<32.32} {d['dtype']:<8} {str(d['shape']):<16} {quant}"

        lines = [
            f"TFLite flatbuffer: {self.size_bytes:,} bytes, weights {self.weight_bytes:,} bytes, "
            f"{'integer-only' if self.integer_only else 'NOT integer-only'}"
            f"{' (float I/O allowed)' if self.float_io else ''}",
        ]
        if self.layout != "dense":
            lines.append(f"  compressed ({self.layout} layout): {len(self.compressed_weights)} weights; the checks "
                         f"below are of the decompressed model ({self.dense_size_bytes:,} bytes)")
            lines += ["  " + line for line in compressed_weights_table(self.compressed_weights)]
        lines += [
            f"  {'tensor':<7} {'name':<32} {'dtype':<8} {'shape':<16} quantization",
            *(io_row("input", d) for d in self.inputs),
            *(io_row("output", d) for d in self.outputs),
            f"  {'op':<24} {'nodes':>5}",
            *(f"  {op:<24} {n:>5}" for op, n in self.op_histogram.items()),
            f"  XNNPACK: {self.num_delegated}/{self.num_nodes} nodes in {self.delegate_partitions} "
            f"partition(s); "
            f"not delegated: {', '.join(self.not_delegated) or 'none'}",
            "  dtypes: " + ", ".join(f"{k}={v}" for k, v in self.dtype_histogram.items()),
        ]
        lines += [f"  FLOAT TENSOR: {name} ({dtype})" for name, dtype in self.float_tensors]
        lines += [f"  DISALLOWED: {name} ({dtype}): {why}" for name, dtype, why in self.disallowed_tensors]
        return "\n".join(lines)


def compressed_weights_table(weights: list) -> list[str]:
    """Lines of a table of ``TensorCompression`` entries: name, shape, encoding, view, bits, K, bytes."""
    lines = [f"{'bytes':>9} {'-> stored':>9} {'encoding':<8} {'bits':>4} {'K':>5} {'shape':<16} {'(A,d,B)':<14} name"]
    for w in weights:
        view = "x".join(str(v) for v in w.layout) if w.layout else "-"
        name = w.name if len(w.name) <= 60 else "..." + w.name[-57:]
        lines.append(f"{w.bytes_before:>9,} {w.bytes_after:>9,} {w.encoding or '-':<8} {w.bits:>4} {w.K:>5} "
                     f"{str(list(w.shape)):<16} {view:<14} {name}")
    return lines


def read_compressed(content: bytes) -> tuple[bytes, str, list]:
    """``(dense model, layout, compressed weights)`` of a checked flatbuffer; a dense file comes back as is.

    Raises:
        ValueError: The file is compressed and malformed (the message names the node, entry or tensor).
    """
    from tflite_export import codebook

    if not codebook.is_compressed(content):  # a cheap byte search for dense files
        return content, "dense", []
    layout = codebook.layout_of(content)
    weights = codebook.describe(content)
    return codebook.decompress(content), layout, weights


def _io_summary(details: list[dict]) -> list[dict]:
    result = []
    for d in details:
        scale, zero_point = d["quantization"]
        result.append({"name": d["name"], "dtype": dtype_name(d["dtype"]),
                       "shape": [int(s) for s in d["shape_signature"]],
                       "scale": float(scale), "zero_point": int(zero_point)})
    return result


def _is_quantized(details: dict) -> bool:
    return len(details["quantization_parameters"]["scales"]) > 0


def tensor_violations(graph: StaticGraph, float_io: bool = False) -> tuple[list, list]:
    """Applies the integer-only rule of this module to a static graph.

    Args:
        graph: The graph from :func:`tflite_export._graph.load_static_graph`.
        float_io: Allow the converter's float interface around the integer graph.

    Returns:
        ``(float_tensors, disallowed_tensors)`` as in :class:`ConversionReport`.
    """
    producers, consumers, constants = graph.producers, graph.consumers, graph.constants
    ops = {op["index"]: op for op in graph.ops}
    excused: set[int] = set()
    if float_io:
        for t in graph.inputs:
            # SHAPE reads only the dimensions (a graph model's node count), never the float values.
            if all(ops[n]["op_name"] in ("QUANTIZE", "SHAPE") for n in consumers.get(t, [])):
                excused.add(t)
        for t in graph.outputs:
            if t not in producers or ops[producers[t]]["op_name"] == "DEQUANTIZE":
                excused.add(t)
    floats, disallowed = [], []
    for index, details in graph.tensors.items():
        name, dtype = details["name"], dtype_name(details["dtype"])
        if np.issubdtype(np.dtype(details["dtype"]), np.floating) or dtype.startswith("complex"):
            if index not in excused:
                floats.append((name, dtype))
        elif dtype in _INTEGER_OK:
            continue
        elif index in constants and dtype in _CONSTANT_ONLY and not _is_quantized(details):
            continue
        elif index in constants:
            disallowed.append((name, dtype, "quantized constant wider than int8 (or of an unsupported dtype)"
                               if dtype in _CONSTANT_ONLY else "constant of an unsupported dtype"))
        else:
            disallowed.append((name, dtype, "activation must be int8 (or int32 for indices)"))
    for details in graph.other_subgraph_tensors:
        if np.issubdtype(np.dtype(details["dtype"]), np.floating):
            floats.append((details["name"], dtype_name(details["dtype"])))
    return floats, disallowed


def build_report(content: bytes, graph: StaticGraph, float_io: bool) -> ConversionReport:
    """Assembles a :class:`ConversionReport` from a checked (dense) flatbuffer and its static graph."""
    from tflite_export.runtime import delegation_report

    delegation = delegation_report(content)
    op_histogram: dict[str, int] = {}
    for op in graph.ops:
        op_histogram[op["op_name"]] = op_histogram.get(op["op_name"], 0) + 1
    dtype_histogram: dict[str, int] = {}
    for details in list(graph.tensors.values()) + graph.other_subgraph_tensors:
        key = dtype_name(details["dtype"])
        dtype_histogram[key] = dtype_histogram.get(key, 0) + 1
    floats, disallowed = tensor_violations(graph, float_io)
    return ConversionReport(
        size_bytes=len(content),
        num_nodes=delegation["nodes"],
        num_delegated=delegation["delegated"],
        delegate_partitions=delegation["delegate_partitions"],
        not_delegated=delegation["not_delegated"],
        op_histogram=op_histogram,
        dtype_histogram=dict(sorted(dtype_histogram.items())),
        inputs=_io_summary(graph.input_details),
        outputs=_io_summary(graph.output_details),
        float_tensors=floats,
        disallowed_tensors=disallowed,
        weight_bytes=sum(graph.nbytes(i) for i in graph.constants),
        float_io=bool(float_io),
        dense_size_bytes=len(content),
    )


def verify(flatbuffer: Any, float_io: bool = False) -> ConversionReport:
    """Checks the integer-only rule (see the module docstring) and measures XNNPACK delegation.

    The static listing comes from an interpreter without default delegates, so that no delegate rewrites
    the graph; delegation is measured on a second interpreter with the default XNNPACK delegate.

    Args:
        flatbuffer: The TFLite flatbuffer bytes.
        float_io: Allow float graph inputs/outputs wrapped by QUANTIZE/DEQUANTIZE.

    A compressed file is decompressed in memory; the report lists its compressed weights and checks the
    decompressed model.

    Returns:
        The :class:`ConversionReport`; inspect ``report.integer_only`` (``convert`` raises on it).

    Raises:
        TypeError: ``flatbuffer`` is not bytes.
        ValueError: ``flatbuffer`` is not a TFLite flatbuffer, the interpreter cannot read it, or it is a
            malformed compressed file.
    """
    content = check_flatbuffer(flatbuffer, "flatbuffer")
    dense, layout, weights = read_compressed(content)
    report = build_report(dense, load_static_graph(dense), float_io)
    return with_compression(report, len(content), layout, weights)


def with_compression(report: ConversionReport, size_bytes: int, layout: str, weights: list) -> ConversionReport:
    """``report`` (of the dense model) as the report of the file it was decompressed from."""
    return dataclasses.replace(report, size_bytes=size_bytes, layout=layout, compressed_weights=list(weights))
