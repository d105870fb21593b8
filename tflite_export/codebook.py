"""Lossless codebook compression of int8 TFLite files: ``compress``, ``decompress``, ``describe``.

A weight is viewed as shape ``(A, d, B)`` of its int8 buffer (row-major over the TFLite tensor); block
``(a, b)`` is ``x[a, :, b]``. Two encodings, the smaller wins per tensor:

- block codebook: when the tensor holds few DISTINCT blocks, as weights trained with product quantization or
  kernel codebooks and exported with per-tensor scales do, one packed index per block (``bits`` = 1..8) plus
  an int8 codebook of ``K`` rows of ``d`` values;
- variable-width codes (``layout="loader"`` only): each block ("group") gets its own code width and indexes a
  table shared by the groups of that width, which is how DiffQ's learned bits per group look in int8.

Per-channel scales make equal float blocks differ in int8, which is why both need per-tensor weights.

Views tried by default (the smallest result wins):

- CONV_2D ``(O, H, W, I)``: one block per 2-D kernel ``(o, i)``: ``A = O, d = H*W, B = I``;
- DEPTHWISE_CONV_2D ``(1, H, W, C)``: ``A = 1, d = H*W, B = C``;
- any weight, FULLY_CONNECTED ``(O, I)`` and 1x1 convs included: ``d`` contiguous values along the last
  axis, ``A = size/d, B = 1``, for ``d`` in 1, 2, 4, 8, 16, 32 dividing that axis (``d = 1`` is scalar
  clustering);
- variable-width groups also: ``g`` values along the first axis, ``(O/g, g, size/O)`` (a Keras kernel's
  last axis, where DiffQ forms its groups), and ``g`` contiguous values, for ``g`` in 4, 8, 16.

File layouts (``tflite_export/kernels/FORMAT.md``): ``"loader"`` (default) keeps the flatbuffer of the dense
model and moves the compressed weights past its end; :func:`decompress` here or ``tfq_decompress`` in C
(``tflite_export.kernels.decompress_native``) appends the decoded weights, and the result runs with XNNPACK at
full speed. ``"kernel"`` puts a CUSTOM ``TfqCodebookDecode`` node before each weight, run by the C kernel at
every invoke (XNNPACK then skips those layers); :func:`decompress` rebuilds its dense file byte for byte.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from tflite_export import _kernel_layout, _loader_layout
from tflite_export import flatbuffer as fb
from tflite_export._graph import check_flatbuffer
from tflite_export._kernel_layout import CUSTOM_OP_NAME, tensor_name

__all__ = [
    "CUSTOM_OP_NAME",
    "TensorCompression",
    "CompressionReport",
    "LAYOUTS",
    "compress",
    "decompress",
    "describe",
    "default_max_bytes",
    "is_compressed",
    "layout_of",
    "load_interpreter",
    "pack_indices",
    "unpack_indices",
]

LAYOUTS = ("loader", "kernel")
default_max_bytes = _loader_layout.default_max_bytes
_WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
_CONTIGUOUS_BLOCKS = (1, 2, 4, 8, 16, 32)
_GROUPS = (4, 8, 16)
# Flatbuffer bytes one compressed weight adds besides its payload (two tensor tables with short names, two
# buffers, the operator with its FlexBuffer options); measured about 230 with TF 2.21's schema.
_OVERHEAD_BYTES = 256


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
        K: Distinct blocks (codebook rows); for variable-width codes, the entries of all code tables.
        bits: Bits per packed index; for variable-width codes, the widest group's.
        bytes_before: Dense int8 bytes.
        bytes_after: Packed index bytes + codebook bytes (flatbuffer tables not counted).
        encoding: ``"codebook"`` or ``"varwidth"`` (empty when not compressed).
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
    encoding: str = ""

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per weight element (payloads only)."""
        return 8.0 * self.bytes_after / max(1, self.bytes_before)


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


