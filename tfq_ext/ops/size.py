"""Size accounting shared by every method: bits per weight and bytes of indices, codebooks and the rest.

One place computes what a compressed model costs, so that tables, benchmarks and the exported files agree.
Conventions: indices are bit-packed with ceil(log2(K)) bits; codebooks are float16 (2 bytes per value) or int8
(1 byte per value plus a 4-byte float32 scale); unquantized parameters count at their storage width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List

__all__ = ["index_bits", "codebook_bytes", "packed_bytes", "TensorSize", "SizeReport"]


def index_bits(k: int) -> int:
    """Bits of one index into a codebook of ``k`` entries (0 for a single entry)."""
    if k < 1:
        raise ValueError(f"`k` must be >= 1. Received: k={k}")
    return int(math.ceil(math.log2(k))) if k > 1 else 0


def packed_bytes(count: int, bits: int) -> int:
    """Bytes of ``count`` values bit-packed at ``bits`` bits each."""
    return (int(count) * int(bits) + 7) // 8


def codebook_bytes(k: int, d: int, codebook_bits: int = 16) -> int:
    """Bytes of a (k, d) codebook: float16 (16) or int8 with one float32 scale (8)."""
    if codebook_bits == 16:
        return 2 * k * d
    if codebook_bits == 8:
        return k * d + 4
    if codebook_bits == 32:
        return 4 * k * d
    raise ValueError(f"`codebook_bits` must be 8, 16 or 32. Received: codebook_bits={codebook_bits}")


@dataclass
class TensorSize:
    """Storage of one weight tensor.

    Attributes:
        layer, name: where the tensor lives.
        params: number of weights.
        index_bytes, codebook_bytes, other_bytes: compressed parts and anything stored plainly.
        method: "pq", "kq", "float32", "int8", ...
    """

    layer: str
    name: str
    params: int
    method: str
    index_bytes: int = 0
    codebook_bytes: int = 0
    other_bytes: int = 0

    @property
    def bytes(self) -> int:
        return self.index_bytes + self.codebook_bytes + self.other_bytes

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.bytes / max(self.params, 1)


@dataclass
class SizeReport:
    tensors: List[TensorSize] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(t.bytes for t in self.tensors)

    @property
    def params(self) -> int:
        return sum(t.params for t in self.tensors)

    @property
    def float32_bytes(self) -> int:
        return 4 * self.params

    @property
    def compression(self) -> float:
        """Compression ratio against storing every parameter as float32."""
        return self.float32_bytes / max(self.bytes, 1)

    def to_dict(self) -> dict:
        return {"bytes": self.bytes, "params": self.params, "float32_bytes": self.float32_bytes,
                "compression": self.compression,
                "tensors": [dict(t.__dict__, bytes=t.bytes, bits_per_weight=t.bits_per_weight)
                            for t in self.tensors]}

    def __str__(self) -> str:
        rows = [("layer", "weight", "method", "params", "bits/w", "index B", "codebook B", "other B", "total B")]
        for t in self.tensors:
            rows.append((t.layer, t.name, t.method, str(t.params), f"{t.bits_per_weight:.2f}", str(t.index_bytes),
                         str(t.codebook_bytes), str(t.other_bytes), str(t.bytes)))
        rows.append(("total", "", "", str(self.params), f"{8.0 * self.bytes / max(self.params, 1):.2f}",
                     str(sum(t.index_bytes for t in self.tensors)), str(sum(t.codebook_bytes for t in self.tensors)),
                     str(sum(t.other_bytes for t in self.tensors)), str(self.bytes)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        lines.append(f"compression vs float32: {self.compression:.1f}x ({self.float32_bytes} -> {self.bytes} bytes)")
        return "\n".join(lines)
