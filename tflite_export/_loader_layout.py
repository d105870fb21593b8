"""The "loader" layout of compressed files (see ``tflite_export/kernels/FORMAT.md``): write, validate, decode.

The file is the dense flatbuffer with each compressed weight's buffer emptied and pointed, through TFLite's
external-buffer fields ``offset``/``size``, past the end of the file; the packed payloads are buffers that no
tensor uses, listed by a descriptor in the ``tfq_codebook`` metadata entry. Loading appends the decoded
weights at fixed, 16-byte aligned places, so the flatbuffer itself is never rewritten and every correct reader
(this module, ``tfq_loader.c``) gives the same bytes.

Two encodings: kind 1, a block codebook (one packed index per block of ``d`` values); kind 2, variable-width
scalar codes (each group of ``d`` values has its own code width ``w`` and indexes a table shared by the groups of
that width), which is what DiffQ's learned bits per group look like once exported to int8.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from typing import Any

import numpy as np

from tflite_export import flatbuffer as fb

__all__ = ["METADATA_NAME", "Entry", "Plan", "default_max_bytes", "encode_varwidth", "write", "has_entry",
           "entries", "decode_entry", "read", "is_loaded"]

METADATA_NAME = b"tfq_codebook"
MAGIC = b"TFQCBLD1"
VERSION = 1
HEADER = struct.Struct("<8sIIQ")
ENTRY = struct.Struct("<IIIIQQQIIQQ")
KIND_CODEBOOK, KIND_VARWIDTH = 1, 2
MAX_ELEMENTS = 2**31 - 1
_PLACEHOLDER = 1 << 62  # non-zero, so the first serialization already stores the fields


def default_max_bytes(length: int) -> int:
    """The default bound on a loaded model: ``max(16 MiB, 256 * len(file))``."""
    return max(1 << 24, 256 * int(length))


def _align16(x: int) -> int:
    return (x + 15) // 16 * 16


@dataclasses.dataclass(frozen=True)
class Plan:
    """One weight to store: its buffer and an encoding (``kind`` 1: ``bits``/``K``/payload indices and a
    ``(K, d)`` codebook; kind 2: ``bits`` = width-field bits, ``K`` = base width)."""

    buffer: int
    kind: int
    view: tuple[int, int, int]
    bits: int
    K: int
    payload: bytes
    table: bytes


@dataclasses.dataclass(frozen=True)
class Entry:
    """A validated descriptor entry."""

    kind: int
    target: int
    payload: int
    table: int
    view: tuple[int, int, int]
    bits: int
    K: int
    offset: int
    size: int


def _pack_stream(values: np.ndarray, widths: np.ndarray) -> bytes:
    """LSB-first bit stream of ``values[i]`` in ``widths[i]`` bits (zero-padded to a byte)."""
    values, widths = np.asarray(values, np.int64).ravel(), np.asarray(widths, np.int64).ravel()
    if not values.size or not widths.max(initial=0):
        return b""
    shifts = np.arange(int(widths.max()))
    bits = ((values[:, None] >> shifts) & 1)[shifts[None, :] < widths[:, None]].astype(np.uint8)
    return np.packbits(bits, bitorder="little").tobytes()


def _unpack_stream(data: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_pack_stream`; ``data`` must hold at least ``widths.sum()`` bits."""
    widths = np.asarray(widths, np.int64)
    if not widths.size or not widths.max(initial=0):
        return np.zeros(widths.size, np.int64)
    stream = np.unpackbits(data, bitorder="little")[:int(widths.sum())]
    shifts = np.arange(int(widths.max()))
    bits = np.zeros((widths.size, shifts.size), np.int64)
    bits[shifts[None, :] < widths[:, None]] = stream
    return (bits << shifts).sum(axis=1)


def _table_values(table: np.ndarray) -> np.ndarray:
    return np.array([v - 128 for v in range(256) if int(table[v >> 6]) >> (v & 63) & 1], np.int64)


