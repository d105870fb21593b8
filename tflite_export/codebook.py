"""Lossless codebook compression of int8 TFLite files: ``compress``, ``decompress``, ``load_interpreter``.

A weight is viewed as shape ``(A, d, B)`` of its int8 buffer (row-major over the TFLite tensor); block
``(a, b)`` is ``x[a, :, b]``. When the tensor holds few DISTINCT blocks, as weights trained with product
quantization or kernel codebooks and exported with per-tensor scales do, it is stored as one packed index per
block (``bits`` = 1..8, LSB-first bit stream, a-major then b) plus an int8 codebook of ``K`` rows of ``d``
values, and read by a CUSTOM ``TfqCodebookDecode`` node placed before its consumer. Per-channel scales make
equal float blocks differ in int8, which is why the exact distinct-block approach needs per-tensor weights.

Layouts tried by default (the smallest result wins):

- CONV_2D ``(O, H, W, I)``: one block per 2-D kernel ``(o, i)``: ``A = O, d = H*W, B = I``;
- DEPTHWISE_CONV_2D ``(1, H, W, C)``: ``A = 1, d = H*W, B = C``;
- any weight, FULLY_CONNECTED ``(O, I)`` and 1x1 convs included: ``d`` contiguous values along the last
  axis, ``A = size/d, B = 1``, for ``d`` in 1, 2, 4, 8, 16, 32 dividing that axis (``d = 1`` is scalar
  clustering).

Running a compressed file: :func:`decompress` rebuilds the dense int8 flatbuffer byte for byte, which the
normal interpreter runs with XNNPACK at full speed; or the C kernel (``tflite_export.kernels``) decodes the
weights on every invoke (XNNPACK then skips the layers whose weights are no longer constant).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flatbuffers import flexbuffers

from tflite_export import flatbuffer as fb
from tflite_export._graph import check_flatbuffer

__all__ = [
    "CUSTOM_OP_NAME",
    "TensorCompression",
    "CompressionReport",
    "compress",
    "decompress",
    "is_compressed",
    "load_interpreter",
    "pack_indices",
    "unpack_indices",
]

CUSTOM_OP_NAME = "TfqCodebookDecode"
_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
_CONTIGUOUS_BLOCKS = (1, 2, 4, 8, 16, 32)
_ATTRS = ("A", "d", "B", "bits", "K")
# Flatbuffer bytes one compressed weight adds besides its payload (two tensor tables with short names, two
# buffers, the operator with its FlexBuffer options); measured about 230 with TF 2.21's schema.
_OVERHEAD_BYTES = 256
_MAX_ELEMENTS = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class TensorCompression:
    """What :func:`compress` did with one weight tensor.

    Attributes:
        name: Tensor name.
        op: The consuming op (``CONV_2D``, ...).
        shape: Tensor shape.
        compressed: Whether the tensor was replaced.
        reason: Why not, when it was not (empty otherwise).
        layout: ``(A, d, B)`` of the chosen view (None when no view qualified).
        num_blocks: ``A * B``.
        K: Distinct blocks (codebook rows).
        bits: Bits per packed index.
        bytes_before: Dense int8 bytes.
        bytes_after: Packed index bytes + codebook bytes (flatbuffer tables not counted).
    """

    name: str
    op: str
    shape: tuple[int, ...]
    compressed: bool
    reason: str = ""
    layout: tuple[int, int, int] | None = None
    num_blocks: int = 0
    K: int = 0
    bits: int = 0
    bytes_before: int = 0
    bytes_after: int = 0


@dataclasses.dataclass(frozen=True)
class CompressionReport:
    """Per-tensor results and file sizes of one :func:`compress` call.

    Attributes:
        tensors: One entry per weight tensor considered.
        size_before: Bytes of the input flatbuffer.
        size_after: Bytes of the compressed flatbuffer.
    """

    tensors: list[TensorCompression]
    size_before: int
    size_after: int

    @property
    def compressed(self) -> list[TensorCompression]:
        """The entries of the tensors that were replaced."""
        return [t for t in self.tensors if t.compressed]

    @property
    def ratio(self) -> float:
        """``size_before / size_after``."""
        return self.size_before / self.size_after

    def expected_size(self) -> int:
        """File size predicted from the payloads: the input size minus each replaced dense weight plus its
        packed indices and codebook. The real size exceeds it by the flatbuffer tables added per weight."""
        return self.size_before + sum(t.bytes_after - t.bytes_before for t in self.compressed)

    def __str__(self) -> str:
        header = (f"{'tensor':40s} {'op':17s} {'layout (A,d,B)':>18s} {'K':>5s} {'bits':>4s} "
                  f"{'before':>9s} {'after':>9s}  note")
        lines = [header]
        for t in self.tensors:
            layout = "x".join(str(v) for v in t.layout) if t.layout else "-"
            name = t.name if len(t.name) <= 40 else "..." + t.name[-37:]
            lines.append(f"{name:40s} {t.op:17s} {layout:>18s} {t.K or '-':>5} {t.bits or '-':>4} "
                         f"{t.bytes_before:9d} {t.bytes_after if t.compressed else t.bytes_before:9d}  "
                         f"{'compressed' if t.compressed else t.reason}")
        lines.append(f"file: {self.size_before} -> {self.size_after} bytes ({self.ratio:.2f}x); "
                     f"payload accounting predicts {self.expected_size()} bytes")
        return "\n".join(lines)


def pack_indices(indices: Any, bits: int) -> bytes:
    """Packs non-negative integers below ``2**bits`` into an LSB-first bit stream (zero-padded last byte)."""
    values = np.asarray(indices, np.int64).ravel()
    if not 1 <= bits <= 8 or values.size and (values.min() < 0 or values.max() >= 1 << bits):
        raise ValueError(f"`indices` must lie in [0, 2**bits) with 1 <= bits <= 8. Received: bits={bits}, "
                         f"indices in [{values.min() if values.size else 0}, "
                         f"{values.max() if values.size else 0}]")
    stream = ((values[:, None] >> np.arange(bits)) & 1).astype(np.uint8).ravel()
    return np.packbits(stream, bitorder="little").tobytes()


def unpack_indices(packed: Any, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_indices`: the first ``count`` indices of ``bits`` bits each."""
    data = np.frombuffer(bytes(packed), np.uint8)
    if data.size * 8 < count * bits:
        raise ValueError(f"`packed` holds {data.size} bytes; {count} indices of {bits} bits need "
                         f"{math.ceil(count * bits / 8)}.")
    stream = np.unpackbits(data, bitorder="little")[:count * bits].reshape(count, bits)
    return stream.astype(np.int64) @ (np.int64(1) << np.arange(bits, dtype=np.int64))


