"""Packed export of a DiffQ model: integer codes + per-tensor range + per-group bits, bit-packed, exact round trip.

Payload of one DiffQ tensor (each part byte-aligned, bits little-endian within bytes, values LSB first):
  float32 min, float32 max | 1 byte: smallest bits b0 (low 4 bits), field width f (high 4 bits) |
  (b_g - b0) for every group at f bits | every group's codes at b_g bits, groups in row-major order.
The grid ("range" or "zero", see ``tfq_ext.ops.diffq``) is recorded in the index. Other weights are float32
little-endian. The file is ``MAGIC``, a uint32 index length, a JSON index (names, shapes,
offsets) and the payloads; ``len(payload)`` equals :func:`tfq_ext.diffq.true_size` of the model.

References: Defossez, Adi, Synnaeve 2021, arXiv 2104.09987.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from tfq_ext._keras import keras
from tfq_ext.diffq.apply import _walk, diffq_layers
from tfq_ext.diffq.wrappers import DiffQWrapper, UniformQuantWrapper, weight_paths
from tfq_ext.ops import diffq as ops

__all__ = ["PackedTensor", "PackedModel", "export_packed", "pack_varwidth", "unpack_varwidth", "MAGIC"]

MAGIC = b"TFQDIFFQ"


def pack_varwidth(values: np.ndarray, widths: np.ndarray) -> bytes:
    """Bit-packs non-negative ``values[i]`` in ``widths[i]`` bits each (LSB first, little-endian bit order)."""
    values = np.asarray(values, dtype=np.int64).ravel()
    widths = np.asarray(widths, dtype=np.int64).ravel()
    if values.size == 0 or int(widths.max(initial=0)) == 0:
        return b""
    shifts = np.arange(int(widths.max()))
    bits = (values[:, None] >> shifts[None, :]) & 1
    stream = bits[shifts[None, :] < widths[:, None]].astype(np.uint8)
    return np.packbits(stream, bitorder="little").tobytes()


def unpack_varwidth(data: bytes, widths: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_varwidth` for the same ``widths``."""
    widths = np.asarray(widths, dtype=np.int64).ravel()
    total = int(widths.sum())
    if total == 0:
        return np.zeros(widths.size, np.int64)
    stream = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[:total]
    if stream.size < total:
        raise ValueError(f"`data` holds {stream.size} bits but `widths` need {total}; it is truncated or packed "
                         f"with other widths. Received: len(data)={len(data)} bytes")
    shifts = np.arange(int(widths.max()))
    bits = np.zeros((widths.size, shifts.size), np.int64)
    bits[shifts[None, :] < widths[:, None]] = stream
    return (bits << shifts[None, :]).sum(axis=1)


@dataclass
class PackedTensor:
    """One weight: ``kind`` "diffq" (codes, bits, range) or "float32" (``values``)."""

    layer: str
    name: str
    shape: Tuple[int, ...]
    kind: str
    group_size: int = 0
    codes: Optional[np.ndarray] = None  # (n_groups, group_size) int
    bits: Optional[np.ndarray] = None  # (n_groups,) int in [1, 15]
    w_min: float = 0.0
    w_max: float = 0.0
    values: Optional[np.ndarray] = None
    grid: str = "range"

    def payload(self) -> bytes:
        if self.kind == "float32":
            return np.asarray(self.values, "<f4").tobytes()
        bits = np.asarray(self.bits, np.int64)
        base, width = int(bits.min()), ops.bits_field_width(bits)
        header = struct.pack("<ffB", self.w_min, self.w_max, base | (width << 4))
        field_bytes = pack_varwidth(bits - base, np.full(bits.size, width))
        codes = pack_varwidth(self.codes, np.repeat(bits, self.group_size))
        return header + field_bytes + codes

    @classmethod
    def from_payload(cls, layer: str, name: str, shape, kind: str, group_size: int, data: bytes,
                     grid: str = "range") -> "PackedTensor":
        shape = tuple(int(s) for s in shape)
        n = int(np.prod(shape))
        if kind == "float32":
            return cls(layer, name, shape, kind, values=np.frombuffer(data, "<f4").reshape(shape).copy())
        n_groups = n // group_size
        w_min, w_max, packed = struct.unpack("<ffB", data[:9])
        base, width = packed & 0xF, packed >> 4
        field_len = (n_groups * width + 7) // 8
        bits = unpack_varwidth(data[9:9 + field_len], np.full(n_groups, width)) + base
        codes = unpack_varwidth(data[9 + field_len:], np.repeat(bits, group_size)).reshape(n_groups, group_size)
        return cls(layer, name, shape, kind, group_size, codes, bits, np.float32(w_min), np.float32(w_max), grid=grid)

    def dequantize(self) -> np.ndarray:
        """The float weights: the DiffQ model's inference weights (same formula, :func:`ops.dequantize`)."""
        if self.kind == "float32":
            return self.values
        return ops.dequantize(self.codes, self.w_min, self.w_max, self.bits, self.shape, self.grid).numpy()


