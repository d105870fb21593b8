"""Integer graph aggregation in an exported GNN file: float aggregation subgraphs -> int8 custom ops.

TFLite has no int8 UNSORTED_SEGMENT_SUM, so the converter leaves every aggregation of an int8 GNN in float
between DEQUANTIZE and QUANTIZE, and computes degree normalisations in float from the edge indices.
:func:`integer_aggregation` finds those subgraphs in a converted file and replaces each by one custom op of
``tflite_export/kernels`` (int8 in, int32 accumulation, one requantization to the scale the converter gave
the QUANTIZE it replaces; see ``tfq_graph_core.h``):

=====================  ===================================================================================
custom op              float subgraph it replaces (ending in QUANTIZE to int8)
=====================  ===================================================================================
``TfqSegmentSum``      ``USS(DEQUANTIZE(x), ids, n)``; with ``x = GATHER(h, idx)`` the gather is fused
``TfqSegmentMean``     ``USS(DEQUANTIZE(x), ids, n) / max(USS(ones, ids, n), 1)`` (tf-gnn's mean pooling)
``TfqDegreeNorm``      ``DEQUANTIZE(x) * rsqrt(max(USS(ones, ids, n) + 1, 1))`` (GCN message scaling)
``TfqGcnAggregate``    ``(USS(DEQUANTIZE(GATHER(m, src)), ids, n) + DEQUANTIZE(m)) * rsqrt(max(USS(ones, ids,
                       n) + 1, 1))`` (GCN aggregation with self loops)
=====================  ===================================================================================

(``USS`` is UNSORTED_SEGMENT_SUM, ``ones`` a FILL of 1.0 or a constant of ones, the rsqrt operand may pass
through an expanding RESHAPE and identity STRIDED_SLICEs.) Each replacement computes what the float subgraph
computes, up to the rounding of the fixed-point multiplier (at most one int8 step, rarely). Float ops that only
fed a replaced subgraph are removed; anything not matching a pattern is left as it is.

The result needs the kernels at run time: ``make_interpreter(content,
custom_op_registerers=[kernels.graph_registerer()])`` in Python, ``TfqGraphOpsRegister`` in C++ hosts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tflite_export import flatbuffer as fb
from tflite_export.kernels import GRAPH_OPS

__all__ = ["integer_aggregation", "uses_graph_ops", "remaining_float_ops", "check_dataflow", "GRAPH_OPS"]
# Ops without side effects whose results may be dropped once nothing reads them.
_PURE = {"DEQUANTIZE", "QUANTIZE", "UNSORTED_SEGMENT_SUM", "GATHER", "FILL", "SHAPE", "MAXIMUM", "MINIMUM", "ADD",
         "SUB", "MUL", "DIV", "RSQRT", "SQRT", "RESHAPE", "STRIDED_SLICE", "SUM", "CUMSUM", "EXPAND_DIMS", "CAST",
         "SQUEEZE", "PACK", "CONCATENATION", "RANGE"}


class _Graph:
    """Producers, consumers and small helpers over one subgraph of a ``ModelT``."""

    def __init__(self, model: Any, index: int):
        self.model, self.sg = model, model.subgraphs[index]
        self.ops = self.sg.operators or []
        self.producer = {int(t): i for i, op in enumerate(self.ops) for t in (op.outputs if op.outputs is not None
                                                                                else []) if t >= 0}
        self.readers = fb.consumers(self.sg)

    def name(self, i: int) -> str:
        return fb.op_name(self.model, self.ops[i])

    def inputs(self, i: int) -> list[int]:
        return [int(t) for t in (self.ops[i].inputs if self.ops[i].inputs is not None else [])]

    def made_by(self, tensor: int, *names: str) -> int | None:
        """The producing op of ``tensor`` if it is one of ``names``."""
        i = self.producer.get(int(tensor))
        return i if i is not None and self.name(i) in names else None

    def type_name(self, tensor: int) -> str:
        return fb.tensor_type_name(self.sg.tensors[tensor].type)

    def constant(self, tensor: int) -> np.ndarray | None:
        t = self.sg.tensors[tensor]
        if int(tensor) in self.producer:
            return None
        data = fb.buffer_data(self.model, int(t.buffer))
        dtype = fb.tensor_dtype(t)
        if data is None or dtype is None or data.size % dtype.itemsize:
            return None
        return data.view(dtype)

    def is_scalar(self, tensor: int, value: float) -> bool:
        c = self.constant(tensor)
        return c is not None and c.size == 1 and float(c.reshape(-1)[0]) == value

    def quant(self, tensor: int) -> tuple | None:
        """(scale, zero point) of a per-tensor quantized int8 tensor."""
        t = self.sg.tensors[tensor]
        q = t.quantization
        if self.type_name(tensor) != "INT8" or q is None or q.scale is None or len(q.scale) != 1:
            return None
        zero = 0 if q.zeroPoint is None or len(q.zeroPoint) == 0 else int(q.zeroPoint[0])
        return float(q.scale[0]), zero

    def shape(self, tensor: int) -> list[int]:
        t = self.sg.tensors[tensor]
        sig = t.shapeSignature if t.shapeSignature is not None and len(t.shapeSignature) else t.shape
        return [] if sig is None else [int(v) for v in sig]


def _through_shape_ops(g: _Graph, tensor: int) -> int:
    """Follows an expanding RESHAPE ([n] -> [n, 1]) and identity STRIDED_SLICEs back to their source."""
    for _ in range(8):
        i = g.made_by(tensor, "RESHAPE", "STRIDED_SLICE", "EXPAND_DIMS")
        if i is None:
            return tensor
        src = g.inputs(i)[0]
        out, shape_in = g.shape(tensor), g.shape(src)
        name = g.name(i)
        if name in ("RESHAPE", "EXPAND_DIMS"):
            if not (len(shape_in) == 1 and len(out) == 2 and out[1] == 1) and out != shape_in:
                return tensor
        else:
            opts = g.ops[i].builtinOptions
            rank = len(shape_in)
            full = (1 << rank) - 1
            strides = g.constant(g.inputs(i)[3]) if len(g.inputs(i)) > 3 else None
            if (opts is None or rank == 0 or (opts.beginMask & full) != full or (opts.endMask & full) != full
                    or opts.ellipsisMask or opts.newAxisMask or opts.shrinkAxisMask or strides is None
                    or not np.all(strides == 1) or out != shape_in):
                return tensor
        tensor = src
    return tensor


def _count(g: _Graph, tensor: int) -> tuple | None:
    """``(ids, n)`` when ``tensor`` is ``USS(ones, ids, n)``, the number of edges per segment."""
    i = g.made_by(tensor, "UNSORTED_SEGMENT_SUM")
    if i is None or g.type_name(tensor) != "FLOAT32" or len(g.inputs(i)) != 3:
        return None
    ones, ids, n = g.inputs(i)
    fill = g.made_by(ones, "FILL")
    if fill is not None:
        if len(g.inputs(fill)) != 2 or not g.is_scalar(g.inputs(fill)[1], 1.0):
            return None
    else:
        c = g.constant(ones)
        if c is None or c.size == 0 or not np.all(c == 1.0):
            return None
    return ids, n


def _rsqrt_degree(g: _Graph, tensor: int) -> tuple | None:
    """``(ids, n)`` when ``tensor`` is ``rsqrt(max(count(ids, n) + 1, 1))`` (possibly expanded to [n, 1])."""
    i = g.made_by(_through_shape_ops(g, tensor), "RSQRT")
    if i is None:
        return None
    m = g.made_by(g.inputs(i)[0], "MAXIMUM")
    if m is None:
        return None
    a, b = g.inputs(m)
    if not g.is_scalar(b, 1.0):
        a, b = b, a
    if not g.is_scalar(b, 1.0):
        return None
    add = g.made_by(a, "ADD")
    if add is None:
        return None
    x, y = g.inputs(add)[:2]
    if not g.is_scalar(y, 1.0):
        x, y = y, x
    if not g.is_scalar(y, 1.0) or (g.ops[add].builtinOptions is not None
                                   and getattr(g.ops[add].builtinOptions, "fusedActivationFunction", 0)):
        return None
    return _count(g, x)


def _same_value(g: _Graph, a: int, b: int) -> bool:
    """Whether two int32 tensors certainly hold the same value: one tensor, or equal constants."""
    if a == b:
        return True
    ca, cb = g.constant(a), g.constant(b)
    return ca is not None and cb is not None and ca.shape == cb.shape and bool(np.all(ca == cb))


def _dequantized(g: _Graph, tensor: int) -> int | None:
    """The int8 tensor ``tensor`` is the DEQUANTIZE of."""
    i = g.made_by(tensor, "DEQUANTIZE")
    if i is None:
        return None
    src = g.inputs(i)[0]
    return src if g.quant(src) is not None else None


def _gathered(g: _Graph, tensor: int) -> tuple | None:
    """``(rows, indices)`` when the int8 ``tensor`` is ``GATHER(rows, indices)`` on axis 0 that keeps the scale."""
    i = g.made_by(tensor, "GATHER")
    if i is None or len(g.inputs(i)) != 2:
        return None
    opts = g.ops[i].builtinOptions
    if opts is not None and (int(opts.axis) != 0 or int(opts.batchDims) != 0):
        return None
    rows, indices = g.inputs(i)
    if g.quant(rows) != g.quant(tensor) or g.type_name(indices) != "INT32":
        return None
    return rows, indices


def _segment_sum(g: _Graph, tensor: int) -> tuple | None:
    """``(data, ids, n, gather or -1)`` when ``tensor`` is ``USS(DEQUANTIZE(x), ids, n)`` (gather fused)."""
    i = g.made_by(tensor, "UNSORTED_SEGMENT_SUM")
    if i is None or len(g.inputs(i)) != 3 or g.type_name(tensor) != "FLOAT32":
        return None
    values, ids, n = g.inputs(i)
    x = _dequantized(g, values)
    if x is None or g.type_name(ids) != "INT32" or g.type_name(n) != "INT32":
        return None
    gathered = _gathered(g, x)
    if gathered is not None:
        return gathered[0], ids, n, gathered[1]
    return x, ids, n, -1


def _match(g: _Graph, q: int) -> tuple | None:
    """(custom op, inputs) replacing the QUANTIZE ``q``, or None."""
    src = g.inputs(q)[0]
    if g.type_name(src) != "FLOAT32" or g.quant(g.ops[q].outputs[0]) is None:
        return None
    summed = _segment_sum(g, src)
    if summed is not None:
        return "TfqSegmentSum", list(summed)
    div = g.made_by(src, "DIV")
    if div is not None:
        num, den = g.inputs(div)[:2]
        summed = _segment_sum(g, num)
        m = g.made_by(_through_shape_ops(g, den), "MAXIMUM")
        if summed is None or m is None:
            return None
        a, b = g.inputs(m)
        if not g.is_scalar(b, 1.0):
            a, b = b, a
        count = _count(g, a)
        # The count must be over the same ids and number of segments: a count of another length would broadcast.
        if g.is_scalar(b, 1.0) and count is not None and count[0] == summed[1] and _same_value(g, count[1],
                                                                                             summed[2]):
            return "TfqSegmentMean", list(summed)
        return None
    mul = g.made_by(src, "MUL")
    if mul is None:
        return None
    for norm, other in (g.inputs(mul)[:2], g.inputs(mul)[1::-1]):
        degree = _rsqrt_degree(g, norm)
        if degree is None:
            continue
        ids, n = degree
        x = _dequantized(g, other)
        if x is not None:
            return "TfqDegreeNorm", [x, ids]
        add = g.made_by(other, "ADD")
        if add is None:
            continue
        for a, b in (g.inputs(add)[:2], g.inputs(add)[1::-1]):
            summed, self_rows = _segment_sum(g, a), _dequantized(g, b)
            if (summed is not None and self_rows is not None and summed[3] >= 0 and summed[0] == self_rows
                    and summed[1] == ids and _same_value(g, summed[2], n)):
                return "TfqGcnAggregate", [self_rows, ids, summed[2], summed[3]]
    return None


def _remove_dead(model: Any, index: int) -> None:
    """Drops pure ops nobody reads, then tensors and buffers nothing references."""
    sg = model.subgraphs[index]
    keep_tensors = {int(t) for t in list(sg.inputs if sg.inputs is not None else [])
                    + list(sg.outputs if sg.outputs is not None else [])}
    changed = True
    while changed:
        g = _Graph(model, index)
        dead = [i for i, op in enumerate(g.ops) if g.name(i) in _PURE
                and all(int(t) not in g.readers and int(t) not in keep_tensors for t in op.outputs)]
        changed = bool(dead)
        fb.remove_operators(sg, dead)
    used = set(keep_tensors)
    for op in sg.operators:
        for values in (op.inputs, op.outputs, op.intermediates):
            used.update(int(t) for t in (values if values is not None else []) if t >= 0)
    fb.remove_tensors(model, index, [t for t in range(len(sg.tensors)) if t not in used])
    referenced = {int(t.buffer) for s in model.subgraphs for t in s.tensors or []}
    referenced |= {int(m.buffer) for m in model.metadata or []}
    referenced |= {int(b) for b in (model.metadataBuffer if model.metadataBuffer is not None else [])}
    referenced.add(0)  # the empty sentinel buffer every file starts with
    fb.remove_buffers(model, [b for b in range(len(model.buffers)) if b not in referenced])


def integer_aggregation(content: bytes) -> tuple[bytes, list[dict]]:
    """Replaces the float aggregation subgraphs of an int8 GNN file by integer custom ops.

    Args:
        content: A TFLite flatbuffer (e.g. from ``tfq_ext.degree_quant.convert_graph_model``).

    Returns:
        ``(new_content, rewrites)``: the rewritten file (``content`` unchanged when nothing matched) and, per
        replaced subgraph, ``{"op": custom op name, "output": tensor name}``.

    Raises:
        TypeError: ``content`` is not bytes.
        ValueError: ``content`` is not a readable TFLite flatbuffer or holds dangling references.
    """
    model = fb.read_model(content, "content")
    fb.check_references(model, "content")
    codes_before = {int(op.opcodeIndex) for sg in model.subgraphs for op in sg.operators or []}
    rewrites = []
    for index in range(len(model.subgraphs)):
        g = _Graph(model, index)
        changed = False
        for q in range(len(g.ops)):
            if g.name(q) != "QUANTIZE" or len(g.inputs(q)) != 1 or len(g.ops[q].outputs) != 1:
                continue
            found = _match(g, q)
            if found is None:
                continue
            name, inputs = found
            op = g.ops[q]
            op.opcodeIndex = fb.add_operator_code(model, custom=name)
            op.inputs = np.asarray(inputs, np.int32)
            op.builtinOptionsType, op.builtinOptions = 0, None
            op.customOptions, op.customOptionsFormat = None, 0
            out = g.sg.tensors[int(op.outputs[0])].name
            rewrites.append({"op": name, "output": out.decode("utf-8", "replace") if isinstance(out, bytes)
                             else str(out)})
            changed = True  # the op keeps its output, so `g.producer`, all _match reads, stays valid
        if changed:
            _remove_dead(model, index)
    if not rewrites:
        return content, []
    fb.remove_unused_operator_codes(model, codes_before)  # only codes the removed ops used
    return fb.write_model(model), rewrites


def uses_graph_ops(content: bytes) -> bool:
    """Whether a flatbuffer has any of the graph custom ops (it then needs the kernels to run)."""
    model = fb.read_model(content, "content")
    return any(fb.op_name(model, op) in GRAPH_OPS for sg in model.subgraphs for op in sg.operators or [])


def remaining_float_ops(content: bytes) -> list[str]:
    """Ops of subgraph 0 that write a float tensor between the graph inputs and outputs: every op with a
    float output except a DEQUANTIZE writing a graph output. Empty for an integer-only graph."""
    model = fb.read_model(content, "content")
    sg = model.subgraphs[0]
    outputs = {int(t) for t in (sg.outputs if sg.outputs is not None else [])}
    found = []
    for op in sg.operators or []:
        name = fb.op_name(model, op)
        for t in op.outputs if op.outputs is not None else []:
            if fb.tensor_type_name(sg.tensors[int(t)].type).startswith("FLOAT"):
                if not (name == "DEQUANTIZE" and int(t) in outputs):
                    found.append(name)
                break
    return found


def check_dataflow(content: bytes, arg_name: str = "flatbuffer") -> None:
    """Refuses a file whose dataflow is not well formed, before any interpreter sees it.

    Every operator input must be a constant, a graph input or the output of an earlier operator; every
    operator output must be written by that operator only and be neither a constant nor a graph input; every
    graph output must be written; quantization scales must be finite and > 0 and int8 zero points in
    [-128, 127]. TFLite itself does not check this (measured with TF 2.21: a file whose
    operator writes a graph input, leaving a tensor that later operators read unwritten, crashes the XNNPACK
    delegate in ``allocate_tensors``).

    Raises:
        TypeError: ``content`` is not bytes.
        ValueError: the file is unreadable or a rule above is broken (the message names operator and tensor).
    """
    model = fb.read_model(content, arg_name)
    fb.check_references(model, arg_name)
    for s, sg in enumerate(model.subgraphs):
        inputs = {int(t) for t in (sg.inputs if sg.inputs is not None else [])}
        written = set(inputs)
        for i, op in enumerate(sg.operators or []):
            name = fb.op_name(model, op)
            for t in (int(v) for v in (op.inputs if op.inputs is not None else []) if v >= 0):
                if t not in written and fb.buffer_data(model, int(sg.tensors[t].buffer)) is None \
                        and not sg.tensors[t].isVariable:
                    raise ValueError(f"`{arg_name}`: operator {i} ({name}) of subgraph {s} reads tensor {t}, "
                                     f"which is neither a constant, a graph input nor written by an earlier "
                                     f"operator")
            for t in (int(v) for v in (op.outputs if op.outputs is not None else [])):
                if t in written or fb.buffer_data(model, int(sg.tensors[t].buffer)) is not None:
                    raise ValueError(f"`{arg_name}`: operator {i} ({name}) of subgraph {s} writes tensor {t}, "
                                     f"which is a constant, a graph input or written by another operator")
                written.add(t)
        for t in (int(v) for v in (sg.outputs if sg.outputs is not None else [])):
            if t not in written and fb.buffer_data(model, int(sg.tensors[t].buffer)) is None:
                raise ValueError(f"`{arg_name}`: graph output {t} of subgraph {s} is never written")
        for t, tensor in enumerate(sg.tensors or []):
            q = tensor.quantization
            scale = np.asarray(q.scale if q is not None and q.scale is not None else [], np.float64)
            zero = np.asarray(q.zeroPoint if q is not None and q.zeroPoint is not None else [], np.int64)
            if scale.size and not np.all(np.isfinite(scale) & (scale > 0)):
                raise ValueError(f"`{arg_name}`: tensor {t} of subgraph {s} has quantization scale(s) "
                                 f"{scale[:4].tolist()}; scales must be finite and > 0")
            if fb.tensor_type_name(tensor.type) == "INT8" and zero.size and not np.all((zero >= -128) & (zero <= 127)):
                raise ValueError(f"`{arg_name}`: int8 tensor {t} of subgraph {s} has zero point(s) "
                                 f"{zero[:4].tolist()} outside [-128, 127]")
