"""The C loader (tfq_loader.c) through ``kernels.decompress_native``: loader-layout files built here by hand
from FORMAT.md (independently of ``tflite_export.codebook``), the dense result in ai-edge-litert, every check
of FORMAT.md's list, and random mutations (in process, and under ASan/UBSan with ``make sanitize``)."""

import ctypes
import inspect
import os
import struct
import subprocess

import numpy as np
import pytest

from tflite_export import flatbuffer as fb
from tflite_export import kernels, run_raw, verify
from tfq_ext._keras import keras

MAGIC = b"TFQCBLD1"
HEADER = struct.Struct("<8sIIQ")
ENTRY = struct.Struct("<IIIIQQQIIQQ")
FIELDS = ("kind", "target", "payload", "table", "A", "d", "B", "bits", "K", "offset", "size")
PLACEHOLDER = 1 << 40  # non-default offset while the length of S is measured (the field must be present)
assert HEADER.size == 24 and ENTRY.size == 64


def align16(x):
    return (x + 15) // 16 * 16


def pack_bits(values, widths):
    """LSB-first bit stream of `values`, value i taking widths[i] bits, padded to a whole byte."""
    values = np.asarray(values, np.int64).ravel()
    widths = np.broadcast_to(np.asarray(widths, np.int64), values.shape)
    starts = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.int64)
    bits = np.zeros(int(widths.sum()), np.uint8)
    for j in range(8):
        mask = widths > j
        bits[starts[mask] + j] = (values[mask] >> j) & 1
    return np.packbits(bits, bitorder="little").tobytes()


def groups(x, layout):
    a, d, b = layout
    return x.reshape(a, d, b).transpose(0, 2, 1).reshape(a * b, d)


def encode_codebook(x, layout):
    """Kind 1: (payload, table, bits, K) with one codebook row per distinct block."""
    rows, inverse = np.unique(groups(x, layout), axis=0, return_inverse=True)
    k = len(rows)
    assert k <= 256, "at most 256 distinct blocks for a kind-1 test layout"
    bits = max(1, (k - 1).bit_length())
    return pack_bits(np.ravel(inverse), bits), rows.astype(np.int8).tobytes(), bits, k


def encode_scalar(x, layout, order=None, min_width=1, uniform=False):
    """Kind 2: (payload, table, f, b0). T_w is the first K_w values of `order` (default: by frequency); a
    group's width is the fewest bits its largest rank needs (at least `min_width`)."""
    if order is None:
        values, counts = np.unique(x, return_counts=True)
        order = values[np.argsort(-counts, kind="stable")]
    order = np.asarray(order, np.int8)
    rank = np.full(256, -1, np.int64)
    rank[order.view(np.uint8)] = np.arange(len(order))
    ranks = rank[groups(x, layout).view(np.uint8)]
    assert (ranks >= 0).all()
    widths = np.maximum(min_width, [max(1, int(r).bit_length()) for r in ranks.max(axis=1)])
    if uniform:
        widths[:] = widths.max()
    b0, span = int(widths.min()), int(widths.max() - widths.min())
    f = span.bit_length()
    payload = (pack_bits(widths - b0, f) if f else b"") + pack_bits(ranks, np.repeat(widths, layout[1]))
    k = [min(2 ** w, len(order)) for w in range(1, 9)]
    table = struct.pack("<8H", *k) + b"".join(order[:kw].tobytes() for kw in k)
    return payload, table, f, b0


def descriptor(header, entries):
    """The descriptor bytes; header["resize"] (tests only) drops or appends bytes."""
    data = (HEADER.pack(header["magic"], header["version"], header["count"], header["dense_size"])
            + b"".join(ENTRY.pack(*(e[name] for name in FIELDS)) for e in entries))
    resize = header.get("resize", 0)
    return data[:len(data) + resize] if resize < 0 else data + bytes(resize)


def _set_data(model, index, data):
    model.buffers[index].data = np.frombuffer(bytes(data), np.uint8).copy()


