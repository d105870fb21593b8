"""The loader layout of compressed files and the variable-width encoding (tflite_export/kernels/FORMAT.md)."""

import struct

import numpy as np
import pytest

from tests.tflite_export import test_codebook
from tflite_export import flatbuffer as fb
from tflite_export import run, verify
from tflite_export._loader_layout import ENTRY, HEADER, MAGIC, _decode_varwidth, encode_varwidth
from tflite_export.codebook import (compress, decompress, default_max_bytes, describe, is_compressed, layout_of,
                                    load_interpreter, pack_indices)

codebook_int8, compressed = test_codebook.codebook_int8, test_codebook.compressed


@pytest.fixture(scope="module")
def loader(codebook_int8):
    return compress(codebook_int8, return_report=True)


def _descriptor(model):
    entry = [m for m in model.metadata if m.name in (b"tfq_codebook", "tfq_codebook")][0]
    return entry.buffer, fb.buffer_data(model, entry.buffer).tobytes()


def _loaded_weights(content):
    """tensor name -> int8 weight of a loaded (dense) model, reading external buffers at their offsets."""
    model = fb.read_model(content)
    result = {}
    for tensor in model.subgraphs[0].tensors:
        buffer = model.buffers[tensor.buffer]
        if buffer.offset and buffer.offset > 1:
            data = np.frombuffer(content[buffer.offset:buffer.offset + buffer.size], np.int8)
        else:
            data = fb.buffer_data(model, tensor.buffer)
            data = None if data is None else data.view(np.int8)
        if data is not None and fb.tensor_type_name(tensor.type) == "INT8":
            result[tensor.name.decode()] = data
    return result


def test_loader_layout_round_trip(loader, codebook_int8, digits):
    content, report = loader
    assert layout_of(content) == "loader" and is_compressed(content)
    assert fb.op_names(fb.read_model(content)) == fb.op_names(fb.read_model(codebook_int8))  # no custom op
    dense = decompress(content)
    # the loaded model is the compressed file itself followed by the weights, 16-byte aligned
    assert dense[:len(content)] == content and len(dense) > len(codebook_int8) - report.size_before + len(content)
    original, loaded = _loaded_weights(codebook_int8), _loaded_weights(dense)
    for name, values in original.items():
        assert np.array_equal(values, loaded[name]), name
    x = digits.x_test[:64]
    assert np.array_equal(run(codebook_int8, x), run(dense, x))
    report_file = verify(dense)
    assert report_file.integer_only and report_file.delegate_partitions == 1
    assert np.array_equal(run(None, x, interpreter=load_interpreter(content)), run(codebook_int8, x))


def test_placement_follows_the_rule(loader):
    content, _ = loader
    model = fb.read_model(content)
    _, raw = _descriptor(model)
    magic, version, count, dense_size = HEADER.unpack_from(raw)
    assert (magic, version) == (MAGIC, 1) and len(raw) == HEADER.size + ENTRY.size * count
    offset = (len(content) + 15) // 16 * 16
    for i in range(count):
        fields = ENTRY.unpack_from(raw, HEADER.size + ENTRY.size * i)
        target, at, size = fields[1], fields[9], fields[10]
        assert at == offset and model.buffers[target].offset == at and model.buffers[target].size == size
        assert fb.buffer_data(model, target) is None
        offset = (at + size + 15) // 16 * 16
    assert dense_size == at + size == len(decompress(content))


def test_loader_file_is_smaller_than_the_kernel_file(loader, compressed):
    (small, report), (kernel, kernel_report) = loader, compressed
    assert len(report.compressed) >= len(kernel_report.compressed)
    assert len(small) < len(kernel)
    tables = len(small) - report.expected_size()
    assert 0 < tables <= 256 * len(report.compressed)


def test_describe_lists_the_compressed_weights(loader, compressed):
    for content, report in (loader, compressed):
        described = describe(content)
        assert [t.name for t in described] == [t.name for t in report.compressed]
        for got, want in zip(described, report.compressed):
            assert (got.layout, got.K, got.bits, got.bytes_before, got.bytes_after, got.encoding) == \
                   (want.layout, want.K, want.bits, want.bytes_before, want.bytes_after, want.encoding)
            assert got.op == want.op and got.shape == want.shape
    loaded = decompress(loader[0])
    assert describe(loaded) == [] and not is_compressed(loaded) and decompress(loaded) == loaded


