"""Static Edge TPU compatibility check of a TFLite flatbuffer: ``check`` -> :class:`EdgeTpuReport`.

It applies the model requirements of Coral's "TensorFlow models on the Edge TPU" page
(https://coral.ai/docs/edgetpu/models-intro/#compatibility-overview and #supported-operations), without the
compiler:

- tensors are 8-bit: int8/uint8 activations and weights, int32 biases (other constants: int8/uint8/int32);
- shapes are static (no -1 in ``shape_signature``);
- activation tensors have at most 3 dimensions larger than 1 (the batch dimension counts); weights are
  exempt, the compiler lays them out itself;
- operators are in the supported-operations table, and their versions are no newer than the 2021 compiler
  (v16) accepts;
- one subgraph (the compiler reports "More than one subgraph is not supported").

Op versions: the compiler rejects versions it does not know ("Operation version not supported"). The table
below allows, per op, the highest version whose minimum TFLite runtime is 2.5.0 or older, read from TFLite's
``tensorflow/lite/tools/versioning/runtime_version.cc``; compiler v16 was released with the TF 2.5 runtime, so
this errs on the conservative side. Versions above these add int16 or other non-8-bit types anyway.

Not in Coral's table and therefore reported unsupported although TFLite has int8 kernels: HARD_SWISH, GATHER,
DEQUANTIZE (accepted only as the graph's last op, where it runs on the CPU), and every CUSTOM op. The check is
necessary, not sufficient: limits that depend on values (e.g. SOFTMAX on at most 16,000 elements, RESIZE_*
precision) are left to the compiler.

A compressed file (``tflite_export.compress``, either layout) cannot go to the compiler as it is: the report
says ``needs_decompress``, lists the compressed weights, and checks the decompressed model (in memory), so that
``compatible_after_decompress`` is the verdict for ``tflite_export.decompress(file)``. In a kernel-layout file
the ``TfqCodebookDecode`` nodes are listed with status ``"needs-decompress"`` and every other op with its status
in the decompressed model; a loader-layout file has the ops of the decompressed model.

A malformed file (an operator-code, tensor or buffer index out of range, malformed compressed weights) raises
``ValueError`` naming the operator, tensor or buffer; tensor names that are not UTF-8 are shown with U+FFFD.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tflite_export import flatbuffer as fb
from tflite_export._graph import check_flatbuffer, display_name

__all__ = ["SUPPORTED_OPS", "OpStatus", "EdgeTpuReport", "check"]

# Op -> highest version accepted (see the module docstring for the source of both columns).
SUPPORTED_OPS = {
    "ADD": 3, "AVERAGE_POOL_2D": 3, "CONCATENATION": 3, "CONV_2D": 5, "DEPTHWISE_CONV_2D": 6, "EXPAND_DIMS": 1,
    "FULLY_CONNECTED": 9, "L2_NORMALIZATION": 2, "LOGISTIC": 3, "LSTM": 4, "UNIDIRECTIONAL_SEQUENCE_LSTM": 3,
    "MAXIMUM": 4, "MAX_POOL_2D": 3, "MEAN": 3, "MINIMUM": 4, "MUL": 4, "PACK": 3, "PAD": 3, "PRELU": 1,
    "QUANTIZE": 2, "REDUCE_MAX": 3, "REDUCE_MIN": 3, "RELU": 3, "RELU6": 3, "RELU_N1_TO_1": 1, "RESHAPE": 1,
    "RESIZE_BILINEAR": 4, "RESIZE_NEAREST_NEIGHBOR": 4, "RSQRT": 2, "SLICE": 5, "SOFTMAX": 3,
    "SPACE_TO_DEPTH": 2, "SPLIT": 4, "SQUEEZE": 2, "STRIDED_SLICE": 5, "SUB": 5, "SUM": 2,
    "SQUARED_DIFFERENCE": 2, "TANH": 3, "TRANSPOSE": 5, "TRANSPOSE_CONV": 3,
}
_BOUNDARY_DEQUANTIZE_VERSION = 4  # DEQUANTIZE versions of TFLite <= 2.5.0
_DECODE_OP = "TfqCodebookDecode"
# Input slots of weights and biases.
_WEIGHT_SLOT = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "TRANSPOSE_CONV": 1}
_BIAS_SLOT = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3}
_EIGHT_BIT = {"INT8", "UINT8"}


@dataclasses.dataclass(frozen=True)
class OpStatus:
    """The verdict for one operator.

    Attributes:
        index: Position in execution order.
        op: Op name (the custom code for CUSTOM ops).
        version: Operator version.
        status: ``"ok"`` (maps to the Edge TPU), ``"cpu"`` (a float-interface QUANTIZE/DEQUANTIZE at the graph
            boundary, which the compiler leaves on the CPU), ``"unsupported"`` or ``"needs-decompress"``.
        reasons: Why, when the status is not ``"ok"``.
    """

    index: int
    op: str
    version: int
    status: str
    reasons: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class EdgeTpuReport:
    """Edge TPU compatibility of a flatbuffer.

    Attributes:
        ops: One :class:`OpStatus` per operator of subgraph 0, in execution order (for a compressed file, see the
            module docstring).
        model_issues: Problems of the (decompressed) model as a whole (e.g. several subgraphs).
        layout: ``"dense"``, or the layout of a compressed file (``"loader"`` or ``"kernel"``).
        compressed_weights: ``tflite_export.TensorCompression`` per compressed weight; empty for a dense file.
    """

    ops: list[OpStatus]
    model_issues: list[str]
    layout: str = "dense"
    compressed_weights: list = dataclasses.field(default_factory=list)

    @property
    def compatible(self) -> bool:
        """True if the file can go to the compiler as it is: not compressed, every op maps to the Edge TPU or
        is a boundary op on the CPU, and the model has no issue."""
        return not self.needs_decompress and self.compatible_after_decompress

    @property
    def compatible_after_decompress(self) -> bool:
        """The verdict for the decompressed model (equal to ``compatible`` for a dense file)."""
        return not self.model_issues and all(o.status in ("ok", "cpu", "needs-decompress") for o in self.ops)

    @property
    def needs_decompress(self) -> bool:
        """True for a compressed file of either layout: run ``tflite_export.decompress`` first."""
        return self.layout != "dense" or any(o.status == "needs-decompress" for o in self.ops)

    @property
    def unsupported(self) -> list[OpStatus]:
        """The ops that block compilation."""
        return [o for o in self.ops if o.status in ("unsupported", "needs-decompress")]

    def __str__(self) -> str:
        if self.needs_decompress:
            verdict = (f"needs tflite_export.decompress first ({self.layout} layout, {len(self.compressed_weights)} "
                       f"compressed weights); the decompressed model is "
                       f"{'compatible' if self.compatible_after_decompress else 'NOT compatible'}")
        else:
            verdict = "compatible" if self.compatible else "NOT compatible"
        lines = [f"Edge TPU check: {verdict} ({len(self.ops)} ops, {len(self.unsupported)} blocking)"]
        lines += [f"  model: {issue}" for issue in self.model_issues]
        for w in self.compressed_weights:
            lines.append(f"  compressed weight {w.name!r} {list(w.shape)}: {w.encoding}, {w.bits} bits, K={w.K}, "
                         f"{w.bytes_before} -> {w.bytes_after} bytes")
        for o in self.ops:
            note = "; ".join(o.reasons)
            lines.append(f"  {o.index:4d} {o.op:28s} v{o.version:<3d} {o.status:16s} {note}".rstrip())
        return "\n".join(lines)


def _is_constant(model: Any, tensor: Any) -> bool:
    """Whether a tensor holds data from the file: in its buffer, or outside the flatbuffer (offset > 1)."""
    buffer = model.buffers[tensor.buffer]
    return fb.buffer_data(model, tensor.buffer) is not None or int(buffer.offset or 0) > 1


def _tensor_issues(model: Any, subgraph: Any, index: int, role: str, boundary_float: set[int]) -> list[str]:
    """Dtype, static-shape and rank problems of one tensor read or written by an op."""
    tensor = subgraph.tensors[index]
    name = display_name(tensor.name)
    name = name if len(name) <= 60 else "..." + name[-57:]
    dtype = fb.tensor_type_name(tensor.type)
    constant = _is_constant(model, tensor)
    issues = []
    if index in boundary_float:
        pass  # the float side of a graph-boundary QUANTIZE/DEQUANTIZE
    elif role == "bias":
        if dtype != "INT32":
            issues.append(f"bias {name!r} is {dtype.lower()}, expected int32")
    elif role == "weight" or not constant:
        if dtype not in _EIGHT_BIT:
            issues.append(f"{role if role == 'weight' else 'tensor'} {name!r} is {dtype.lower()}, expected "
                          f"int8/uint8")
    elif dtype not in _EIGHT_BIT | {"INT32"}:
        issues.append(f"constant {name!r} is {dtype.lower()}, expected int8/uint8/int32")
    signature = tensor.shapeSignature
    if signature is not None and len(signature) and np.any(np.asarray(signature) < 0):
        issues.append(f"{name!r} has a dynamic shape {list(map(int, signature))}")
    shape = [] if tensor.shape is None else [int(v) for v in tensor.shape]
    if role not in ("weight", "bias") and not constant and sum(v > 1 for v in shape) > 3:
        issues.append(f"{name!r} of shape {shape} has {sum(v > 1 for v in shape)} dimensions larger than 1 "
                      f"(at most 3)")
    return issues


def check(flatbuffer: bytes) -> EdgeTpuReport:
    """Checks a flatbuffer against the Edge TPU compiler's model requirements.

    A compressed file is decompressed in memory (see the module docstring).

    Args:
        flatbuffer: A TFLite flatbuffer.

    Returns:
        An :class:`EdgeTpuReport`; ``.compatible`` is the verdict for the file as it is,
        ``.compatible_after_decompress`` the one for its decompressed model, ``str(report)`` lists every op.

    Raises:
        TypeError: ``flatbuffer`` is not bytes.
        ValueError: Not a TFLite flatbuffer, a reference (operator code, tensor, buffer) points nowhere, or the
            compressed weights are malformed; the message names the operator, tensor, node or entry.
    """
    from tflite_export.report import read_compressed

    content = check_flatbuffer(flatbuffer, "flatbuffer")
    model = fb.read_model(content, "flatbuffer")
    fb.check_references(model, "flatbuffer")
    dense, layout, weights = read_compressed(content)
    if layout == "dense":
        return _check_dense(model)
    report = _check_dense(fb.read_model(dense, "flatbuffer"))
    if layout == "kernel":
        report = dataclasses.replace(report, ops=_with_decode_nodes(model, report.ops))
    return dataclasses.replace(report, layout=layout, compressed_weights=list(weights))


def _with_decode_nodes(model: Any, dense_ops: list[OpStatus]) -> list[OpStatus]:
    """The ops of a kernel-layout file: its decode nodes, and the others with their status in the decompressed
    model (decompress removes the decode nodes and keeps the order of the rest)."""
    statuses, rest = [], iter(dense_ops)
    for position, op in enumerate(model.subgraphs[0].operators or []):
        name = fb.op_name(model, op)
        version = int(model.operatorCodes[op.opcodeIndex].version)
        if name == _DECODE_OP:
            statuses.append(OpStatus(position, name, version, "needs-decompress",
                                     ("codebook-compressed weight: run tflite_export.decompress first",)))
        else:
            dense = next(rest, None)
            statuses.append(OpStatus(position, name, version, "unsupported", ("missing from the decompressed model",))
                            if dense is None else dataclasses.replace(dense, index=position))
    return statuses


def _check_dense(model: Any) -> EdgeTpuReport:
    """The report of a parsed model whose references were checked."""
    issues = []
    if len(model.subgraphs) > 1:
        issues.append(f"{len(model.subgraphs)} subgraphs (control flow); the Edge TPU compiler maps one")
    subgraph = model.subgraphs[0]
    graph_inputs = {int(i) for i in (subgraph.inputs if subgraph.inputs is not None else [])}
    graph_outputs = {int(i) for i in (subgraph.outputs if subgraph.outputs is not None else [])}
    operators = subgraph.operators or []
    statuses = []
    for position, op in enumerate(operators):
        name = fb.op_name(model, op)
        version = int(model.operatorCodes[op.opcodeIndex].version)
        inputs = [int(i) for i in (op.inputs if op.inputs is not None else []) if i >= 0]
        outputs = [int(i) for i in (op.outputs if op.outputs is not None else []) if i >= 0]
        reasons, boundary_float, status = [], set(), "ok"
        is_float_input = [fb.tensor_type_name(subgraph.tensors[i].type).startswith("FLOAT") for i in inputs]
        if name == "QUANTIZE" and inputs and inputs[0] in graph_inputs and is_float_input[0]:
            status, boundary_float = "cpu", {inputs[0]}
            reasons.append("float input quantized on the CPU")
        elif name == "DEQUANTIZE" and outputs and set(outputs) <= graph_outputs:
            status, boundary_float = "cpu", set(outputs)
            reasons.append("output dequantized on the CPU")
            if version > _BOUNDARY_DEQUANTIZE_VERSION:
                reasons.append(f"version {version} is newer than the 2021 compiler's {_BOUNDARY_DEQUANTIZE_VERSION}")
        elif fb.builtin_code(model, op.opcodeIndex) == fb.schema().BuiltinOperator.CUSTOM:
            reasons.append("custom op: the Edge TPU maps no CUSTOM op")
        elif name not in SUPPORTED_OPS:
            reasons.append("not in the Edge TPU's supported operations")
        elif version > SUPPORTED_OPS[name]:
            reasons.append(f"version {version} is newer than the 2021 compiler's {SUPPORTED_OPS[name]}")
        for slot, index in enumerate(op.inputs if op.inputs is not None else []):
            if index < 0:
                continue
            role = ("weight" if _WEIGHT_SLOT.get(name) == slot else "bias" if _BIAS_SLOT.get(name) == slot
                    else "input")
            reasons += _tensor_issues(model, subgraph, int(index), role, boundary_float)
        for index in outputs:
            reasons += _tensor_issues(model, subgraph, index, "output", boundary_float)
        if status == "cpu" and len(reasons) > 1 or status == "ok" and reasons:
            status = "unsupported"
        statuses.append(OpStatus(position, name, version, status, tuple(dict.fromkeys(reasons))))
    return EdgeTpuReport(statuses, issues)