def build(dense, plan, *, before=None, after=None):
    """A loader-layout file S from a dense int8 file, and the dense model D that FORMAT.md says it loads to.

    plan: (buffer index, kind, (A, d, B), encoder keyword arguments) per entry. `before(model, entries,
    header)` edits before the placement is computed (S stays self-consistent); `after(...)` edits the final
    model/entries/header (to break one rule).
    """
    model = fb.read_model(dense)
    entries, weights = [], []
    for target, kind, layout, *options in plan:
        x = fb.buffer_data(model, target).view(np.int8).copy()
        encoder = encode_codebook if kind == 1 else encode_scalar
        payload, table, bits, k = encoder(x, layout, **(options[0] if options else {}))
        entry = dict(kind=kind, target=target, payload=fb.add_buffer(model, payload),
                     table=fb.add_buffer(model, table), A=layout[0], d=layout[1], B=layout[2], bits=bits, K=k,
                     offset=PLACEHOLDER, size=x.size)
        buffer = model.buffers[target]
        buffer.data, buffer.offset, buffer.size = None, PLACEHOLDER, x.size
        entries.append(entry)
        weights.append(x.tobytes())
    header = dict(magic=MAGIC, version=1, count=len(entries), dense_size=PLACEHOLDER)
    index = fb.add_buffer(model, descriptor(header, entries))
    meta = fb.schema().MetadataT()
    meta.name, meta.buffer = b"tfq_codebook", index
    model.metadata = list(model.metadata or []) + [meta]
    if before is not None:
        before(model, entries, header)
    length = len(fb.write_model(model))
    end = length
    for e in entries:
        e["offset"] = align16(end)
        end = e["offset"] + e["size"]
        if e["target"] < len(model.buffers):
            model.buffers[e["target"]].offset = e["offset"]
    header["dense_size"] = end
    _set_data(model, index, descriptor(header, entries))
    content = fb.write_model(model)
    assert len(content) == length, "the placeholders must give S its final length"
    expected = bytearray(content)
    for e, w in zip(entries, weights):
        expected += bytes(e["offset"] - len(expected)) + w
    if after is not None:
        after(model, entries, header)
        _set_data(model, index, descriptor(header, entries))
        content = fb.write_model(model)
    return content, bytes(expected)


# --- the dense model ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dense(digits):
    """conv 8x3x3 -> pool -> dense 128x32 -> dense 32x10, int8 (random weights, calibrated)."""
    from tflite_export import convert

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(10),
    ], name="loader_cnn")
    return convert(model, digits.x_train[:64])


@pytest.fixture(scope="module")
def weights(dense):
    """Buffer index of each weight: conv (8, 3, 3, 1), fc1 (32, 128), fc2 (10, 32)."""
    model = fb.read_model(dense)
    subgraph = model.subgraphs[0]
    found = [subgraph.tensors[op.inputs[1]].buffer for op in subgraph.operators
             if fb.op_name(model, op) in ("CONV_2D", "FULLY_CONNECTED")]
    sizes = [fb.buffer_data(model, b).size for b in found]
    assert sizes == [72, 4096, 320]
    return dict(zip(("conv", "fc1", "fc2"), found))


@pytest.fixture(scope="module")
def probe(digits):
    return digits.x_test[:16]


def two_entries(weights):
    return [(weights["conv"], 1, (8, 9, 1)), (weights["fc2"], 2, (10, 4, 8))]


@pytest.fixture(scope="module")
def loader_file(dense, weights):
    return build(dense, two_entries(weights))


PLANS = {
    # kind 1: 3-bit indices straddling bytes, K < 2**bits; B > 1 with 7-bit indices; 8-bit indices
    "codebooks": lambda w: [(w["conv"], 1, (8, 9, 1)), (w["fc2"], 1, (5, 4, 16)), (w["fc1"], 1, (32, 16, 8))],
    # kind 2 over every weight, B > 1, frequency-ordered tables with variable widths
    "scalar": lambda w: [(w["fc1"], 2, (32, 8, 16)), (w["conv"], 2, (8, 9, 1)), (w["fc2"], 2, (10, 32, 1))],
    # both kinds; f = 0 (one width), and entries out of buffer order
    "mixed": lambda w: [(w["fc2"], 2, (10, 4, 8), {"uniform": True}), (w["conv"], 1, (1, 9, 8)),
                        (w["fc1"], 2, (128, 32, 1))],
}


@pytest.mark.parametrize("plan", list(PLANS))
def test_loader_file_decodes_to_the_format_dense_model(dense, weights, probe, plan):
    content, expected = build(dense, PLANS[plan](weights))
    before = bytes(content)
    out = kernels.decompress_native(content)
    assert out == expected
    assert content == before
    # The dense model runs in ai-edge-litert with the original's outputs, in one XNNPACK partition
    assert np.array_equal(run_raw(out, probe), run_raw(dense, probe))
    report = verify(out)
    assert report.delegate_partitions == 1 and report.num_delegated == report.num_nodes