def test_kernel_use_needs_the_kernel_layout(loader):
    with pytest.raises(ValueError, match='layout="kernel"'):
        load_interpreter(loader[0], use_kernel=True)


def test_layout_argument_and_double_compression(codebook_int8, loader):
    with pytest.raises(ValueError, match="`layout` must be one of"):
        compress(codebook_int8, layout="zip")
    with pytest.raises(ValueError, match="already compressed"):
        compress(loader[0])


# --- variable-width codes -------------------------------------------------------------------------------


def test_varwidth_golden_bytes():
    # groups {5,5}, {1,2}, {3,4}, {1,2}: width 1 takes the most common 2-value set {1,2}; {3,4} and {5} share
    # the width-2 table [3, 4, 5]
    blocks = np.array([[5, 5], [1, 2], [3, 4], [1, 2]], np.int8)
    f, b0, payload, table, cost = encode_varwidth(blocks)
    assert (f, b0) == (1, 1)
    # widths - 1 = 1,0,1,0 (LSB first) -> 0b0101; codes 2,2 | 0,1 | 0,1 | 0,1 at 2,1,2,1 bits
    assert payload == bytes([0b0101, 42, 9])
    assert table == struct.pack("<8H", 2, 3, 0, 0, 0, 0, 0, 0) + bytes([1, 2, 3, 4, 5])
    assert cost == len(payload) + len(table)
    decoded = _decode_varwidth("t", (4, 2, 1), f, b0, np.frombuffer(payload, np.uint8),
                               np.frombuffer(table, np.uint8))
    assert np.array_equal(decoded, blocks.ravel())


@pytest.mark.parametrize("view", [(6, 8, 5), (240, 1, 1), (1, 16, 15), (30, 4, 2)])
def test_varwidth_round_trip_random(view):
    rng = np.random.default_rng(sum(view))
    a, d, b = view
    # groups on grids of 2..32 levels, as DiffQ's learned bits give
    levels = rng.integers(1, 6, size=a * b)
    grids = {w: np.unique(rng.integers(-128, 128, size=1 << w)) for w in range(1, 6)}
    blocks = np.stack([rng.choice(grids[w], size=d) for w in levels]).astype(np.int8)
    f, b0, payload, table, _ = encode_varwidth(blocks)
    decoded = _decode_varwidth("t", (a * b, d, 1), f, b0, np.frombuffer(payload, np.uint8),
                               np.frombuffer(table, np.uint8))
    assert np.array_equal(decoded, blocks.ravel())
    assert encode_varwidth(blocks, max_width=0) is None


def test_diffq_like_weights_use_variable_widths(digits):
    """A Dense kernel whose groups of 8 along the Keras output axis sit on 2-, 8- and 16-level grids, like a
    DiffQ model with learned bits, is stored in variable-width codes close to the ideal size."""
    from tflite_export import convert
    from tfq_ext._keras import keras

    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, name="fc"), keras.layers.Dense(10)])
    kernel = np.zeros((64, 64), np.float32)
    ideal_bits = 0
    for i in range(64):
        for g in range(8):
            bits = int(rng.choice([1, 3, 4]))
            grid = np.linspace(-1.0, 1.0, 1 << bits)
            kernel[i, 8 * g:8 * g + 8] = rng.choice(grid, size=8)
            ideal_bits += 8 * bits
    model.layers[0].set_weights([kernel, np.zeros(64, np.float32)])
    flatbuffer = convert(model, digits.x_train.reshape(-1, 64)[:100], per_channel=False)
    content, report = compress(flatbuffer, return_report=True)
    entry = next(t for t in report.tensors if t.shape == (64, 64))
    assert entry.compressed and entry.encoding == "varwidth"
    # the ideal codes, 2 bits of width per group of 8 (widths 1..4), the tables (<= 2+4+8+16) and the header
    assert entry.bytes_after <= 1.05 * (ideal_bits + 2 * 64 * 8) / 8 + 16 + 30
    x = digits.x_test.reshape(-1, 64)[:32]
    assert np.array_equal(run(flatbuffer, x), run(decompress(content), x))
    _, kernel_report = compress(flatbuffer, layout="kernel", return_report=True)
    assert all(t.encoding != "varwidth" for t in kernel_report.tensors)


