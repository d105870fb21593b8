"""Editing finished TFLite flatbuffers with TensorFlow's generated object API (``ModelT`` and friends).

A file is read into a mutable ``ModelT`` tree (:func:`read_model`), edited with the helpers here, and written
back with the ``TFL3`` identifier (:func:`write_model`). TensorFlow's converter writes its int8 files with
this same object API, so reading and writing an unedited converter output gives the same bytes (measured
with TF 2.21); :func:`normalize` is that round trip, the reference for byte-exact comparisons.

Removal helpers renumber every reference (operator inputs/outputs/intermediates, subgraph inputs/outputs,
signature tensor maps, tensor buffers, metadata buffers), so that an edit can be undone exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import flatbuffers
import numpy as np

from tflite_export._graph import TFLITE_IDENTIFIER, check_flatbuffer

__all__ = [
    "schema",
    "read_model",
    "write_model",
    "normalize",
    "builtin_code",
    "op_name",
    "op_names",
    "tensor_dtype",
    "tensor_type_name",
    "buffer_data",
    "set_buffer_data",
    "consumers",
    "add_buffer",
    "add_tensor",
    "add_operator_code",
    "insert_operator",
    "remove_operators",
    "remove_tensors",
    "remove_buffers",
    "remove_unused_operator_codes",
    "check_references",
]

_NUMPY_TYPES = {
    "FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32, "UINT8": np.uint8, "INT64": np.int64,
    "BOOL": np.bool_, "INT16": np.int16, "INT8": np.int8, "FLOAT64": np.float64, "UINT64": np.uint64,
    "UINT32": np.uint32, "UINT16": np.uint16, "COMPLEX64": np.complex64, "COMPLEX128": np.complex128,
}


def schema():
    """The generated schema module (see ``tfq_ext._compat.tflite_schema``)."""
    from tfq_ext._compat import tflite_schema

    return tflite_schema()


def _names(enum_class: type) -> dict[int, str]:
    return {value: name for name, value in vars(enum_class).items() if not name.startswith("_")}


def read_model(content: Any, arg_name: str = "content") -> Any:
    """Parses a flatbuffer into a mutable ``ModelT``.

    Args:
        content: The bytes of a TFLite flatbuffer.
        arg_name: The argument name used in error messages.

    Returns:
        The ``ModelT`` object tree.

    Raises:
        TypeError: ``content`` is not bytes.
        ValueError: ``content`` lacks the ``TFL3`` identifier or cannot be parsed (e.g. truncated).
    """
    content = check_flatbuffer(content, arg_name)
    s = schema()
    try:
        model = s.ModelT.InitFromObj(s.Model.GetRootAs(content, 0))
    except Exception as exc:  # a corrupt table surfaces as IndexError, struct.error, ...
        raise ValueError(f"`{arg_name}` is not a readable TFLite flatbuffer ({type(exc).__name__}: {exc}); the "
                         f"file is truncated or corrupt. Received: {arg_name} of {len(content)} bytes") from exc
    if not model.subgraphs:
        raise ValueError(f"`{arg_name}` holds no subgraph; expected a TFLite model with at least one. "
                         f"Received: {arg_name} of {len(content)} bytes")
    return model


def write_model(model: Any) -> bytes:
    """Serializes a ``ModelT`` with the ``TFL3`` file identifier."""
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    return bytes(builder.Output())


def normalize(content: bytes) -> bytes:
    """The flatbuffer read and written back unchanged: the byte layout this module's writer produces."""
    return write_model(read_model(content))


def builtin_code(model: Any, opcode_index: int) -> int:
    """The builtin operator code of an operator code entry (codes above 127 live in ``builtinCode`` only)."""
    code = model.operatorCodes[opcode_index]
    return max(int(code.builtinCode), int(code.deprecatedBuiltinCode))


def op_name(model: Any, op: Any) -> str:
    """``CONV_2D``-style name of an operator; a custom operator gives its custom code."""
    code = builtin_code(model, op.opcodeIndex)
    if code == schema().BuiltinOperator.CUSTOM:
        custom = model.operatorCodes[op.opcodeIndex].customCode
        return custom.decode("utf-8", "replace") if isinstance(custom, bytes) else str(custom)
    return _names(schema().BuiltinOperator).get(code, f"BUILTIN_{code}")


def op_names(model: Any, subgraph_index: int = 0) -> list[str]:
    """Operator names of a subgraph in execution order."""
    return [op_name(model, op) for op in model.subgraphs[subgraph_index].operators or []]


def tensor_type_name(type_code: int) -> str:
    """``INT8``-style name of a schema ``TensorType`` code."""
    return _names(schema().TensorType).get(int(type_code), f"TYPE_{type_code}")


def tensor_dtype(tensor: Any) -> np.dtype | None:
    """The numpy dtype of a tensor (None for string, resource, variant and sub-byte types)."""
    dtype = _NUMPY_TYPES.get(tensor_type_name(tensor.type))
    return None if dtype is None else np.dtype(dtype)


