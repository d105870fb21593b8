"""The "kernel" layout of compressed files: CUSTOM ``TfqCodebookDecode`` nodes that decode a weight at every
invoke (see ``tflite_export/kernels/FORMAT.md``). Writing, and the validated rebuild of the dense model.

A decode node is accepted only when its output is a tensor that holds no constant data, is not a graph input,
uses a buffer no other tensor uses, is written by no other node and is read by no node that runs before it;
otherwise the C kernel would write into model memory or a reader would see an undecoded tensor.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from flatbuffers import flexbuffers

from tflite_export import flatbuffer as fb

__all__ = ["CUSTOM_OP_NAME", "ATTRS", "apply", "decode_codes", "attributes", "decode_node", "read"]

CUSTOM_OP_NAME = "TfqCodebookDecode"
ATTRS = ("A", "d", "B", "bits", "K")
MAX_ELEMENTS = 2**31 - 1


def tensor_name(tensor: Any) -> str:
    """A tensor's name for messages; undecodable bytes are replaced, a missing name is ``<unnamed>``."""
    name = tensor.name
    if isinstance(name, bytes):
        return name.decode("utf-8", "replace")
    return str(name) if name else "<unnamed>"


def apply(model: Any, plans: list) -> None:
    """Adds the index/codebook tensors and decode nodes and empties the dense weight buffers."""
    from tflite_export.codebook import pack_indices

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


def decode_codes(model: Any) -> list[int]:
    """Operator-code indices of ``TfqCodebookDecode``."""
    custom = fb.schema().BuiltinOperator.CUSTOM
    return [i for i, code in enumerate(model.operatorCodes or [])
            if fb.builtin_code(model, i) == custom and code.customCode in (CUSTOM_OP_NAME.encode(), CUSTOM_OP_NAME)]


def attributes(op: Any, where: str) -> dict[str, int]:
    """The validated custom options of a decode node (the same rules as the C kernel)."""
    raw = bytes(np.asarray(op.customOptions, np.uint8)) if op.customOptions is not None else b""
    try:
        attrs = flexbuffers.Loads(raw)
    except Exception as exc:  # corrupt FlexBuffers raise IndexError, struct.error, ...
        raise ValueError(f"{where}: custom options are not a readable FlexBuffer ({type(exc).__name__}: {exc}); "
                         f"expected a map of integers A, d, B, bits, K. Received: {len(raw)} bytes") from exc
    if not isinstance(attrs, dict) or any(not isinstance(attrs.get(k), int) or isinstance(attrs.get(k), bool)
                                          for k in ATTRS):
        raise ValueError(f"{where}: custom options must map A, d, B, bits, K to integers. Received: {attrs!r:.120}")
    a, d, b, bits, k = (attrs[key] for key in ATTRS)
    if min(a, d, b) < 1 or not 1 <= bits <= 8 or not 1 <= k <= 1 << bits or a * d * b > MAX_ELEMENTS \
            or k * d > MAX_ELEMENTS:
        raise ValueError(f"{where}: attributes out of range; expected A, d, B >= 1, 1 <= bits <= 8, "
                         f"1 <= K <= 2**bits, A*d*B and K*d below 2**31. Received: A={a} d={d} B={b} bits={bits} "
                         f"K={k}")
    return {key: int(attrs[key]) for key in ATTRS}


def _buffer_of(model: Any, tensor: Any, where: str) -> int:
    buffer = int(tensor.buffer)
    if not 0 <= buffer < len(model.buffers or []):
        raise ValueError(f"{where}: tensor {tensor_name(tensor)!r} names buffer {buffer}; the model has "
                         f"{len(model.buffers or [])} buffers")
    return buffer