@dataclass
class PackedModel:
    """Every weight of a DiffQ model in packed form; :meth:`to_bytes` / :meth:`from_bytes` round-trip exactly."""

    tensors: List[PackedTensor] = field(default_factory=list)

    @property
    def payload_bytes(self) -> int:
        """Bytes of all payloads (equals ``true_size`` of the model); the file adds the index."""
        return sum(len(t.payload()) for t in self.tensors)

    def weights(self) -> Dict[str, np.ndarray]:
        """"layer/weight" -> dequantized float32 array."""
        return {f"{t.layer}/{t.name}": t.dequantize() for t in self.tensors}

    def to_bytes(self) -> bytes:
        index, payloads, offset = [], [], 0
        for t in self.tensors:
            data = t.payload()
            index.append({"layer": t.layer, "name": t.name, "shape": list(t.shape), "kind": t.kind,
                          "group_size": t.group_size, "grid": t.grid, "offset": offset, "length": len(data)})
            payloads.append(data)
            offset += len(data)
        header = json.dumps(index, separators=(",", ":")).encode()
        return MAGIC + struct.pack("<I", len(header)) + header + b"".join(payloads)

    @classmethod
    def from_bytes(cls, data: bytes) -> "PackedModel":
        if not isinstance(data, (bytes, bytearray)) or data[:len(MAGIC)] != MAGIC:
            raise ValueError(f"`data` is not a packed DiffQ model (it must start with {MAGIC!r}). "
                             f"Received: {bytes(data[:16])!r}...")
        (length,) = struct.unpack("<I", data[len(MAGIC):len(MAGIC) + 4])
        start = len(MAGIC) + 4
        index = json.loads(data[start:start + length].decode())
        body = data[start + length:]
        return cls([PackedTensor.from_payload(e["layer"], e["name"], e["shape"], e["kind"], e["group_size"],
                                              body[e["offset"]:e["offset"] + e["length"]], e.get("grid", "range"))
                    for e in index])


def _float_tensor(layer_name: str, name: str, variable) -> PackedTensor:
    values = np.asarray(variable.numpy(), np.float32)
    return PackedTensor(layer_name, name, values.shape, "float32", values=values)


def export_packed(model: keras.Model, path: Union[str, Path, None] = None) -> PackedModel:
    """Packs every weight of a DiffQ model (codes at rounded bits; other weights float32).

    Args:
        model: a model from :func:`tfq_ext.diffq.apply_diffq` (uniform-baseline layers are not packable here).
        path: if given, the file is written there (``PackedModel.to_bytes()``).
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a tf_keras Model. Received: model={model!r}")
    if not any(isinstance(w, DiffQWrapper) for w in diffq_layers(model)):
        raise ValueError(f"`model` has no DiffQ layer to pack. Received: model={model.name!r}")
    packed = PackedModel()
    for layer in _walk(model):
        if isinstance(layer, UniformQuantWrapper):
            raise ValueError(f"layer {layer.name!r} is a UniformQuantWrapper; export_packed packs DiffQ layers. "
                             f"Received: model={model.name!r}")
        if isinstance(layer, DiffQWrapper):
            targets = {id(layer._variable(p)): p for p in layer.targets}
            for name, variable in weight_paths(layer.layer).items():
                if id(variable) not in targets:
                    packed.tensors.append(_float_tensor(layer.layer.name, name, variable))
                    continue
                codes, w_min, w_max, bits = ops.quantize(variable, layer.bits(name), layer.group_size, layer.grid)
                packed.tensors.append(PackedTensor(
                    layer.layer.name, name, tuple(int(s) for s in variable.shape), "diffq", layer.group_size,
                    codes.numpy(), bits.numpy(), np.float32(w_min.numpy()), np.float32(w_max.numpy()),
                    grid=layer.grid))
            continue
        for variable in layer.weights:
            if variable.dtype.is_integer and "step" in variable.name:
                continue  # counters, not parameters (as tfq_ext.model_size)
            packed.tensors.append(_float_tensor(layer.name, variable.name.split("/")[-1].split(":")[0], variable))
    if path is not None:
        Path(path).write_bytes(packed.to_bytes())
    return packed