# --- hostile loader files -------------------------------------------------------------------------------


def _replace(model):
    """Serializes ``model`` with its entries placed by the rule again (an edit may change the file length)."""
    index, raw = _descriptor(model)
    raw = bytearray(raw)
    length = len(fb.write_model(model))
    offset = (length + 15) // 16 * 16
    for i in range(HEADER.unpack_from(raw)[2]):
        values = list(ENTRY.unpack_from(raw, HEADER.size + ENTRY.size * i))
        values[9] = offset
        if values[1] < len(model.buffers) and model.buffers[values[1]].offset > 1:
            model.buffers[values[1]].offset = offset
        ENTRY.pack_into(raw, HEADER.size + ENTRY.size * i, *values)
        offset = (offset + values[10] + 15) // 16 * 16
    magic, version, count, _ = HEADER.unpack_from(raw)
    HEADER.pack_into(raw, 0, magic, version, count, values[9] + values[10])
    fb.set_buffer_data(model, index, bytes(raw))
    return raw


def _edit(content, entry=0, header=None, model_edit=None, **fields):
    """Edits the model, places the entries again, then rewrites descriptor fields (by name) of one entry or
    the header (fixed-width fields: the file length does not change)."""
    model = fb.read_model(content)
    if model_edit is not None:
        index, raw = _descriptor(model)
        model_edit(model, ENTRY.unpack_from(raw, HEADER.size))
    raw = _replace(model)
    index, _ = _descriptor(model)
    names = ("kind", "target", "payload", "table", "A", "d", "B", "bits", "K", "offset", "size")
    if fields:
        values = list(ENTRY.unpack_from(raw, HEADER.size + ENTRY.size * entry))
        for key, value in fields.items():
            values[names.index(key)] = value
        ENTRY.pack_into(raw, HEADER.size + ENTRY.size * entry, *values)
    if header is not None:
        raw = header(raw)
    fb.set_buffer_data(model, index, bytes(raw))
    return fb.write_model(model)


def _set_payload(model, fields, data):
    fb.set_buffer_data(model, fields[2], data)


def _with_header(**changes):
    def edit(raw):
        magic, version, count, size = HEADER.unpack_from(raw)
        values = {**dict(magic=magic, version=version, count=count, size=size), **changes}
        return HEADER.pack(values["magic"], values["version"], values["count"], values["size"]) + raw[HEADER.size:]
    return edit


def _duplicate_metadata(model, fields):
    model.metadata.append(model.metadata[-1])


def _stray_external(model, fields):
    model.buffers[0].offset, model.buffers[0].size = 1 << 20, 16


def _target_data(model, fields):
    fb.set_buffer_data(model, fields[1], b"\0" * fields[10])
    model.buffers[fields[1]].offset, model.buffers[fields[1]].size = fields[9], fields[10]


def _index_past_k(model, fields):
    kind, _, payload, table, a, d, b, bits, k = fields[:9]
    fb.set_buffer_data(model, table, fb.buffer_data(model, table)[:-(d)])


LOADER_MALFORMED = {
    "kind-3": (dict(kind=3), "kind 3 is unknown"),
    "target-out-of-range": (dict(target=10**6), "out of range"),
    "payload-out-of-range": (dict(payload=2**32 - 1), "out of range"),
    "payload-is-target": (dict(payload=None), "distinct"),
    "offset-moved": (dict(offset=None), "offset/size fields|placement"),
    "size-wrong": (dict(size=None), "offset/size fields"),
    "A-zero": (dict(A=0), "A, d, B >= 1"),
    "view-mismatch": (dict(d=None), "A\\*d\\*B == size"),
    "bits-9": (dict(bits=9), "bits"),
    "K-too-big": (dict(K=None), "K <= 2\\*\\*bits"),
}