def test_scalar_codes_of_every_width(dense, weights):
    """Groups of widths 1..8 (f = 3), codes read across byte and group boundaries."""
    rng = np.random.default_rng(1)
    order = rng.permutation(256).astype(np.uint8).view(np.int8)
    model = fb.read_model(dense)
    x = np.empty((80, 4), np.int8)  # (10, 4, 8) view: 80 groups of 4
    for g in range(80):
        w = 1 + g % 8
        ranks = rng.integers(0, 2 ** w, size=4)
        ranks[0] = 2 ** w - 1  # the group needs exactly w bits
        x[g] = order[ranks]
    weight = x.reshape(10, 8, 4).transpose(0, 2, 1).ravel()  # inverse of groups() for layout (10, 4, 8)
    assert np.array_equal(groups(weight, (10, 4, 8)), x)
    fb.set_buffer_data(model, weights["fc2"], weight.view(np.uint8))
    edited = fb.write_model(model)
    content, expected = build(edited, [(weights["fc2"], 2, (10, 4, 8), {"order": order})])
    entry = ENTRY.unpack_from(content, content.index(MAGIC) + 24)
    assert (entry[0], entry[7], entry[8]) == (2, 3, 1)  # kind 2, f = 3, b0 = 1
    assert kernels.decompress_native(content) == expected


def test_plain_file_is_returned_unchanged(dense):
    assert kernels.decompress_native(dense) == dense
    assert kernels.decompress_native(bytearray(dense)) == dense
    assert kernels.decompress_native(memoryview(dense)) == dense


def test_loaded_model_is_returned_unchanged(loader_file):
    """FORMAT.md: a file as long as its descriptor's dense_size is a loaded model already."""
    _, expected = loader_file
    assert kernels.decompress_native(expected) == expected
    assert kernels.decompress_native(expected, max_bytes=10) == expected


def test_input_objects_are_not_modified(loader_file):
    content, expected = loader_file
    mutable = bytearray(content)
    assert kernels.decompress_native(mutable) == expected
    assert mutable == content
    broken = bytearray(content)
    broken[content.index(MAGIC)] ^= 1
    snapshot = bytes(broken)
    with pytest.raises(ValueError):
        kernels.decompress_native(broken)
    assert broken == snapshot


def test_buffer_offset_1_is_not_external(dense, weights):
    """offset 1 is the schema's 'not stored outside' marker; only offset > 1 must be an entry target."""
    def mark(model, entries, header):
        model.buffers[1].offset = 1

    content, expected = build(dense, two_entries(weights), before=mark)
    assert kernels.decompress_native(content) == expected


# --- what a reader must check (FORMAT.md) ------------------------------------------------------------------


def _model_vector(content, field_id):
    """Position of the length word of a Model vector field, read with TensorFlow's generated reader."""
    root = fb.schema().Model.GetRootAs(content, 0)
    offset = root._tab.Offset(4 + 2 * field_id)
    assert offset
    return root._tab.Vector(offset) - 4


def _patch(content, position, data):
    return content[:position] + data + content[position + len(data):]


def _flip_root(content):
    return _patch(content, 0, struct.pack("<I", len(content) + 100))


def _entry(i, **fields):
    return lambda model, entries, header: entries[i].update(fields)


def _header(**fields):
    return lambda model, entries, header: header.update(fields)


def _target(i, **fields):
    def edit(model, entries, header):
        buffer = model.buffers[entries[i]["target"]]
        for name, value in fields.items():
            setattr(buffer, name, value)
    return edit


def _buffer_data(role, i, change):
    def edit(model, entries, header):
        index = entries[i][role]
        _set_data(model, index, change(bytes(model.buffers[index].data)))
    return edit


def _second_meta(model, entries, header):
    meta = fb.schema().MetadataT()
    meta.name, meta.buffer = b"tfq_codebook", model.metadata[-1].buffer
    model.metadata.append(meta)


def _kernel_code(model, entries, header):
    fb.add_operator_code(model, custom="TfqCodebookDecode")


def _meta_buffer(index):
    def edit(model, entries, header):
        model.metadata[-1].buffer = len(model.buffers) + 5 if index is None else index
    return edit


def _external_bias(model, entries, header):
    used = {e[role] for e in entries for role in ("target", "payload", "table")}
    other = next(i for i, b in enumerate(model.buffers)
                 if b.data is not None and len(b.data) and i not in used)
    model.buffers[other].offset, model.buffers[other].size = 4096, len(model.buffers[other].data)


def _empty_descriptor(model, entries, header):
    model.metadata[-1].buffer = 0  # buffer 0: the schema's empty sentinel


def _big_A(model, entries, header):
    entries[0].update(A=2 ** 31, d=1, B=1, size=2 ** 31)
    model.buffers[entries[0]["target"]].size = 2 ** 31