def decode_node(model: Any, s: int, position: int, op: Any, users: dict[int, int]) -> tuple[int, bytes, list[int], dict]:
    """Validates one decode node; returns its output tensor, the dense bytes, its inputs and its attributes.

    ``users`` counts the tensors that use each buffer (a decode output must own its buffer)."""
    subgraph = model.subgraphs[s]
    count = len(subgraph.tensors or [])
    inputs = [int(i) for i in (op.inputs if op.inputs is not None else [])]
    outputs = [int(i) for i in (op.outputs if op.outputs is not None else [])]
    where = _where(model, s, position, op)
    if len(inputs) != 2 or len(outputs) != 1 or not all(0 <= i < count for i in inputs + outputs):
        raise ValueError(f"{where}: expected 2 inputs (indices, codebook) and 1 output among {count} tensors. "
                         f"Received: inputs={inputs}, outputs={outputs}")
    out_index = outputs[0]
    out = subgraph.tensors[out_index]
    attrs = attributes(op, where)
    a, d, b, bits, k = (attrs[key] for key in ATTRS)
    index_tensor, codebook_tensor = (subgraph.tensors[i] for i in inputs)
    types = [fb.tensor_type_name(t.type) for t in (index_tensor, codebook_tensor, out)]
    if types != ["UINT8", "INT8", "INT8"]:
        raise ValueError(f"{where}: expected uint8 indices, an int8 codebook and an int8 output. Received: "
                         f"{types}")
    out_buffer = _buffer_of(model, out, where)
    if out_buffer == 0 or users.get(out_buffer, 0) != 1 or fb.buffer_data(model, out_buffer) is not None \
            or int(model.buffers[out_buffer].offset or 0) > 1:
        raise ValueError(f"{where}: the output tensor must own an empty buffer (not buffer 0, no constant data, "
                         f"used by no other tensor). Received: buffer {out_buffer}, used by "
                         f"{users.get(out_buffer, 0)} tensor(s)")
    if out_index in [int(i) for i in (subgraph.inputs if subgraph.inputs is not None else [])]:
        raise ValueError(f"{where}: the output tensor is a graph input")
    for other, node in enumerate(subgraph.operators or []):
        if other == position:
            continue
        if out_index in [int(i) for i in (node.outputs if node.outputs is not None else [])]:
            raise ValueError(f"{where}: node {other} also writes the decoded tensor")
        if other < position and out_index in [int(i) for i in (node.inputs if node.inputs is not None else [])]:
            raise ValueError(f"{where}: node {other} reads the decoded tensor before this node writes it")
    packed, codebook = (fb.buffer_data(model, _buffer_of(model, t, where)) for t in (index_tensor, codebook_tensor))
    packed_len, codebook_len = (0 if x is None else x.size for x in (packed, codebook))
    elements = int(np.prod(out.shape, dtype=np.int64)) if out.shape is not None else 1
    expected = math.ceil(a * b * bits / 8)
    if packed_len != expected:
        raise ValueError(f"{where}: packed indices have {packed_len} bytes; expected ceil(A*B*bits/8)={expected} "
                         f"for A={a} B={b} bits={bits}")
    if codebook_len != k * d:
        raise ValueError(f"{where}: codebook has {codebook_len} bytes; expected K*d={k * d} for K={k} d={d}")
    if elements != a * d * b:
        raise ValueError(f"{where}: output has {elements} elements (shape {list(out.shape)}); expected "
                         f"A*d*B={a * d * b}")
    from tflite_export.codebook import unpack_indices

    indices = unpack_indices(packed, a * b, bits)
    bad = np.flatnonzero(indices >= k)
    if bad.size:
        raise ValueError(f"{where}: {bad.size} indices are >= K={k} (first: index {indices[bad[0]]} of block "
                         f"({bad[0] // b}, {bad[0] % b})); the file is corrupt")
    blocks = codebook.view(np.int8).reshape(k, d)[indices]
    dense = blocks.reshape(a, b, d).transpose(0, 2, 1).tobytes()
    return out_index, dense, inputs, attrs


def _where(model: Any, s: int, position: int, op: Any) -> str:
    """``TfqCodebookDecode node P of subgraph S (weight NAME)`` for messages, naming the weight when it can."""
    where = f"{CUSTOM_OP_NAME} node {position} of subgraph {s}"
    outputs = [int(i) for i in (op.outputs if op.outputs is not None else [])]
    tensors = model.subgraphs[s].tensors or []
    if len(outputs) == 1 and 0 <= outputs[0] < len(tensors):
        where += f" (weight {tensor_name(tensors[outputs[0]])!r})"
    return where


def _buffer_users(model: Any) -> dict[int, int]:
    users: dict[int, int] = {}
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors or []:
            users[int(tensor.buffer)] = users.get(int(tensor.buffer), 0) + 1
    return users


def nodes(model: Any) -> list[tuple[int, int, Any]]:
    """``(subgraph, position, op)`` of every decode node."""
    codes = decode_codes(model)
    return [(s, p, op) for s, sg in enumerate(model.subgraphs) for p, op in enumerate(sg.operators or [])
            if op.opcodeIndex in codes]


def read(model: Any, length: int, max_bytes: int) -> bytes:
    """The dense model of a kernel-layout file of ``length`` bytes (``model`` is edited in place)."""
    codes = decode_codes(model)
    users = _buffer_users(model)
    attrs_of = [(s, p, op, attributes(op, _where(model, s, p, op))) for s, p, op in nodes(model)]
    total = length + sum(a["A"] * a["d"] * a["B"] for *_, a in attrs_of)
    if total > max_bytes:
        raise ValueError(f"the decompressed model would have about {total} bytes, more than max_bytes={max_bytes} "
                         f"(the file has {length}); raise `max_bytes` if the file is trusted")
    dense_buffers: dict[int, bytes] = {}
    dropped_buffers: set[int] = set()
    for s, subgraph in enumerate(model.subgraphs):
        positions, dropped_tensors = [], set()
        for position, op in enumerate(subgraph.operators or []):
            if op.opcodeIndex not in codes:
                continue
            out, dense, inputs, _ = decode_node(model, s, position, op, users)
            dense_buffers[int(subgraph.tensors[out].buffer)] = dense
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
    fb.remove_unused_operator_codes(model, codes)
    return fb.write_model(model)