def _assign_widths(unique, sizes, multiplicity, max_width: int, strategy: str):
    """Width per distinct value set and the table per width, or None if some set gets none.

    ``"sets"``: for each width, narrowest first, the sets that need at most that many bits join the table
    largest first (then most common) while the union fits. ``"values"``: the table is the ``2**w`` values that
    the most remaining groups contain, and the sets inside it take that width.
    """
    needed = np.maximum(1, np.ceil(np.log2(np.maximum(sizes, 1))).astype(np.int64))
    width = np.zeros(unique.shape[0], np.int64)
    tables: dict[int, np.ndarray] = {}
    bit_of = np.uint64(1) << (np.arange(256, dtype=np.uint64) & np.uint64(63))
    for w in range(1, max_width + 1):
        pending = np.flatnonzero((width == 0) & (needed <= w))
        table = np.zeros(4, np.uint64)
        if strategy == "values" and pending.size:
            member = (unique[pending][:, np.arange(256) >> 6] & bit_of) != 0  # (sets, 256)
            counts = (member * multiplicity[pending][:, None]).sum(axis=0)
            for v in np.argsort(-counts, kind="stable")[:1 << w]:
                if counts[v]:
                    table[v >> 6] |= bit_of[v]
            inside = np.bitwise_count(unique[pending] & ~table).sum(axis=1) == 0
            width[pending[inside]] = w
        else:
            while pending.size:
                union = np.bitwise_count(unique[pending] | table).sum(axis=1)
                inside = union == int(np.bitwise_count(table).sum())
                width[pending[inside]] = w
                pending = pending[~inside & (union <= 1 << w)]
                if pending.size:  # the first remaining set (in priority order) joins the table
                    table |= unique[pending[0]]
                    width[pending[0]] = w
                    pending = pending[1:]
        tables[w] = _table_values(table)
    return None if np.any(width == 0) else (width, tables)


def encode_varwidth(blocks: np.ndarray, max_width: int = 8) -> tuple[int, int, bytes, bytes, int] | None:
    """Kind-2 encoding of a ``(G, d)`` int8 block matrix: ``(f, b0, payload, table, bytes)``, or None when some
    group needs more than ``max_width`` bits.

    Widths are chosen greedily, narrowest first, by two strategies (see :func:`_assign_widths`); the smaller
    encoding wins. Width 8 holds all 256 values, so with ``max_width=8`` every group gets a width.
    """
    blocks = np.asarray(blocks, np.int8)
    g, d = blocks.shape
    values = blocks.astype(np.int64) + 128
    masks = np.zeros((g, 4), np.uint64)
    for word in range(4):
        inside = (values >> 6) == word
        bit = np.where(inside, np.uint64(1) << (values & 63).astype(np.uint64), np.uint64(0))
        masks[:, word] = np.bitwise_or.reduce(bit, axis=1)
    unique, inverse, multiplicity = np.unique(masks, axis=0, return_inverse=True, return_counts=True)
    inverse = np.asarray(inverse).ravel()
    sizes = np.bitwise_count(unique).sum(axis=1).astype(np.int64)
    order = np.lexsort((-multiplicity, -sizes))  # most distinct values first, then most common
    unique, sizes, multiplicity = unique[order], sizes[order], multiplicity[order]
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    inverse = rank[inverse]
    best = None
    for strategy in ("sets", "values"):
        assigned = _assign_widths(unique, sizes, multiplicity, max_width, strategy)
        if assigned is None:
            continue
        width, tables = assigned
        group_width = width[inverse]
        b0, top = int(group_width.min()), int(group_width.max())
        f = math.ceil(math.log2(top - b0 + 1)) if top > b0 else 0
        codes = np.empty((g, d), np.int64)
        for w in range(1, max_width + 1):
            rows = group_width == w
            if rows.any():
                codes[rows] = np.searchsorted(tables[w], blocks[rows].astype(np.int64))
        payload = (_pack_stream(group_width - b0, np.full(g, f)) +
                   _pack_stream(codes.ravel(), np.repeat(group_width, d)))
        counts = [tables[w].size if w in tables and (group_width == w).any() else 0 for w in range(1, 9)]
        table_bytes = struct.pack("<8H", *counts) + b"".join(
            tables[w].astype(np.int8).tobytes() for w in range(1, 9) if counts[w - 1])
        cost = len(payload) + len(table_bytes)
        if best is None or cost < best[-1]:
            best = (f, b0, payload, table_bytes, cost)
    return best