def _shift_placement(model, entries, header):
    for e in entries:
        e["offset"] += 16
        model.buffers[e["target"]].offset = e["offset"]
    header["dense_size"] += 16


def _index_7(model, entries, header):
    """conv entry: K = 8 rows, 3 bits -> lower K to 5 and drop 3 rows, keep an index >= 5."""
    index = entries[0]["table"]
    entries[0]["K"] = 5
    _set_data(model, index, bytes(model.buffers[index].data)[:5 * 9])


def _code_out_of_range(model, entries, header):
    """fc2 entry (kind 2): shrink K_w of the first group's width by one, dropping that table's last value."""
    e = entries[1]
    payload = bytes(model.buffers[e["payload"]].data)
    f, b0 = e["bits"], e["K"]
    w = b0 + (payload[0] & ((1 << f) - 1) if f else 0)
    table = bytearray(model.buffers[e["table"]].data)
    counts = list(struct.unpack_from("<8H", table))
    start = 16 + sum(counts[:w - 1])
    del table[start + counts[w - 1] - 1]
    counts[w - 1] -= 1
    struct.pack_into("<8H", table, 0, *counts)
    _set_data(model, e["table"], table)
    # every code of that group now must be < K_w - 1: make the first one K_w - 1
    width_bytes = (e["A"] * e["B"] * f + 7) // 8
    bits = np.unpackbits(np.frombuffer(payload, np.uint8), bitorder="little")
    code = counts[w - 1]
    bits[8 * width_bytes:8 * width_bytes + w] = [(code >> j) & 1 for j in range(w)]
    _set_data(model, e["payload"], np.packbits(bits, bitorder="little").tobytes())


def _width_9(model, entries, header):
    """fc2 entry (kind 2): b0 = 8 with a nonzero width field gives a width above 8."""
    e = entries[1]
    payload = bytearray(model.buffers[e["payload"]].data)
    if e["bits"] == 0:
        e["bits"] = 1
    payload[0] |= 1
    e["K"] = 8
    _set_data(model, e["payload"], payload)


def _counts(change):
    def edit(model, entries, header):
        index = entries[1]["table"]
        table = bytearray(model.buffers[index].data)
        counts = list(struct.unpack_from("<8H", table))
        change(counts)
        struct.pack_into("<8H", table, 0, *counts)
        _set_data(model, index, table)
    return edit


def before(edit):
    """An edit made before the placement is computed: for edits that change the length of S, which would
    otherwise break the placement rule first."""
    return ("before", edit)