def _blocks(data: np.ndarray, layout: tuple[int, int, int]) -> np.ndarray:
    """The ``(A*B, d)`` block matrix of a flat int8 array viewed as ``(A, d, B)``."""
    a, d, b = layout
    return data.reshape(a, d, b).transpose(0, 2, 1).reshape(a * b, d)


def _layouts(op: str, shape: tuple[int, ...], spec: Any, name: str) -> list[tuple[int, int, int]]:
    """Candidate ``(A, d, B)`` views of a weight for an explicit ``spec`` or, with ``spec=None``, all defaults."""
    size = int(np.prod(shape, dtype=np.int64))
    kernel = len(shape) == 4 and op in ("CONV_2D", "DEPTHWISE_CONV_2D") and shape[1] * shape[2] > 1
    kernel_layout = (shape[0], shape[1] * shape[2], shape[3]) if kernel else None
    if isinstance(spec, (tuple, list)):
        layout = tuple(int(v) for v in spec)
        if len(layout) != 3 or min(layout) < 1 or int(np.prod(layout, dtype=np.int64)) != size:
            raise ValueError(f"`tensors[{name!r}]` must be a block size or an (A, d, B) tuple with A*d*B equal "
                             f"to the tensor size {size} (shape {shape}). Received: {spec!r}")
        return [layout]
    if spec is not None:
        if isinstance(spec, bool) or not isinstance(spec, (int, np.integer)) or spec < 1:
            raise ValueError(f"`tensors[{name!r}]` must be a positive block size, an (A, d, B) tuple or None. "
                             f"Received: {spec!r}")
        d = int(spec)
        if kernel_layout and d == kernel_layout[1]:
            return [kernel_layout]
        if shape and shape[-1] % d == 0:
            return [(size // d, d, 1)]
        raise ValueError(f"`tensors[{name!r}]`: block size {d} must divide the last axis of shape {shape}"
                         + (f" or equal the kernel size H*W={kernel_layout[1]}" if kernel_layout else "")
                         + f". Received: {spec!r}")
    layouts = [kernel_layout] if kernel_layout else []
    last = shape[-1] if shape else 1
    layouts += [(size // d, d, 1) for d in _CONTIGUOUS_BLOCKS if last % d == 0]
    return layouts


def _encode(data: np.ndarray, layouts: list[tuple[int, int, int]], max_bits: int):
    """The cheapest layout as ``(layout, codebook (K, d), indices, bits)``, or None if no layout has
    at most ``2**max_bits`` distinct blocks."""
    best = None
    for layout in layouts:
        blocks = _blocks(data, layout)
        if layout[1] == 1:
            codebook, inverse = np.unique(blocks.ravel(), return_inverse=True)
            codebook = codebook[:, None]
        else:
            codebook, inverse = np.unique(blocks, axis=0, return_inverse=True)
        k = codebook.shape[0]
        if k > 1 << max_bits:
            continue
        bits = max(1, math.ceil(math.log2(k)))
        cost = math.ceil(blocks.shape[0] * bits / 8) + codebook.size
        if best is None or cost < best[0]:
            best = (cost, layout, codebook, np.asarray(inverse).ravel(), bits)
    return None if best is None else best[1:]


def _weight_tensors(model: Any) -> list[tuple[int, int, int, str]]:
    """``(subgraph, tensor, first consumer position, consumer op)`` of every conv/depthwise/FC weight."""
    found, seen = [], set()
    for s, subgraph in enumerate(model.subgraphs):
        for position, op in enumerate(subgraph.operators or []):
            name = fb.op_name(model, op)
            if name in _WEIGHT_OPS and op.inputs is not None and len(op.inputs) > 1 and op.inputs[1] >= 0:
                key = (s, int(op.inputs[1]))
                if key not in seen:
                    seen.add(key)
                    found.append((s, key[1], position, name))
    return found


def _selection(model: Any, tensors: Any) -> list[tuple[int, int, int, str, Any]]:
    """The weights to consider, each with its layout spec (None: automatic)."""
    weights = _weight_tensors(model)
    if tensors is None:
        return [(*w, None) for w in weights]
    if isinstance(tensors, str) or not isinstance(tensors, (Mapping, Sequence)):
        raise TypeError(f"`tensors` must be None, a list of tensor names or a dict of tensor name -> block "
                        f"size / (A, d, B) / None. Received: tensors={tensors!r:.80}")
    specs = dict(tensors) if isinstance(tensors, Mapping) else {name: None for name in tensors}
    chosen, matched = [], set()
    for s, subgraph in enumerate(model.subgraphs):
        first_reader = {}
        for position, op in reversed(list(enumerate(subgraph.operators or []))):
            for t in op.inputs if op.inputs is not None else []:
                first_reader[int(t)] = (position, fb.op_name(model, op))
        for t, tensor in enumerate(subgraph.tensors):
            name = tensor.name.decode("utf-8", "replace")
            if name in specs and t in first_reader:
                matched.add(name)
                chosen.append((s, t, *first_reader[t], specs[name]))
    missing = [name for name in specs if name not in matched]
    if missing:
        available = [model.subgraphs[s].tensors[t].name.decode("utf-8", "replace") for s, t, _, _ in weights]
        raise ValueError(f"`tensors` names tensors that no operator reads: {missing}. Weight tensors of this "
                         f"model: {available[:20]}{' ...' if len(available) > 20 else ''}")
    return chosen


def _check_options(max_bits: Any, min_saving: Any) -> tuple[int, float]:
    if isinstance(max_bits, bool) or not isinstance(max_bits, (int, np.integer)) or not 1 <= max_bits <= 8:
        raise ValueError(f"`max_bits` must be an integer in 1..8. Received: max_bits={max_bits!r}")
    if isinstance(min_saving, bool) or not isinstance(min_saving, (int, float)) or not 0 <= min_saving < 1:
        raise ValueError(f"`min_saving` must be a fraction in [0, 1). Received: min_saving={min_saving!r}")
    return int(max_bits), float(min_saving)


def compress(int8_flatbuffer: bytes, tensors: Any = None, *, max_bits: int = 8, min_saving: float = 0.1,
             return_report: bool = False) -> bytes | tuple[bytes, CompressionReport]:
    """Replaces int8 weights that hold few distinct blocks by packed indices + codebook + a decode node.

    Lossless: :func:`decompress` restores the input. A weight is replaced when some layout has at most
    ``2**max_bits`` distinct blocks and the packed form, including about 256 bytes of flatbuffer tables,
    saves at least ``min_saving`` of the dense bytes.

    Args:
        int8_flatbuffer: A TFLite flatbuffer (normally a full-int8 file from ``tflite_export.convert``).
        tensors: None for every CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED weight with the cheapest default
            layout; or tensor names (a list) or a dict of tensor name -> block size ``d`` (the per-kernel
            layout when ``d == H*W`` of a conv kernel, else ``d`` contiguous values along the last axis),
            an explicit ``(A, d, B)`` view, or None (automatic). Named tensors may be any int8 constant that
            an operator reads.
        max_bits: Largest index width; at most ``2**max_bits`` codebook rows.
        min_saving: Smallest fraction of a weight's bytes the replacement must save.
        return_report: Also return a :class:`CompressionReport`.

    Returns:
        The compressed flatbuffer, and the report if ``return_report``.

    Raises:
        TypeError: ``int8_flatbuffer`` is not bytes, or ``tensors`` has the wrong type.
        ValueError: Not a TFLite flatbuffer, a named tensor is not read by any operator, a block size does not
            fit its tensor, or an option is out of range.
    """
    content = check_flatbuffer(int8_flatbuffer, "int8_flatbuffer")
    max_bits, min_saving = _check_options(max_bits, min_saving)
    model = fb.read_model(content, "int8_flatbuffer")
    selection = _selection(model, tensors)
    references: dict[int, int] = {}
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            references[tensor.buffer] = references.get(tensor.buffer, 0) + 1
    entries, plans = [], []
    for s, t, position, op, spec in selection:
        tensor = model.subgraphs[s].tensors[t]
        name, shape = tensor.name.decode("utf-8", "replace"), tuple(int(v) for v in tensor.shape)
        layouts = _layouts(op, shape, spec, name)  # validates an explicit spec even if the tensor is skipped
        data = fb.buffer_data(model, tensor.buffer)
        size = int(np.prod(shape, dtype=np.int64))
        reason = ("not int8" if fb.tensor_type_name(tensor.type) != "INT8" else
                  "no constant data" if data is None else
                  f"buffer shared with {references[tensor.buffer] - 1} other tensor(s)"
                  if references[tensor.buffer] > 1 else
                  f"{data.size} data bytes for {size} elements" if data.size != size else "")
        if reason:
            entries.append(TensorCompression(name, op, shape, False, reason, bytes_before=size))
            continue
        encoded = _encode(data.view(np.int8), layouts, max_bits)
        if encoded is None:
            entries.append(TensorCompression(name, op, shape, False, f"more than 2**{max_bits} distinct blocks",
                                             bytes_before=size))
            continue
        layout, codebook, indices, bits = encoded
        after = math.ceil(indices.size * bits / 8) + codebook.size
        entry = TensorCompression(name, op, shape, after + _OVERHEAD_BYTES <= (1 - min_saving) * size,
                                  "", layout, indices.size, codebook.shape[0], bits, size, after)
        if not entry.compressed:
            entry = dataclasses.replace(entry, reason=f"saves less than min_saving={min_saving:g}")
        else:
            plans.append((s, t, position, layout, codebook, indices, bits))
        entries.append(entry)
    if plans:
        _apply(model, plans)
    result = fb.write_model(model) if plans else content
    if return_report:
        return result, CompressionReport(entries, len(content), len(result))
    return result


def _apply(model: Any, plans: list) -> None:
    """Adds the index/codebook tensors and decode nodes and empties the dense weight buffers."""
    opcode = fb.add_operator_code(model, custom=CUSTOM_OP_NAME)
    s_schema = fb.schema()
    inserts: dict[int, list[tuple[int, Any]]] = {}
    for n, (s, t, position, layout, codebook, indices, bits) in enumerate(plans):
        subgraph, tensor = model.subgraphs[s], model.subgraphs[s].tensors[t]
        a, d, b = layout
        packed = pack_indices(indices, bits)
        index_tensor = fb.add_tensor(subgraph, f"tfq_cb{n}/indices", [len(packed)], s_schema.TensorType.UINT8,
                                     fb.add_buffer(model, packed))
        codebook_tensor = fb.add_tensor(subgraph, f"tfq_cb{n}/codebook", list(codebook.shape),
                                        s_schema.TensorType.INT8,
                                        fb.add_buffer(model, codebook.astype(np.int8).tobytes()))
        fb.set_buffer_data(model, tensor.buffer, None)
        options = flexbuffers.Dumps({"A": a, "d": d, "B": b, "bits": bits, "K": int(codebook.shape[0])})
        inserts.setdefault(s, []).append((position, (index_tensor, codebook_tensor, t, options)))
    for s, items in inserts.items():
        # From the last position backward, so that earlier positions stay valid.
        for position, (index_tensor, codebook_tensor, t, options) in sorted(items, key=lambda i: -i[0]):
            fb.insert_operator(model.subgraphs[s], position, opcode, [index_tensor, codebook_tensor], [t],
                               custom_options=options)


def is_compressed(content: bytes) -> bool:
    """Whether a flatbuffer holds ``TfqCodebookDecode`` nodes."""
    content = check_flatbuffer(content, "content")
    if CUSTOM_OP_NAME.encode() not in content:  # cheap pre-check before parsing the whole file
        return False
    model = fb.read_model(content)
    return any(fb.op_name(model, op) == CUSTOM_OP_NAME for sg in model.subgraphs for op in sg.operators or [])


def _attributes(op: Any, where: str) -> dict[str, int]:
    """The validated custom options of a decode node (the same rules as the C kernel)."""
    raw = bytes(np.asarray(op.customOptions, np.uint8)) if op.customOptions is not None else b""
    try:
        attrs = flexbuffers.Loads(raw)
    except Exception as exc:  # corrupt FlexBuffers raise IndexError, struct.error, ...
        raise ValueError(f"{where}: custom options are not a readable FlexBuffer ({type(exc).__name__}: {exc}); "
                         f"expected a map of integers A, d, B, bits, K. Received: {len(raw)} bytes") from exc
    if not isinstance(attrs, dict) or any(not isinstance(attrs.get(k), int) or isinstance(attrs.get(k), bool)
                                          for k in _ATTRS):
        raise ValueError(f"{where}: custom options must map A, d, B, bits, K to integers. Received: {attrs!r:.120}")
    a, d, b, bits, k = (attrs[key] for key in _ATTRS)
    if min(a, d, b) < 1 or not 1 <= bits <= 8 or not 1 <= k <= 1 << bits or a * d * b > _MAX_ELEMENTS \
            or k * d > _MAX_ELEMENTS:
        raise ValueError(f"{where}: attributes out of range; expected A, d, B >= 1, 1 <= bits <= 8, "
                         f"1 <= K <= 2**bits, A*d*B and K*d below 2**31. Received: A={a} d={d} B={b} bits={bits} "
                         f"K={k}")
    return {key: int(attrs[key]) for key in _ATTRS}


def _decode_node(model: Any, s: int, position: int, op: Any) -> tuple[int, bytes, list[int]]:
    """Validates one decode node; returns its output tensor, the dense bytes and its input tensors."""
    subgraph = model.subgraphs[s]
    count = len(subgraph.tensors)
    inputs = [int(i) for i in (op.inputs if op.inputs is not None else [])]
    outputs = [int(i) for i in (op.outputs if op.outputs is not None else [])]
    where = f"{CUSTOM_OP_NAME} node {position} of subgraph {s}"
    if len(inputs) != 2 or len(outputs) != 1 or not all(0 <= i < count for i in inputs + outputs):
        raise ValueError(f"{where}: expected 2 inputs (indices, codebook) and 1 output among {count} tensors. "
                         f"Received: inputs={inputs}, outputs={outputs}")
    out = subgraph.tensors[outputs[0]]
    where += f" (weight {out.name.decode('utf-8', 'replace')!r})"
    attrs = _attributes(op, where)
    a, d, b, bits, k = (attrs[key] for key in _ATTRS)
    index_tensor, codebook_tensor = (subgraph.tensors[i] for i in inputs)
    types = [fb.tensor_type_name(t.type) for t in (index_tensor, codebook_tensor, out)]
    if types != ["UINT8", "INT8", "INT8"]:
        raise ValueError(f"{where}: expected uint8 indices, an int8 codebook and an int8 output. Received: "
                         f"{types}")
    packed, codebook = (fb.buffer_data(model, t.buffer) for t in (index_tensor, codebook_tensor))
    packed_len, codebook_len = (0 if x is None else x.size for x in (packed, codebook))
    elements = int(np.prod(out.shape, dtype=np.int64))
    expected = math.ceil(a * b * bits / 8)
    if packed_len != expected:
        raise ValueError(f"{where}: packed indices have {packed_len} bytes; expected ceil(A*B*bits/8)={expected} "
                         f"for A={a} B={b} bits={bits}")
    if codebook_len != k * d:
        raise ValueError(f"{where}: codebook has {codebook_len} bytes; expected K*d={k * d} for K={k} d={d}")
    if elements != a * d * b:
        raise ValueError(f"{where}: output has {elements} elements (shape {list(out.shape)}); expected "
                         f"A*d*B={a * d * b}")
    if fb.buffer_data(model, out.buffer) is not None:
        raise ValueError(f"{where}: the output tensor already holds constant data")
    indices = unpack_indices(packed, a * b, bits)
    bad = np.flatnonzero(indices >= k)
    if bad.size:
        raise ValueError(f"{where}: {bad.size} indices are >= K={k} (first: index {indices[bad[0]]} of block "
                         f"({bad[0] // b}, {bad[0] % b})); the file is corrupt")
    blocks = codebook.view(np.int8).reshape(k, d)[indices]
    dense = blocks.reshape(a, b, d).transpose(0, 2, 1).tobytes()
    return outputs[0], dense, inputs


def decompress(compressed_bytes: bytes) -> bytes:
    """Rebuilds the dense int8 flatbuffer of a :func:`compress` result.

    Every ``TfqCodebookDecode`` node is decoded into its output tensor's buffer and removed with its index
    and codebook tensors and buffers. For a file written by :func:`compress` the result equals its input
    byte for byte (or :func:`tflite_export.flatbuffer.normalize` of it for files not written with TF's
    object API). A file without decode nodes is returned unchanged.

    Args:
        compressed_bytes: A flatbuffer from :func:`compress`.

    Returns:
        The dense flatbuffer.

    Raises:
        TypeError: ``compressed_bytes`` is not bytes.
        ValueError: Not a TFLite flatbuffer, or a decode node is malformed: unreadable or out-of-range
            attributes, wrong tensor types, buffer sizes that disagree with the attributes, or an index >= K.
    """
    content = check_flatbuffer(compressed_bytes, "compressed_bytes")
    model = fb.read_model(content, "compressed_bytes")  # parsed even without decode nodes: catches truncation
    decode_codes = [i for i in range(len(model.operatorCodes))
                    if fb.builtin_code(model, i) == fb.schema().BuiltinOperator.CUSTOM
                    and model.operatorCodes[i].customCode == CUSTOM_OP_NAME.encode()]
    if not decode_codes:
        return content
    dense_buffers: dict[int, bytes] = {}
    dropped_buffers: set[int] = set()
    for s, subgraph in enumerate(model.subgraphs):
        positions, dropped_tensors = [], set()
        for position, op in enumerate(subgraph.operators or []):
            if op.opcodeIndex not in decode_codes:
                continue
            out, dense, inputs = _decode_node(model, s, position, op)
            buffer = subgraph.tensors[out].buffer
            if buffer in dense_buffers:
                raise ValueError(f"{CUSTOM_OP_NAME} node {position} of subgraph {s}: its output buffer {buffer} "
                                 f"is written by another decode node")
            dense_buffers[buffer] = dense
            positions.append(position)
            dropped_tensors.update(inputs)
        if not positions:
            continue
        fb.remove_operators(subgraph, positions)
        still_read = set(fb.consumers(subgraph))
        dropped_tensors -= still_read  # an index/codebook tensor another node reads stays
        dropped_buffers.update(subgraph.tensors[t].buffer for t in dropped_tensors)
        fb.remove_tensors(model, s, dropped_tensors)
    for buffer, dense in dense_buffers.items():
        fb.set_buffer_data(model, buffer, np.frombuffer(dense, np.uint8))
    in_use = {t.buffer for sg in model.subgraphs for t in sg.tensors}
    fb.remove_buffers(model, dropped_buffers - in_use - {0})
    fb.remove_unused_operator_codes(model, decode_codes)
    return fb.write_model(model)


def load_interpreter(path_or_bytes: Any, *, use_kernel: bool = False, **kwargs: Any) -> Any:
    """An interpreter for a file that may be compressed.

    Args:
        path_or_bytes: A ``.tflite`` path or the flatbuffer bytes.
        use_kernel: For a compressed file, run the ``TfqCodebookDecode`` C kernel instead of decompressing
            first (smaller memory, but XNNPACK skips the layers whose weights are decoded at run time).
        **kwargs: Passed to :func:`tflite_export.runtime.make_interpreter` (``num_threads``, ``use_xnnpack``...).

    Returns:
        An allocated interpreter: for a compressed file, of the decompressed model (XNNPACK at full speed)
        unless ``use_kernel``.

    Raises:
        TypeError: ``path_or_bytes`` is neither a path nor bytes.
        ValueError: The file is not a TFLite flatbuffer or is malformed (see :func:`decompress`).
    """
    from tflite_export.runtime import make_interpreter

    if isinstance(path_or_bytes, (str, os.PathLike)):
        with open(path_or_bytes, "rb") as f:
            content = f.read()
    else:
        content = check_flatbuffer(path_or_bytes, "path_or_bytes")
    if not is_compressed(content):
        return make_interpreter(content, **kwargs)
    if use_kernel:
        from tflite_export import kernels

        registerers = list(kwargs.pop("custom_op_registerers", None) or []) + [kernels.registerer()]
        return make_interpreter(content, custom_op_registerers=registerers, **kwargs)
    return make_interpreter(decompress(content), **kwargs)