def _decode_varwidth(where: str, view, f: int, b0: int, payload: np.ndarray, table: np.ndarray) -> np.ndarray:
    a, d, b = view
    groups = a * b
    if table.size < 16:
        raise ValueError(f"{where}: the code tables hold {table.size} bytes; expected 16 header bytes and "
                         f"the tables")
    counts = np.frombuffer(table[:16].tobytes(), "<u2").astype(np.int64)
    limits = 1 << np.arange(1, 9)
    if np.any(counts > limits) or table.size != 16 + counts.sum():
        raise ValueError(f"{where}: code tables hold {table.size} bytes with counts {counts.tolist()}; expected "
                         f"K_w <= 2**w and 16 + sum(K_w) = {16 + int(counts.sum())} bytes")
    field_bytes = (groups * f + 7) // 8
    if payload.size < field_bytes:
        raise ValueError(f"{where}: the payload has {payload.size} bytes; the width stream alone needs "
                         f"{field_bytes}")
    widths = b0 + _unpack_stream(payload[:field_bytes], np.full(groups, f))
    if widths.max() > 8:
        raise ValueError(f"{where}: a group width is {int(widths.max())}; widths must lie in 1..8")
    expected = field_bytes + (d * int(widths.sum()) + 7) // 8
    if payload.size != expected:
        raise ValueError(f"{where}: the payload has {payload.size} bytes; expected {expected} "
                         f"(ceil(G*f/8) + ceil(d*sum(widths)/8))")
    codes = _unpack_stream(payload[field_bytes:], np.repeat(widths, d)).reshape(groups, d)
    starts = np.concatenate([[0], np.cumsum(counts)])[:-1] + 16
    bad = codes >= counts[widths - 1][:, None]
    if bad.any():
        g = int(np.flatnonzero(bad.any(axis=1))[0])
        raise ValueError(f"{where}: group {g} (width {int(widths[g])}) has a code >= K_{int(widths[g])}="
                         f"{int(counts[widths[g] - 1])}; the file is corrupt")
    values = table.view(np.int8)[starts[widths - 1][:, None] + codes]
    return values.reshape(a, b, d).transpose(0, 2, 1).ravel()


def _descriptor(entries: list[tuple], dense_size: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, len(entries), dense_size) + b"".join(ENTRY.pack(*e) for e in entries)


def write(model: Any, plans: list[Plan]) -> bytes:
    """Serializes ``model`` with ``plans`` applied (the dense buffers emptied and placed past the file end)."""
    s = fb.schema()
    rows = []
    for plan in plans:
        payload, table = fb.add_buffer(model, plan.payload), fb.add_buffer(model, plan.table)
        buffer = model.buffers[plan.buffer]
        buffer.data, buffer.offset, buffer.size = None, _PLACEHOLDER, int(np.prod(plan.view))
        rows.append([plan.kind, plan.buffer, payload, table, *plan.view, plan.bits, plan.K, _PLACEHOLDER,
                     buffer.size])
    descriptor = fb.add_buffer(model, _descriptor([tuple(r) for r in rows], _PLACEHOLDER))
    entry = s.MetadataT()
    entry.name, entry.buffer = METADATA_NAME.decode(), descriptor
    model.metadata = list(model.metadata or []) + [entry]
    length = len(fb.write_model(model))
    offset = _align16(length)
    for row in rows:
        row[9] = offset
        model.buffers[row[1]].offset = offset
        offset = _align16(offset + row[10])
    dense_size = rows[-1][9] + rows[-1][10]
    fb.set_buffer_data(model, descriptor, _descriptor([tuple(r) for r in rows], dense_size))
    result = fb.write_model(model)
    if len(result) != length:  # the fields are fixed-width, so this cannot move; checked, not assumed
        raise RuntimeError(f"the compressed flatbuffer changed size when its offsets were filled in "
                           f"({length} -> {len(result)} bytes)")
    return result