# (edit, expected message). A callable edits build()'s final file (`after`), before(...) edits it before the
# placement; strings and ("vector", field id) patch bytes. The file is two_entries(): entry 0 = conv, kind 1
# (8, 9, 1), K = 8, 3 bits; entry 1 = fc2, kind 2 (10, 4, 8).
BAD = {
    # 1. a readable flatbuffer
    "truncated": ("truncate", r"corrupt flatbuffer|not a TFLite"),
    "no-identifier": ("identifier", r"not a TFLite flatbuffer"),
    "root-outside": ("root", r"corrupt flatbuffer: the root table"),
    "buffers-vector-outside": (("vector", 4), r"corrupt flatbuffer: Model.buffers lies outside"),
    "metadata-vector-outside": (("vector", 6), r"corrupt flatbuffer: Model.metadata lies outside"),
    "opcodes-vector-outside": (("vector", 1), r"corrupt flatbuffer: Model.operator_codes lies outside"),
    # 2. one entry; kernel layout refused
    "two-metadata-entries": (_second_meta, r"2 entries named tfq_codebook"),
    "kernel-layout": ("kernel", r"kernel-layout file .*TfqCodebookDecode.*tflite_export.decompress.*"
                                r"layout=\"loader\""),
    "both-layouts": (_kernel_code, r"both a tfq_codebook descriptor and a TfqCodebookDecode operator code "
                                   r"\(operator code \d+\); a compressed file uses one layout"),
    # 3. the descriptor
    "descriptor-missing": (_meta_buffer(None), r"metadata entry points at buffer \d+, which does not exist"),
    "descriptor-empty": (_empty_descriptor, r"descriptor \(buffer 0\) has 0 bytes"),
    "descriptor-short": (_header(resize=-1),
                         r"descriptor \(buffer \d+\) has 151 bytes; expected 24 \+ 64\*N = 152"),
    "descriptor-long": (_header(resize=64),
                        r"descriptor \(buffer \d+\) has 216 bytes; expected 24 \+ 64\*N = 152"),
    "descriptor-no-header": (_header(resize=-140),
                             r"descriptor \(buffer \d+\) has 12 bytes; expected a 24-byte header"),
    "descriptor-magic": (_header(magic=b"TFQCBLD2"), r"lacks the magic"),
    "descriptor-version": (_header(version=2), r"has version 2"),
    "descriptor-count-0": (_header(count=0), r"entry count N=0"),
    "descriptor-count-3": (_header(count=3), r"has 152 bytes; expected 24 \+ 64\*N = 216 for N=3"),
    # 4. per entry
    "kind-3": (_entry(1, kind=3), r"entry 1 \(kind 3, target buffer \d+\): unknown kind"),
    "target-missing": (_entry(0, target=10 ** 6), r"entry 0 .*target buffer 1000000 does not exist"),
    "payload-missing": (_entry(1, payload=10 ** 6), r"entry 1 .*payload buffer 1000000 does not exist"),
    "table-missing": (_entry(0, table=2 ** 32 - 1), r"entry 0 .*table buffer 4294967295 does not exist"),
    "target-has-data": (_target(0, data=np.ones(72, np.uint8)),
                        r"entry 0 .*has 72 bytes of data; expected none"),
    "target-offset": (_target(1, offset=10 ** 9), r"entry 1 .*has offset 1000000000 .*the entry says offset"),
    "target-size": (_target(0, size=71), r"entry 0 .*size 71; the entry says"),
    "placement": (_shift_placement, r"entry 0 .*breaks the placement rule; expected align16"),
    "A-zero": (_entry(0, A=0), r"entry 0 .*A, d, B must be >= 1; got A=0"),
    "d*A*B-not-size": (_entry(0, d=8), r"entry 0 .*A\*d\*B = 64 but size = 72"),
    "size-over-2^31-1": (_big_A, r"entry 0 .*A\*d\*B must be at most 2\^31-1"),
    "targets-not-distinct": (lambda m, e, h: e[1].update(target=e[0]["target"]),
                             r"entry 1 .*is the target of an earlier entry too"),
    "payload-is-a-target": (lambda m, e, h: e[1].update(payload=e[0]["target"]),
                            r"entry 1 .*payload buffer \d+ is the target of an entry"),
    "table-is-a-target": (lambda m, e, h: e[0].update(table=e[1]["target"]),
                          r"entry 0 .*table buffer \d+ is the target of an entry"),
    "bits-0": (_entry(0, bits=0), r"entry 0 .*bits=0; expected 1..8"),
    "bits-9": (_entry(0, bits=9), r"entry 0 .*bits=9; expected 1..8"),
    "K-0": (_entry(0, K=0), r"entry 0 .*K=0; expected 1..2\^bits = 8"),
    "K-over-2^bits": (_entry(0, K=9), r"entry 0 .*K=9; expected 1..2\^bits = 8"),
    "payload-long": (before(_buffer_data("payload", 0, lambda b: b + b"\0")),
                     r"entry 0 .*payload buffer \d+ has 4 bytes; expected ceil\(G\*bits/8\) = 3"),
    "table-short": (before(_buffer_data("table", 0, lambda b: b[:-1])),
                    r"entry 0 .*table buffer \d+ has 71 bytes; expected K\*d = 72"),
    "f-4": (_entry(1, bits=4), r"entry 1 .*width-field bits f=4; expected 0..3"),
    "b0-0": (_entry(1, K=0), r"entry 1 .*base width b0=0; expected 1..8"),
    "b0-9": (_entry(1, K=9), r"entry 1 .*base width b0=9; expected 1..8"),
    "width-over-8": (_width_9, r"entry 1 .*group 0 \(a=0, b=0\) has width b0\+field = \d+; expected 1..8"),
    "scalar-payload-short": (before(_buffer_data("payload", 1, lambda b: b[:-1])),
                             r"entry 1 .*expected ceil\(G\*f/8\) \+ ceil\(d\*sum\(w_g\)/8\)"),
    "scalar-payload-empty": (before(_buffer_data("payload", 1, lambda b: b"")),
                             r"entry 1 .*payload buffer \d+ has 0 bytes"),
    "scalar-table-long": (before(_buffer_data("table", 1, lambda b: b + b"\0")),
                          r"entry 1 .*expected 16 \+ sum\(K_w\)"),
    "scalar-table-no-counts": (before(_buffer_data("table", 1, lambda b: b[:15])),
                               r"entry 1 .*has 15 bytes; expected 16 bytes of counts"),
    "K_w-over-2^w": (_counts(lambda c: c.__setitem__(0, 3)), r"entry 1 .*count K_1=3; expected <= 2\^1"),
    # 5. every external buffer is an entry target
    "untargeted-external-buffer": (before(_external_bias),
                                   r"buffer \d+ has offset 4096 \(stored outside the flatbuffer\) but no "
                                   r"tfq_codebook entry fills it"),
    # 6. dense_size
    "dense-size": (lambda m, e, h: h.update(dense_size=h["dense_size"] + 1),
                   r"dense_size \d+; the placement rule gives"),
    # 7. indices / codes in range, while decoding
    "index-out-of-range": (before(_index_7), r"entry 0 \(kind 1, target buffer \d+\): index \d of block .* "
                                             r"out of range for a codebook of K=5 rows"),
    "code-out-of-range": (before(_code_out_of_range),
                          r"entry 1 \(kind 2, target buffer \d+\): code \d+ of element 0 of group 0 "
                          r"\(a=0, b=0\) is out of range for table T_\d"),
}