def buffer_data(model: Any, buffer_index: int) -> np.ndarray | None:
    """The bytes of a buffer as a uint8 array, or None for an empty buffer."""
    data = model.buffers[buffer_index].data
    if data is None or len(data) == 0:
        return None
    return np.asarray(data, dtype=np.uint8)


def set_buffer_data(model: Any, buffer_index: int, data: Any) -> None:
    """Replaces a buffer's bytes (None empties it)."""
    buffer = model.buffers[buffer_index]
    buffer.data = None if data is None else np.frombuffer(bytes(np.asarray(data).tobytes()), np.uint8).copy()
    buffer.offset, buffer.size = 0, 0


def consumers(subgraph: Any) -> dict[int, list[int]]:
    """Maps each tensor index to the indices of the operators that read it."""
    result: dict[int, list[int]] = {}
    for i, op in enumerate(subgraph.operators or []):
        for t in op.inputs if op.inputs is not None else []:
            if t >= 0:
                result.setdefault(int(t), []).append(i)
    return result


def add_buffer(model: Any, data: Any = None) -> int:
    """Appends a buffer holding ``data`` (bytes-like or array, None for empty) and returns its index."""
    model.buffers.append(schema().BufferT())
    set_buffer_data(model, len(model.buffers) - 1, data)
    return len(model.buffers) - 1


def add_tensor(subgraph: Any, name: str, shape: Sequence[int], type_code: int, buffer_index: int) -> int:
    """Appends a tensor without quantization parameters to a subgraph and returns its index."""
    tensor = schema().TensorT()
    tensor.name = name.encode("utf-8")
    tensor.shape = np.asarray(shape, np.int32)
    tensor.type = int(type_code)
    tensor.buffer = int(buffer_index)
    subgraph.tensors.append(tensor)
    return len(subgraph.tensors) - 1