def _entry_name(model: Any, index: int) -> str:
    entry = model.metadata[index]
    name = entry.name
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name or "")


def has_entry(model: Any) -> bool:
    """Whether the model carries a ``tfq_codebook`` metadata entry."""
    return any(_entry_name(model, i) == METADATA_NAME.decode() for i in range(len(model.metadata or [])))


def is_loaded(model: Any, length: int) -> bool:
    """Whether a file with a descriptor is already loaded: its length is the declared ``dense_size`` (a
    compressed file is always shorter, since its first weight starts at or after its end)."""
    found = [i for i in range(len(model.metadata or [])) if _entry_name(model, i) == METADATA_NAME.decode()]
    if len(found) != 1 or not 0 <= int(model.metadata[found[0]].buffer) < len(model.buffers or []):
        return False
    raw = _buffer_bytes(model, int(model.metadata[found[0]].buffer)).tobytes()
    return len(raw) >= HEADER.size and HEADER.unpack_from(raw)[3] == length


def _buffer_bytes(model: Any, index: int) -> np.ndarray:
    data = fb.buffer_data(model, index)
    return np.zeros(0, np.uint8) if data is None else data


def _tensor_names(model: Any) -> dict[int, str]:
    names = {}
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors or []:
            name = tensor.name
            names.setdefault(int(tensor.buffer), name.decode("utf-8", "replace") if isinstance(name, bytes)
                             else str(name or "<unnamed>"))
    return names


def entries(model: Any, length: int) -> tuple[list[Entry], int]:
    """The validated descriptor entries of a loader-layout model (file of ``length`` bytes) and ``dense_size``."""
    found = [i for i in range(len(model.metadata or [])) if _entry_name(model, i) == METADATA_NAME.decode()]
    if len(found) != 1:
        raise ValueError(f"expected one `tfq_codebook` metadata entry. Received: {len(found)}")
    buffers = len(model.buffers or [])
    index = int(model.metadata[found[0]].buffer)
    if not 0 <= index < buffers:
        raise ValueError(f"the `tfq_codebook` metadata names buffer {index}; the model has {buffers} buffers")
    raw = _buffer_bytes(model, index).tobytes()
    if len(raw) < HEADER.size:
        raise ValueError(f"the codebook descriptor (buffer {index}) has {len(raw)} bytes; expected at least "
                         f"{HEADER.size}")
    magic, version, count, dense_size = HEADER.unpack_from(raw)
    if magic != MAGIC or version != VERSION or count < 1 or len(raw) != HEADER.size + ENTRY.size * count:
        raise ValueError(f"the codebook descriptor (buffer {index}) is not a version-{VERSION} descriptor of "
                         f"{HEADER.size} + {ENTRY.size}*N bytes with N >= 1. Received: magic={magic!r}, "
                         f"version={version}, N={count}, {len(raw)} bytes")
    names = _tensor_names(model)
    result, targets, offset = [], set(), _align16(length)
    for i in range(count):
        kind, target, payload, table, a, d, b, bits, k, at, size = ENTRY.unpack_from(raw, HEADER.size + ENTRY.size * i)
        where = f"codebook entry {i} (buffer {target}"
        where += f", weight {names[target]!r})" if target in names else ")"
        if kind not in (KIND_CODEBOOK, KIND_VARWIDTH):
            raise ValueError(f"{where}: kind {kind} is unknown; expected 1 (block codebook) or 2 (variable width)")
        bad = [n for n, v in (("target", target), ("payload", payload), ("table", table)) if not 0 <= v < buffers]
        if bad:
            raise ValueError(f"{where}: buffer indices {bad} are out of range for {buffers} buffers. Received: "
                             f"target={target}, payload={payload}, table={table}")
        if target in (payload, table) or target in targets:
            raise ValueError(f"{where}: the target must be distinct from the payload and table buffers, and no "
                             f"buffer is the target of two entries")
        buffer = model.buffers[target]
        if fb.buffer_data(model, target) is not None or int(buffer.offset) != at or int(buffer.size) != size:
            raise ValueError(f"{where}: the target buffer must hold no data and its offset/size fields must equal "
                             f"the entry's ({at}, {size}). Received: offset={int(buffer.offset)}, "
                             f"size={int(buffer.size)}")
        if at != offset:
            raise ValueError(f"{where}: the weight is placed at byte {at}; the placement rule puts it at {offset}")
        if min(a, d, b) < 1 or a * d * b != size or size > MAX_ELEMENTS:
            raise ValueError(f"{where}: expected A, d, B >= 1 with A*d*B == size <= 2**31 - 1. Received: A={a} "
                             f"d={d} B={b} size={size}")
        if kind == KIND_CODEBOOK and (not 1 <= bits <= 8 or not 1 <= k <= 1 << bits):
            raise ValueError(f"{where}: expected 1 <= bits <= 8 and 1 <= K <= 2**bits. Received: bits={bits} K={k}")
        if kind == KIND_VARWIDTH and (bits > 3 or not 1 <= k <= 8):
            raise ValueError(f"{where}: width-field bits must be 0..3 and the base width 1..8. Received: "
                             f"f={bits}, b0={k}")
        targets.add(target)
        result.append(Entry(kind, target, payload, table, (a, d, b), bits, k, at, size))
        offset = _align16(at + size)
    used = {e.payload for e in result} | {e.table for e in result}
    if used & targets:
        raise ValueError(f"buffers {sorted(used & targets)} are both a weight target and a payload or table")
    stray = [i for i, buf in enumerate(model.buffers) if int(buf.offset or 0) > 1 and i not in targets]
    if stray:
        raise ValueError(f"buffers {stray[:10]} point outside the flatbuffer (offset > 1) but no codebook entry "
                         f"fills them")
    end = result[-1].offset + result[-1].size
    if dense_size != end:
        raise ValueError(f"the descriptor declares a loaded size of {dense_size} bytes; the entries end at {end}")
    return result, dense_size


