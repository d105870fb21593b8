"""Reads the static graph of a TFLite flatbuffer with the LiteRT interpreter (for verify and inspect).

The interpreter is created with ``BUILTIN_WITHOUT_DEFAULT_DELEGATES`` and never allocated: allocation adds
kernel scratch tensors (e.g. the im2col buffer of CONV_2D) that are not part of the file, and the default
XNNPACK delegate would append DELEGATE nodes. What is read here is exactly what the file holds for
subgraph 0, plus the tensor dtypes of any further subgraphs (control flow bodies).

Names are whatever bytes the file holds: a tensor name or custom op code that is not UTF-8 is read with
U+FFFD replacement characters (the interpreter's own accessors would raise ``UnicodeDecodeError``), and a
missing name reads as ``""`` (:func:`display_name` gives ``<unnamed>`` for messages).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

__all__ = ["TFLITE_IDENTIFIER", "check_flatbuffer", "StaticGraph", "load_static_graph", "dtype_name",
           "display_name", "readable_names"]

TFLITE_IDENTIFIER = b"TFL3"


def check_flatbuffer(value: Any, arg_name: str) -> bytes:
    """Returns ``value`` as bytes if it is a TFLite flatbuffer, else raises a Keras-style error.

    Args:
        value: The object to check.
        arg_name: The argument name used in the error message.

    Returns:
        The flatbuffer as an immutable ``bytes`` object.

    Raises:
        TypeError: ``value`` is not bytes-like.
        ValueError: ``value`` does not carry the ``TFL3`` file identifier at bytes 4..8.
    """
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    if not isinstance(value, bytes):
        hint = " To read a file, pass its bytes (`open(path, 'rb').read()`)." if isinstance(
            value, (str, os.PathLike)) else ""
        raise TypeError(f"`{arg_name}` must be the bytes of a TFLite flatbuffer.{hint} "
                        f"Received: {arg_name}={_short(value)} (type {type(value).__name__})")
    if len(value) < 8 or value[4:8] != TFLITE_IDENTIFIER:
        raise ValueError(
            f"`{arg_name}` is not a TFLite flatbuffer: bytes 4..8 must be the file identifier "
            f"{TFLITE_IDENTIFIER!r}, got {value[4:8]!r} ({len(value)} bytes in all). "
            f"Received: {arg_name}={_short(value)}")
    return value


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def display_name(name: Any, placeholder: str = "<unnamed>") -> str:
    """A tensor or op name for messages: bytes are decoded as UTF-8 with replacement characters; a missing or
    empty name gives ``placeholder``."""
    if isinstance(name, (bytes, bytearray, memoryview)):
        name = bytes(name).decode("utf-8", "replace")
    return str(name) if name else placeholder


class _ReadableNames:
    """Stands in for an interpreter's native wrapper (``interpreter._interpreter``) and answers ``TensorName`` /
    ``NodeName`` with U+FFFD for bytes that are not UTF-8, where the wrapper raises ``UnicodeDecodeError``.
    Every other attribute is the wrapper's own."""

    def __init__(self, native: Any):
        self._native = native

    def __getattr__(self, name: str) -> Any:
        return getattr(self._native, name)

    def _name(self, method: str, *args: Any) -> str:
        try:
            return getattr(self._native, method)(*args)
        except UnicodeDecodeError as exc:  # the undecodable bytes travel in the exception
            return bytes(exc.object).decode("utf-8", "replace")

    def TensorName(self, *args: Any) -> str:  # noqa: N802  (the wrapper's method name)
        return self._name("TensorName", *args)

    def NodeName(self, *args: Any) -> str:  # noqa: N802
        return self._name("NodeName", *args)


def readable_names(interpreter: Any) -> Any:
    """Makes an interpreter that is only listed, never run, read names that are not UTF-8 (see the module
    docstring); returns it. Interpreters handed to callers keep their native wrapper."""
    native = getattr(interpreter, "_interpreter", None)
    if native is not None and not isinstance(native, _ReadableNames):
        interpreter._interpreter = _ReadableNames(native)
    return interpreter