def add_operator_code(model: Any, *, builtin: int | None = None, custom: str | None = None,
                      version: int = 1) -> int:
    """Index of the operator code for a builtin or custom op, appended when the model lacks it."""
    s = schema()
    if (builtin is None) == (custom is None):
        raise ValueError(f"Pass exactly one of `builtin` and `custom`. Received: builtin={builtin!r}, "
                         f"custom={custom!r}")
    code = s.BuiltinOperator.CUSTOM if custom is not None else int(builtin)
    name = None if custom is None else custom.encode("utf-8")
    for i, entry in enumerate(model.operatorCodes):
        if builtin_code(model, i) == code and entry.customCode == name and entry.version == version:
            return i
    entry = s.OperatorCodeT()
    entry.builtinCode = code
    # Readers older than the 32-bit field look at the deprecated byte; 127 means "see builtinCode".
    entry.deprecatedBuiltinCode = min(code, s.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
    entry.customCode = name
    entry.version = int(version)
    model.operatorCodes.append(entry)
    return len(model.operatorCodes) - 1


def insert_operator(subgraph: Any, position: int, opcode_index: int, inputs: Sequence[int],
                    outputs: Sequence[int], custom_options: bytes | None = None) -> Any:
    """Inserts an operator at ``position`` of the execution order; custom options are FlexBuffer bytes."""
    op = schema().OperatorT()
    op.opcodeIndex = int(opcode_index)
    op.inputs = np.asarray(inputs, np.int32)
    op.outputs = np.asarray(outputs, np.int32)
    if custom_options is not None:
        op.customOptions = np.frombuffer(bytes(custom_options), np.uint8).copy()
        op.customOptionsFormat = schema().CustomOptionsFormat.FLEXBUFFERS
    subgraph.operators.insert(position, op)
    return op


def remove_operators(subgraph: Any, indices: Iterable[int]) -> None:
    """Deletes operators by position."""
    drop = {int(i) for i in indices}
    subgraph.operators = [op for i, op in enumerate(subgraph.operators) if i not in drop]


def _remap(values: Any, mapping: np.ndarray, what: str) -> Any:
    """Renumbers a list of indices (-1 stays -1); a reference to a removed entry is an error."""
    if values is None:
        return None
    array = np.asarray(values, np.int64)
    mapped = np.where(array >= 0, mapping[np.clip(array, 0, len(mapping) - 1)], -1)
    if np.any((array >= 0) & (mapped < 0)):
        raise ValueError(f"Cannot remove {what}: it is still referenced. Received: references "
                         f"{array[(array >= 0) & (mapped < 0)].tolist()}")
    return mapped.astype(np.int32)


def _mapping(size: int, removed: set[int]) -> np.ndarray:
    keep = np.ones(size, bool)
    keep[list(removed)] = False
    mapping = np.full(size, -1, np.int64)
    mapping[keep] = np.arange(int(keep.sum()))
    return mapping


def remove_tensors(model: Any, subgraph_index: int, indices: Iterable[int]) -> None:
    """Deletes tensors of a subgraph and renumbers every reference to the remaining ones."""
    removed = {int(i) for i in indices}
    if not removed:
        return
    subgraph = model.subgraphs[subgraph_index]
    mapping = _mapping(len(subgraph.tensors), removed)
    what = f"tensors {sorted(removed)} of subgraph {subgraph_index}"
    for op in subgraph.operators or []:
        op.inputs = _remap(op.inputs, mapping, what)
        op.outputs = _remap(op.outputs, mapping, what)
        op.intermediates = _remap(op.intermediates, mapping, what)
    subgraph.inputs = _remap(subgraph.inputs, mapping, what)
    subgraph.outputs = _remap(subgraph.outputs, mapping, what)
    for signature in model.signatureDefs or []:
        if signature.subgraphIndex == subgraph_index:
            for entry in (signature.inputs or []) + (signature.outputs or []):
                entry.tensorIndex = int(_remap([entry.tensorIndex], mapping, what)[0])
    subgraph.tensors = [t for i, t in enumerate(subgraph.tensors) if i not in removed]


def remove_buffers(model: Any, indices: Iterable[int]) -> None:
    """Deletes buffers and renumbers the tensors and metadata entries that point at the remaining ones."""
    removed = {int(i) for i in indices}
    if not removed:
        return
    mapping = _mapping(len(model.buffers), removed)
    what = f"buffers {sorted(removed)}"
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors or []:
            tensor.buffer = int(_remap([tensor.buffer], mapping, what)[0])
    for entry in model.metadata or []:
        entry.buffer = int(_remap([entry.buffer], mapping, what)[0])
    if model.metadataBuffer is not None:
        model.metadataBuffer = _remap(model.metadataBuffer, mapping, what)
    model.buffers = [b for i, b in enumerate(model.buffers) if i not in removed]


def remove_unused_operator_codes(model: Any, candidates: Iterable[int]) -> None:
    """Deletes the ``candidates`` operator codes that no operator of any subgraph uses, renumbering the rest.

    Only candidates are considered: converters keep unused codes (e.g. QUANTIZE in an int8-interface file),
    and removing those would change the file.
    """
    used = {int(op.opcodeIndex) for sg in model.subgraphs for op in sg.operators or []}
    removed = {int(i) for i in candidates} - used
    if not removed:
        return
    mapping = _mapping(len(model.operatorCodes), removed)
    for subgraph in model.subgraphs:
        for op in subgraph.operators or []:
            op.opcodeIndex = int(mapping[op.opcodeIndex])
    model.operatorCodes = [c for i, c in enumerate(model.operatorCodes) if i not in removed]


def check_references(model: Any, arg_name: str = "content") -> None:
    """Raises ``ValueError`` naming the first operator-code, tensor or buffer index that points nowhere.

    The generated object API reads any integer the file holds; editing or decoding a hostile file needs every
    reference checked before it is followed.
    """
    codes, buffers = len(model.operatorCodes or []), len(model.buffers or [])
    for s, subgraph in enumerate(model.subgraphs or []):
        tensors = len(subgraph.tensors or [])
        for t, tensor in enumerate(subgraph.tensors or []):
            if not 0 <= int(tensor.buffer) < buffers:
                raise ValueError(f"`{arg_name}`: tensor {t} of subgraph {s} names buffer {int(tensor.buffer)}; "
                                 f"the model has {buffers} buffers")
        for p, op in enumerate(subgraph.operators or []):
            if not 0 <= int(op.opcodeIndex) < codes:
                raise ValueError(f"`{arg_name}`: operator {p} of subgraph {s} uses operator code "
                                 f"{int(op.opcodeIndex)}; the model has {codes}")
            for what, values, optional in (("input", op.inputs, True), ("output", op.outputs, False),
                                           ("intermediate", op.intermediates, False)):
                for v in values if values is not None else []:
                    if not (0 <= int(v) < tensors or optional and int(v) == -1):
                        raise ValueError(f"`{arg_name}`: operator {p} of subgraph {s} has {what} tensor {int(v)}; "
                                         f"the subgraph has {tensors} tensors")
        for what, values in (("input", subgraph.inputs), ("output", subgraph.outputs)):
            for v in values if values is not None else []:
                if not 0 <= int(v) < tensors:
                    raise ValueError(f"`{arg_name}`: subgraph {s} {what} {int(v)} is not one of its {tensors} "
                                     f"tensors")
    subgraphs = len(model.subgraphs or [])
    for signature in model.signatureDefs or []:
        if not 0 <= int(signature.subgraphIndex) < subgraphs:
            raise ValueError(f"`{arg_name}`: a signature names subgraph {int(signature.subgraphIndex)}; the model "
                             f"has {subgraphs}")
        tensors = len(model.subgraphs[signature.subgraphIndex].tensors or [])
        for entry in (signature.inputs or []) + (signature.outputs or []):
            if not 0 <= int(entry.tensorIndex) < tensors:
                raise ValueError(f"`{arg_name}`: a signature names tensor {int(entry.tensorIndex)} of subgraph "
                                 f"{int(signature.subgraphIndex)}, which has {tensors} tensors")