def bad_file(dense, weights, case, content=None):
    edit = BAD[case][0]
    if callable(edit):
        return build(dense, two_entries(weights), after=edit)[0]
    if edit[0] == "before":
        return build(dense, two_entries(weights), before=edit[1])[0]
    if edit == "kernel":  # a dense file with the custom op's operator code: kernel layout
        model = fb.read_model(dense)
        _kernel_code(model, [], {})
        return fb.write_model(model)
    content = content or build(dense, two_entries(weights))[0]
    if edit == "truncate":
        return content[:len(content) // 2]
    if edit == "identifier":
        return _patch(content, 4, b"TFL2")
    if edit == "root":
        return _flip_root(content)
    return _patch(content, _model_vector(content, edit[1]), struct.pack("<I", 2 ** 30))


@pytest.fixture(scope="module")
def bad_files(dense, weights, loader_file):
    return {case: bad_file(dense, weights, case, loader_file[0]) for case in BAD}


@pytest.mark.parametrize("case", list(BAD))
def test_loader_rejects(bad_files, case):
    content = bad_files[case]
    snapshot = bytes(content)
    with pytest.raises(ValueError, match=BAD[case][1]) as caught:
        kernels.decompress_native(content)
    assert str(caught.value).startswith("`data` cannot be decompressed: ")
    assert str(caught.value).endswith(f". Received: data of {len(content)} bytes")
    assert content == snapshot


def test_decompression_bomb_is_rejected_before_allocation(dense, weights):
    """One codebook row, d = 65536, A = 32767: a 2 GiB weight from a ~70 KB file."""
    d, a = 2 ** 16, 2 ** 15 - 1

    def bomb(model, entries, header):
        e = entries[0]
        e.update(A=a, d=d, B=1, bits=1, K=1, size=a * d)
        model.buffers[e["target"]].size = a * d
        _set_data(model, e["payload"], bytes((a + 7) // 8))
        _set_data(model, e["table"], bytes(d))

    content, _ = build(dense, [(weights["conv"], 1, (8, 9, 1))], before=bomb)
    assert len(content) < 100_000
    with pytest.raises(ValueError, match=r"would have \d{10} bytes, more than max_bytes=\d{8} \(the default "
                                         r"is max\(16 MiB, 256 \* file length\)\); refusing a possible "
                                         r"decompression bomb"):
        kernels.decompress_native(content)
    with pytest.raises(ValueError, match=r"more than max_bytes=1000000"):
        kernels.decompress_native(content, max_bytes=1_000_000)
    library = kernels.load_library("loader")
    size = ctypes.c_size_t(1)
    err = ctypes.create_string_buffer(256)
    assert library.tfq_decompressed_size(content, len(content), 2 ** 32, ctypes.byref(size), err, 256) == 0
    assert size.value == align16(len(content)) + a * d  # the size is known without allocating it


def test_max_bytes_bounds_the_output(loader_file, dense):
    content, expected = loader_file
    assert kernels.decompress_native(content, max_bytes=len(expected)) == expected
    assert kernels.decompress_native(content, max_bytes=np.int64(len(expected))) == expected
    with pytest.raises(ValueError, match=rf"would have {len(expected)} bytes, more than "
                                         rf"max_bytes={len(expected) - 1}"):
        kernels.decompress_native(content, max_bytes=len(expected) - 1)
    assert kernels.decompress_native(dense, max_bytes=10) == dense  # returned unchanged: nothing is decoded


def test_c_api_size_into_and_default_bound(loader_file):
    content, expected = loader_file
    library = kernels.load_library("loader")
    assert library.tfq_default_max_bytes(0) == 16 << 20
    assert library.tfq_default_max_bytes(1 << 20) == 256 << 20
    assert library.tfq_default_max_bytes(2 ** 64 - 1) == 2 ** 64 - 1  # saturates
    size, err = ctypes.c_size_t(), ctypes.create_string_buffer(256)
    assert library.tfq_decompressed_size(content, len(content), 0, ctypes.byref(size), err, 256) == 0
    assert size.value == len(expected) and err.value == b""
    out = ctypes.create_string_buffer(len(expected))
    written = ctypes.c_size_t()
    status = library.tfq_decompress_into(content, len(content), 0, out, len(expected) - 1,
                                         ctypes.byref(written), err, 256)
    assert status == -1 and written.value == 0
    assert err.value.decode() == f"the output buffer has {len(expected) - 1} bytes; the dense model needs " \
                                 f"{len(expected)}"
    assert library.tfq_decompress_into(content, len(content), 0, out, len(expected), ctypes.byref(written),
                                       err, 256) == 0
    assert written.value == len(expected) and out.raw == expected
    # a one-byte error buffer holds just the terminator; NULL error buffers are allowed
    tiny = ctypes.create_string_buffer(b"x", 1)
    assert library.tfq_decompressed_size(b"nope", 4, 0, ctypes.byref(size), tiny, 1) == -1
    assert tiny.raw == b"\0"
    assert library.tfq_decompressed_size(b"nope", 4, 0, ctypes.byref(size), None, 0) == -1
    assert library.tfq_decompressed_size(None, 0, 0, ctypes.byref(size), err, 256) == -1


@pytest.mark.parametrize("data, max_bytes, error, match", [
    ("model.tflite", None, TypeError, r"`data` must be the bytes .* Received: data of type str"),
    (None, None, TypeError, r"Received: data of type NoneType"),
    (b"", "1", TypeError, r"`max_bytes` must be an integer .* Received: max_bytes='1' \(type str\)"),
    (b"", True, TypeError, r"`max_bytes` must be an integer .* Received: max_bytes=True"),
    (b"", 1.5, TypeError, r"max_bytes=1.5 \(type float\)"),
    (b"", 0, ValueError, r"`max_bytes` must be between 1 and \d+ .* Received: max_bytes=0"),
    (b"", -5, ValueError, r"Received: max_bytes=-5"),
    (b"", 2 ** 64, ValueError, r"Received: max_bytes=18446744073709551616"),
    (b"", None, ValueError, r"not a TFLite flatbuffer: bytes 4..8 must be the identifier \"TFL3\" \(0 bytes"),
])
def test_argument_errors(data, max_bytes, error, match):
    with pytest.raises(error, match=match):
        kernels.decompress_native(data, max_bytes=max_bytes)


# --- mutations ---------------------------------------------------------------------------------------------


def mutations(content, count, seed):
    """Truncations at spread-out lengths and 1..4-byte flips, half of them inside the descriptor/payloads."""
    rng = np.random.default_rng(seed)
    start = content.index(MAGIC)
    for length in np.unique(np.linspace(0, len(content) - 1, count // 4).astype(int)):
        yield content[:length]
    for _ in range(count - count // 4):
        mutated = bytearray(content)
        for _ in range(rng.integers(1, 5)):
            low = start - 400 if rng.random() < 0.5 else 0
            position = int(rng.integers(max(low, 0), len(content)))
            mutated[position] = int(rng.integers(256)) if rng.random() < 0.5 else mutated[position] ^ (
                1 << int(rng.integers(8)))
        yield bytes(mutated)


def test_mutated_files_fail_cleanly(loader_file):
    """In process: every mutation decodes or raises ValueError (never crashes)."""
    content, expected = loader_file
    outcomes = {"ok": 0, "error": 0}
    for mutated in mutations(content, 400, seed=0):
        try:
            out = kernels.decompress_native(mutated)
        except ValueError as exc:
            assert "cannot be decompressed: " in str(exc)
            outcomes["error"] += 1
        else:
            assert len(out) >= len(mutated)
            outcomes["ok"] += 1
    assert outcomes["error"] > 100 and outcomes["ok"] > 0, outcomes


@pytest.mark.skipif(not os.environ.get("TFQ_LOADER_ASAN"),
                    reason="set by `make sanitize` (the ASan/UBSan build)")
def test_sanitized_loader_on_mutated_files(dense, weights, loader_file, bad_files, tmp_path):
    """`make sanitize`: the ASan + UBSan build of tfq_loader_main.c over valid, malformed and mutated
    files; any sanitizer report, signal or output that differs from the in-process loader fails."""
    binary = os.environ["TFQ_LOADER_ASAN"]
    corpus = [loader_file[0], build(dense, PLANS["mixed"](weights))[0], dense, *bad_files.values()]
    corpus += list(mutations(loader_file[0], 400, seed=1))
    corpus += list(mutations(build(dense, PLANS["scalar"](weights))[0], 200, seed=2))
    env = dict(os.environ, ASAN_OPTIONS="exitcode=99:abort_on_error=0:detect_leaks=1",
               UBSAN_OPTIONS="exitcode=98:print_stacktrace=1:halt_on_error=1")
    results = {0: 0, 1: 0}
    source, target = tmp_path / "in.tflite", tmp_path / "out.tflite"
    for i, data in enumerate(corpus):
        source.write_bytes(data)
        done = subprocess.run([binary, str(source), str(target)], capture_output=True, text=True, env=env,
                              timeout=60)
        report = "Sanitizer" in done.stderr or "runtime error" in done.stderr
        assert done.returncode in (0, 1) and not report, (
            f"file {i}: exit {done.returncode}\n{done.stderr[-4000:]}")
        results[done.returncode] += 1
        if done.returncode == 0:
            assert target.read_bytes() == kernels.decompress_native(data)
        else:
            assert done.stderr.startswith("tfq_loader: ")
    print(f"sanitized loader: {len(corpus)} files, {results[0]} decoded, {results[1]} rejected, no reports")
    assert results[0] >= 3 and results[1] >= len(bad_files)


# --- against tflite_export.codebook (loader layout) --------------------------------------------------------


def _has_loader_layout():
    from tflite_export.codebook import compress

    return "layout" in inspect.signature(compress).parameters


@pytest.fixture(scope="module")
def compressible(digits):
    """A digits CNN whose dense weights compress: the first with 2..65 levels per output row (variable-width
    groups, kind 2), the second with 5 levels (a scalar codebook, kind 1)."""
    from tflite_export import convert

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10),
    ], name="compressible_cnn")
    rng = np.random.default_rng(0)
    for layer in model.layers:
        kernel = layer.weights[0] if layer.weights else None
        if kernel is None:
            continue
        columns = kernel.shape[-1]
        values = np.empty((int(np.prod(kernel.shape[:-1])), columns), np.float32)
        for j in range(columns):
            levels = np.linspace(-0.2, 0.2, [2, 3, 5, 9, 17, 65][j % 6] if columns == 64 else 5)
            values[:, j] = rng.choice(levels, size=values.shape[0])
            values[0, j] = 0.2  # the same per-channel scale everywhere
        kernel.assign(values.reshape(kernel.shape))
    return convert(model, digits.x_train[:64])


@pytest.mark.skipif(not _has_loader_layout(), reason="tflite_export.compress has no layout= argument yet")
def test_native_matches_python_decompress(compressible, probe):
    from tflite_export import compress, decompress
    from tflite_export.codebook import describe

    content = compress(compressible, layout="loader")
    assert len(content) < len(compressible)
    assert sorted(t.encoding for t in describe(content)) == ["codebook", "varwidth"]
    native = kernels.decompress_native(content)
    assert native == decompress(content)
    assert np.array_equal(run_raw(native, probe), run_raw(compressible, probe))
    report = verify(native)
    assert report.delegate_partitions == 1 and report.num_delegated == report.num_nodes
    assert kernels.decompress_native(native) == native == decompress(native)  # loaded already
    kernel_layout = compress(compressible, layout="kernel")
    with pytest.raises(ValueError, match=r"kernel-layout file"):
        kernels.decompress_native(kernel_layout)


# Files the C loader refuses and tflite_export.decompress loads: a TfqCodebookDecode operator code marks the
# kernel layout, which only Python decompresses (here there is no decode node, so it only drops the code).
PYTHON_ACCEPTS = {"kernel-layout"}


@pytest.mark.skipif(not _has_loader_layout(), reason="tflite_export.compress has no layout= argument yet")
def test_python_decompress_agrees_on_hand_built_files(dense, weights, bad_files):
    from tflite_export import decompress

    for plan in PLANS:
        content, expected = build(dense, PLANS[plan](weights))
        assert decompress(content) == expected, plan
    accepted = set()
    for case, content in bad_files.items():
        try:
            decompress(content)
        except ValueError:
            continue
        accepted.add(case)
    assert accepted == PYTHON_ACCEPTS, f"decompress accepts files the C loader refuses: {sorted(accepted)}"