def _group_layouts(shape: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """Views for variable-width groups: ``g`` values along the first axis or along the last."""
    size = int(np.prod(shape, dtype=np.int64))
    if not shape or size < 2:
        return []
    views = [(shape[0] // g, g, size // shape[0]) for g in _GROUPS if len(shape) > 1 and shape[0] % g == 0]
    views += [(size // g, g, 1) for g in _GROUPS if shape[-1] % g == 0]
    return list(dict.fromkeys(views))


def _encode(data: np.ndarray, layouts: list[tuple[int, int, int]], max_bits: int,
            group_layouts: list[tuple[int, int, int]] = ()) -> dict | None:
    """The cheapest encoding as a dict (``kind``, ``view``, ``cost`` and the payload parts), or None when no
    block-codebook view has at most ``2**max_bits`` distinct blocks and no variable-width view was tried."""
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
        if best is None or cost < best["cost"]:
            best = {"kind": 1, "view": layout, "cost": cost, "codebook": codebook,
                    "indices": np.asarray(inverse).ravel(), "bits": bits}
    for layout in group_layouts:
        blocks = _blocks(data, layout)
        if best is not None and math.ceil(blocks.size / 8) >= best["cost"]:
            continue  # one bit per value already costs more
        encoded = _loader_layout.encode_varwidth(blocks, max_bits)
        if encoded is None:
            continue
        f, b0, payload, table, cost = encoded
        if best is None or cost < best["cost"]:
            best = {"kind": 2, "view": layout, "cost": cost, "f": f, "b0": b0, "payload": payload, "table": table,
                    "widest": b0 + (1 << f) - 1 if f else b0, "entries": len(table) - 16}
    return best


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


def _check_layout(layout: Any) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"`layout` must be one of {LAYOUTS}: \"loader\" (decompressed at load, runs at dense "
                         f"speed) or \"kernel\" (run by the TfqCodebookDecode custom op). Received: layout={layout!r}")
    return layout


def compress(int8_flatbuffer: bytes, tensors: Any = None, *, max_bits: int = 8, min_saving: float = 0.1,
             layout: str = "loader", return_report: bool = False) -> bytes | tuple[bytes, CompressionReport]:
    """Replaces int8 weights that hold few distinct values or blocks by packed codes and small tables.

    Lossless: :func:`decompress` gives back a model that computes exactly what the input does (for
    ``layout="kernel"``, the input itself, byte for byte). A weight is replaced when its encoding, including
    about 256 bytes of flatbuffer tables, saves at least ``min_saving`` of the dense bytes.

    Args:
        int8_flatbuffer: A TFLite flatbuffer (normally a full-int8 file from ``tflite_export.convert``).
        tensors: None for every CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED weight with the cheapest default
            view; or tensor names (a list) or a dict of tensor name -> block size ``d`` (the per-kernel
            view when ``d == H*W`` of a conv kernel, else ``d`` contiguous values along the last axis),
            an explicit ``(A, d, B)`` view, or None (automatic). Named tensors may be any int8 constant that
            an operator reads. An explicit block size or view selects the block codebook.
        max_bits: Largest index or code width; at most ``2**max_bits`` codebook rows or table entries.
        min_saving: Smallest fraction of a weight's bytes the replacement must save.
        layout: ``"loader"`` (default): decompressed when loaded (:func:`decompress`, or ``tfq_decompress`` in
            C on a device), then runs at dense speed with XNNPACK; block codebooks and variable-width codes.
            ``"kernel"``: runs as is with the ``TfqCodebookDecode`` custom op registered; block codebooks only.
        return_report: Also return a :class:`CompressionReport`.

    Returns:
        The compressed flatbuffer, and the report if ``return_report``.

    Raises:
        TypeError: ``int8_flatbuffer`` is not bytes, or ``tensors`` has the wrong type.
        ValueError: Not a TFLite flatbuffer, already compressed, a named tensor is not read by any operator, a
            block size does not fit its tensor, or an option is out of range.
    """
    content = check_flatbuffer(int8_flatbuffer, "int8_flatbuffer")
    max_bits, min_saving = _check_options(max_bits, min_saving)
    layout = _check_layout(layout)
    model = fb.read_model(content, "int8_flatbuffer")
    fb.check_references(model, "int8_flatbuffer")
    if _loader_layout.has_entry(model) or _kernel_layout.decode_codes(model):
        raise ValueError("`int8_flatbuffer` is already compressed (or is a compressed file after loading); pass "
                         "the dense file that was compressed.")
    external = [i for i, b in enumerate(model.buffers) if int(b.offset or 0) > 1]
    if external:
        raise ValueError(f"`int8_flatbuffer` stores buffers {external[:5]} outside the flatbuffer (offset > 1); "
                         f"compress supports files that hold their weights inline")
    selection = _selection(model, tensors)
    references: dict[int, int] = {}
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            references[tensor.buffer] = references.get(tensor.buffer, 0) + 1
    entries, plans = [], []
    for s, t, position, op, spec in selection:
        tensor = model.subgraphs[s].tensors[t]
        name, shape = tensor_name(tensor), tuple(int(v) for v in tensor.shape)
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
        groups = _group_layouts(shape) if layout == "loader" and spec is None else []
        encoded = _encode(data.view(np.int8), layouts, max_bits, groups)
        if encoded is None:
            entries.append(TensorCompression(name, op, shape, False, f"more than 2**{max_bits} distinct blocks",
                                             bytes_before=size))
            continue
        view, after = encoded["view"], encoded["cost"]
        if encoded["kind"] == 1:
            k, bits, encoding = encoded["codebook"].shape[0], encoded["bits"], "codebook"
        else:
            k, bits, encoding = encoded["entries"], encoded["widest"], "varwidth"
        entry = TensorCompression(name, op, shape, after + _OVERHEAD_BYTES <= (1 - min_saving) * size,
                                  "", view, view[0] * view[2], k, bits, size, after, encoding)
        if not entry.compressed:
            entry = dataclasses.replace(entry, reason=f"saves less than min_saving={min_saving:g}")
        else:
            plans.append((s, t, position, encoded))
        entries.append(entry)
    if not plans:
        result = content
    elif layout == "kernel":
        _kernel_layout.apply(model, [(s, t, p, e["view"], e["codebook"], e["indices"], e["bits"])
                                     for s, t, p, e in plans])
        result = fb.write_model(model)
    else:
        result = _loader_layout.write(model, [_loader_plan(model, s, t, e) for s, t, _, e in plans])
    if return_report:
        return result, CompressionReport(entries, len(content), len(result))
    return result


def _loader_plan(model: Any, s: int, t: int, encoded: dict) -> _loader_layout.Plan:
    buffer = int(model.subgraphs[s].tensors[t].buffer)
    if encoded["kind"] == 1:
        return _loader_layout.Plan(buffer, 1, encoded["view"], encoded["bits"], int(encoded["codebook"].shape[0]),
                                   pack_indices(encoded["indices"], encoded["bits"]),
                                   encoded["codebook"].astype(np.int8).tobytes())
    return _loader_layout.Plan(buffer, 2, encoded["view"], encoded["f"], encoded["b0"], encoded["payload"],
                               encoded["table"])


def _read(content: Any, arg_name: str) -> tuple[bytes, Any, str]:
    """The checked bytes, the parsed model and its layout (``"loader"``, ``"kernel"`` or ``"dense"``)."""
    content = check_flatbuffer(content, arg_name)
    model = fb.read_model(content, arg_name)
    fb.check_references(model, arg_name)
    # a TfqCodebookDecode operator code (even without a node) marks the kernel layout, as in tfq_loader.c
    loader, kernel = _loader_layout.has_entry(model), bool(_kernel_layout.decode_codes(model))
    if loader and _loader_layout.is_loaded(model, len(content)):
        return content, model, "dense"  # decompressed already: the weights follow the flatbuffer
    if loader and kernel:
        raise ValueError(f"`{arg_name}` has both a `tfq_codebook` descriptor and TfqCodebookDecode nodes; a "
                         f"compressed file uses one layout")
    return content, model, "loader" if loader else "kernel" if kernel else "dense"


def is_compressed(content: bytes) -> bool:
    """Whether a flatbuffer is a compressed file of either layout."""
    content = check_flatbuffer(content, "content")
    if CUSTOM_OP_NAME.encode() not in content and _loader_layout.METADATA_NAME not in content:
        return False  # cheap pre-check before parsing the whole file
    return _read(content, "content")[2] != "dense"


def layout_of(content: bytes) -> str:
    """``"loader"``, ``"kernel"`` or ``"dense"`` (not compressed)."""
    return _read(content, "content")[2]


def _check_max_bytes(max_bytes: Any, length: int) -> int:
    if max_bytes is None:
        return default_max_bytes(length)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 1:
        raise ValueError(f"`max_bytes` must be a positive integer or None (default: max(16 MiB, 256 x the file "
                         f"size)). Received: max_bytes={max_bytes!r}")
    return int(max_bytes)


def decompress(compressed_bytes: bytes, *, max_bytes: int | None = None) -> bytes:
    """The dense int8 model of a :func:`compress` result, ready for any TFLite interpreter.

    Loader layout: the file followed by its decoded weights at the places its buffers point to
    (``tflite_export/kernels/FORMAT.md``); ``tfq_decompress`` in C gives the same bytes. Kernel layout: every
    ``TfqCodebookDecode`` node is decoded into its output tensor's buffer and removed with its index and
    codebook tensors; for a file written by :func:`compress` the result equals its input byte for byte (or
    :func:`tflite_export.flatbuffer.normalize` of it for files not written with TF's object API). A file
    that is not compressed is returned unchanged.

    Args:
        compressed_bytes: A flatbuffer from :func:`compress`.
        max_bytes: Largest decompressed size accepted (default ``max(16 MiB, 256 * len(compressed_bytes))``,
            which no real model reaches and a decompression bomb exceeds).

    Returns:
        The dense flatbuffer.

    Raises:
        TypeError: ``compressed_bytes`` is not bytes.
        ValueError: Not a TFLite flatbuffer, a reference points nowhere, the result would exceed
            ``max_bytes``, or the compressed weights are malformed (the message names the node, entry or tensor).
    """
    content, model, layout = _read(compressed_bytes, "compressed_bytes")
    limit = _check_max_bytes(max_bytes, len(content))
    if layout == "loader":
        return _loader_layout.read(content, model, limit)
    if layout == "kernel":
        return _kernel_layout.read(model, len(content), limit)
    return content


def describe(content: bytes) -> list[TensorCompression]:
    """The compressed weights of a file of either layout (empty for a dense file), validated.

    Raises:
        TypeError: ``content`` is not bytes.
        ValueError: The file is not a TFLite flatbuffer or its compressed weights are malformed.
    """
    content, model, layout = _read(content, "content")
    found = []
    if layout == "loader":
        entries, _ = _loader_layout.entries(model, len(content))
        owners = {}
        for s, subgraph in enumerate(model.subgraphs):
            for tensor in subgraph.tensors or []:
                owners.setdefault(int(tensor.buffer), tensor)
        readers = {}
        for subgraph in model.subgraphs:
            for op in subgraph.operators or []:
                for t in op.inputs if op.inputs is not None else []:
                    if t >= 0:
                        readers.setdefault(int(subgraph.tensors[t].buffer), fb.op_name(model, op))
        for i, e in enumerate(entries):
            payload, table = (fb.buffer_data(model, b) for b in (e.payload, e.table))
            after = sum(0 if x is None else x.size for x in (payload, table))
            tensor = owners.get(e.target)
            name = tensor_name(tensor) if tensor is not None else f"<buffer {e.target}>"
            shape = tuple(int(v) for v in tensor.shape) if tensor is not None and tensor.shape is not None else ()
            if e.kind == 1:
                k, bits, encoding = e.K, e.bits, "codebook"
            else:
                k = int(np.frombuffer(bytes(table[:16]), "<u2").sum()) if table is not None else 0
                bits, encoding = e.K + (1 << e.bits) - 1 if e.bits else e.K, "varwidth"
            _loader_layout.decode_entry(model, i, e)  # checks every index / code
            found.append(TensorCompression(name, readers.get(e.target, ""), shape, True, "", e.view,
                                           e.view[0] * e.view[2], k, bits, e.size, after, encoding))
        return found
    users = _kernel_layout._buffer_users(model)
    for s, position, op in _kernel_layout.nodes(model):
        out, dense, inputs, attrs = _kernel_layout.decode_node(model, s, position, op, users)
        subgraph = model.subgraphs[s]
        tensor = subgraph.tensors[out]
        reader = next((fb.op_name(model, other) for other in subgraph.operators or []
                       if other.inputs is not None and out in [int(i) for i in other.inputs]), "")
        after = sum(int(np.prod(subgraph.tensors[i].shape, dtype=np.int64)) for i in inputs)
        found.append(TensorCompression(tensor_name(tensor), reader, tuple(int(v) for v in tensor.shape), True, "",
                                       (attrs["A"], attrs["d"], attrs["B"]), attrs["A"] * attrs["B"], attrs["K"],
                                       attrs["bits"], len(dense), after, "codebook"))
    return found



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
    layout = layout_of(content)
    if layout == "dense":
        return make_interpreter(content, **kwargs)
    if use_kernel:
        from tflite_export import kernels

        if layout != "kernel":
            raise ValueError("`use_kernel=True` needs a file compressed with layout=\"kernel\"; this one has the "
                             "loader layout, which is decompressed at load (`use_kernel=False`) and runs at dense "
                             "speed.")
        describe(content)  # the kernel checks the same rules; this names the node first

        registerers = list(kwargs.pop("custom_op_registerers", None) or []) + [kernels.registerer()]
        return make_interpreter(content, custom_op_registerers=registerers, **kwargs)
    return make_interpreter(decompress(content), **kwargs)