def dtype_name(dtype: Any) -> str:
    """The numpy name of a dtype given as a numpy type or dtype (``int8``, ``float32``, ...)."""
    return np.dtype(dtype).name


@dataclasses.dataclass(frozen=True)
class StaticGraph:
    """Tensors and nodes of a flatbuffer, as listed by an unallocated, undelegated interpreter.

    Attributes:
        tensors: Tensor details of subgraph 0, indexed by tensor index.
        ops: Node details of subgraph 0 in execution order: ``index``, ``op_name``, ``inputs``, ``outputs``
            (tensor indices, ``-1`` for an omitted optional input already removed).
        inputs: Tensor indices of the graph inputs.
        outputs: Tensor indices of the graph outputs.
        input_details: ``get_input_details()`` of the interpreter.
        output_details: ``get_output_details()`` of the interpreter.
        other_subgraph_tensors: Tensor details of subgraphs 1.. (control flow bodies), dtypes only.
    """

    tensors: dict[int, dict]
    ops: list[dict]
    inputs: list[int]
    outputs: list[int]
    input_details: list[dict]
    output_details: list[dict]
    other_subgraph_tensors: list[dict]

    @property
    def producers(self) -> dict[int, int]:
        """Maps each tensor index to the index of the node that writes it."""
        return {int(t): op["index"] for op in self.ops for t in op["outputs"]}

    @property
    def consumers(self) -> dict[int, list[int]]:
        """Maps each tensor index to the indices of the nodes that read it."""
        result: dict[int, list[int]] = {}
        for op in self.ops:
            for t in op["inputs"]:
                result.setdefault(int(t), []).append(op["index"])
        return result

    @property
    def constants(self) -> set[int]:
        """Tensors no node writes and that are not graph inputs: weights, biases, shapes, axes."""
        produced = set(self.producers)
        return {i for i in self.tensors if i not in produced and i not in self.inputs}

    def nbytes(self, index: int) -> int:
        """Bytes of a tensor's data from its static shape and dtype."""
        details = self.tensors[index]
        return int(np.prod(details["shape"], dtype=np.int64)) * np.dtype(details["dtype"]).itemsize


def load_static_graph(content: bytes, custom_op_registerers: list | None = None) -> StaticGraph:
    """Lists tensors and nodes of ``content`` without allocating or delegating.

    Args:
        content: A checked TFLite flatbuffer (see :func:`check_flatbuffer`).
        custom_op_registerers: Registerers for CUSTOM ops, passed to the interpreter that reads the file.

    Returns:
        The :class:`StaticGraph` of the flatbuffer.

    Raises:
        ValueError: The interpreter cannot read the flatbuffer (TFLite's message says why).
    """
    from tflite_export.runtime import make_interpreter

    try:
        interpreter = make_interpreter(content, use_xnnpack=False, custom_op_registerers=custom_op_registerers,
                                       allocate=False)
    except RuntimeError as exc:
        raise ValueError(f"`content`: the TFLite interpreter cannot read it: {' '.join(str(exc).split())}") from exc
    readable_names(interpreter)
    tensors = {d["index"]: d for d in interpreter.get_tensor_details(0)}
    ops = []
    for op in interpreter._get_ops_details():  # the only listing of nodes the Python API offers
        ops.append({
            "index": int(op["index"]),
            "op_name": str(op["op_name"]),
            # -1 marks an omitted optional operand (e.g. a FULLY_CONNECTED without bias)
            "inputs": [int(t) for t in op["inputs"] if t >= 0],
            "outputs": [int(t) for t in op["outputs"] if t >= 0],
        })
    other = []
    for sub in range(1, interpreter.num_subgraphs()):
        other.extend(interpreter.get_tensor_details(sub))
    input_details = interpreter.get_input_details()
    output_details = interpreter.get_output_details()
    return StaticGraph(
        tensors=tensors,
        ops=ops,
        inputs=[int(d["index"]) for d in input_details],
        outputs=[int(d["index"]) for d in output_details],
        input_details=input_details,
        output_details=output_details,
        other_subgraph_tensors=other,
    )