@pytest.mark.parametrize("case", list(LOADER_MALFORMED))
def test_loader_rejects_bad_entries(loader, case):
    content, _ = loader
    fields, match = LOADER_MALFORMED[case]
    raw = _descriptor(fb.read_model(content))[1]
    first = ENTRY.unpack_from(raw, HEADER.size)
    computed = {"payload": first[1], "offset": first[9] + 16, "size": first[10] + 1, "d": first[5] + 1,
                "K": (1 << first[7]) + 1}
    fields = {k: computed[k] if v is None else v for k, v in fields.items()}
    bad = _edit(content, **fields)
    for reader in (decompress, describe):
        with pytest.raises(ValueError, match=match):
            reader(bad)


@pytest.mark.parametrize("case, kwargs, match", [
    ("magic", dict(header=_with_header(magic=b"TFQCBLD9")), "version-1 descriptor"),
    ("count-0", dict(header=_with_header(count=0)), "N >= 1"),
    ("count-too-big", dict(header=_with_header(count=99)), "version-1 descriptor"),
    ("dense-size", dict(header=_with_header(size=1)), "declares a loaded size"),
    ("short-descriptor", dict(header=lambda raw: raw[:10]), "at least"),
    ("two-metadata", dict(model_edit=_duplicate_metadata), "one `tfq_codebook`"),
    ("stray-external-buffer", dict(model_edit=_stray_external), "no codebook entry fills"),
    ("target-holds-data", dict(model_edit=_target_data), "no data"),
    ("payload-short", dict(model_edit=lambda m, f: _set_payload(m, f, fb.buffer_data(m, f[2])[:-1])),
     "packed indices have|payload has"),
    ("index-past-K", dict(model_edit=_index_past_k), "codebook|>= K"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_loader_rejects_bad_files(loader, case, kwargs, match):
    bad = _edit(loader[0], **kwargs)
    with pytest.raises(ValueError, match=match):
        decompress(bad)


def test_appended_bytes_break_the_placement(loader):
    with pytest.raises(ValueError, match="placement rule"):
        decompress(loader[0] + b"\0" * 16)


def test_truncated_loader_file(loader):
    content = loader[0]
    for cut in (8, 100, len(content) // 2, len(content) - 1):
        with pytest.raises(ValueError):
            decompress(content[:cut])


def _bomb(codebook_int8, a, d):
    """A one-entry loader file: one codebook row expanded to an (a, d, 1) weight."""
    from tflite_export import _loader_layout

    model = fb.read_model(codebook_int8)
    tensor = next(t for t in model.subgraphs[0].tensors if fb.buffer_data(model, t.buffer) is not None
                  and fb.tensor_type_name(t.type) == "INT8")
    plan = _loader_layout.Plan(int(tensor.buffer), 1, (a, d, 1), 1, 1, pack_indices(np.zeros(a, int), 1),
                               bytes(d))
    return _loader_layout.write(model, [plan])


def test_decompression_bomb_is_bounded(codebook_int8):
    bomb = _bomb(codebook_int8, 4096, 4096)  # 16 MiB from a file of a few tens of KB
    assert len(bomb) < 100_000 and default_max_bytes(len(bomb)) < (1 << 24) + len(bomb)
    for kwargs in ({}, {"max_bytes": 1 << 20}):
        with pytest.raises(ValueError, match="max_bytes"):
            decompress(bomb, **kwargs)
    assert len(decompress(bomb, max_bytes=1 << 25)) > 1 << 24
    with pytest.raises(ValueError, match="`max_bytes` must be a positive integer"):
        decompress(bomb, max_bytes=0)


def test_kernel_layout_bomb_is_bounded(compressed):
    bomb = test_codebook.edit_decode_node(compressed[0], lambda m, s, o, a: dict(a, A=a["A"] * 65536))
    with pytest.raises(ValueError, match="max_bytes"):
        decompress(bomb)