def decode_entry(model: Any, i: int, entry: Entry) -> np.ndarray:
    """The dense int8 values of one validated entry."""
    where = f"codebook entry {i} (buffer {entry.target})"
    payload, table = _buffer_bytes(model, entry.payload), _buffer_bytes(model, entry.table)
    a, d, b = entry.view
    if entry.kind == KIND_VARWIDTH:
        return _decode_varwidth(where, entry.view, entry.bits, entry.K, payload, table)
    expected = (a * b * entry.bits + 7) // 8
    if payload.size != expected or table.size != entry.K * d:
        raise ValueError(f"{where}: packed indices have {payload.size} bytes and the codebook {table.size}; "
                         f"expected ceil(A*B*bits/8)={expected} and K*d={entry.K * d}")
    indices = _unpack_stream(payload, np.full(a * b, entry.bits))
    if indices.size and indices.max() >= entry.K:
        first = int(np.flatnonzero(indices >= entry.K)[0])
        raise ValueError(f"{where}: index {int(indices[first])} of block {first} is >= K={entry.K}; the file is "
                         f"corrupt")
    return table.view(np.int8).reshape(entry.K, d)[indices].reshape(a, b, d).transpose(0, 2, 1).ravel()


def read(content: bytes, model: Any, max_bytes: int) -> bytes:
    """The loaded (dense) model of a loader-layout file: ``content`` followed by the decoded weights."""
    found, dense_size = entries(model, len(content))
    if dense_size > max_bytes:
        raise ValueError(f"the loaded model would have {dense_size} bytes, more than max_bytes={max_bytes} "
                         f"(the file has {len(content)}); raise `max_bytes` if the file is trusted")
    out = bytearray(dense_size)
    out[:len(content)] = content
    for i, entry in enumerate(found):
        out[entry.offset:entry.offset + entry.size] = decode_entry(model, i, entry).tobytes()
    return bytes(out)
