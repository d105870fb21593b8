"""compress / decompress of the kernel layout: lossless round trip, views, size accounting, malformed files.

The loader layout and the variable-width encoding are in test_codebook_loader.py."""

import math

import numpy as np
import pytest
from flatbuffers import flexbuffers

from tflite_export import flatbuffer as fb
from tflite_export.codebook import (CUSTOM_OP_NAME, CompressionReport, compress, decompress, is_compressed,
                                    pack_indices, unpack_indices)
from tfq_ext._keras import keras

CONV_BANK, DENSE_BANK, DENSE_BLOCK = 16, 32, 8


def _kernel_codebook(kernel, rng, bank_size):
    """Each 2-D kernel (i, o) of an (h, w, in, out) kernel becomes one of `bank_size` random kernels."""
    h, w, cin, cout = kernel.shape
    bank = rng.normal(size=(bank_size, h, w)).astype(np.float32) * 0.2
    return np.transpose(bank[rng.integers(0, bank_size, size=(cin, cout))], (2, 3, 0, 1))


def _row_codebook(kernel, rng, bank_size, block):
    """Each run of `block` inputs of each output (an (in, out) matrix, 1x1 convs reshaped) becomes one of
    `bank_size` random rows: TFLite stores the weight as (out, in), so the runs are contiguous there."""
    matrix = kernel.reshape(-1, kernel.shape[-1])
    cin, cout = matrix.shape
    bank = rng.normal(size=(bank_size, block)).astype(np.float32) * 0.1
    chosen = bank[rng.integers(0, bank_size, size=(cin // block, cout))]  # (cin/block, cout, block)
    return np.transpose(chosen, (0, 2, 1)).reshape(cin, cout).reshape(kernel.shape)


def build_codebook_model(digits):
    """A QAT digits CNN (per-tensor weights) whose kernels are drawn from small codebooks, and its int8 file.

    The kernels are set after a short fit (which calibrates the activation ranges): the weight fake quant
    takes its range from the kernel itself, so equal float blocks stay equal in int8.
    """
    from tflite_export import convert
    from tfq_ext.qat import quantize_model

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_b"),
        keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise"),
        keras.layers.Conv2D(32, 1, activation="relu", name="pointwise"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu", name="dense_a"),
        keras.layers.Dense(10, name="dense_b"),
    ], name="codebook_cnn")
    qat = quantize_model(model, per_channel=False)
    qat.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(digits.x_train[:256], digits.y_train[:256], epochs=1, batch_size=64, verbose=0)
    rng = np.random.default_rng(0)
    for layer in qat.layers:
        for weight in layer.weights:
            short = weight.name.split("/")[-1].split(":")[0]
            if short not in ("kernel", "depthwise_kernel"):
                continue
            if any(key in weight.name for key in ("conv_b", "depthwise")):
                weight.assign(_kernel_codebook(weight.numpy(), rng, CONV_BANK))
            elif any(key in weight.name for key in ("pointwise", "dense_a")):
                weight.assign(_row_codebook(weight.numpy(), rng, DENSE_BANK, DENSE_BLOCK))
    return convert(qat)


@pytest.fixture(scope="session")
def codebook_int8(digits):
    return build_codebook_model(digits)


@pytest.fixture(scope="session")
def compressed(codebook_int8):
    """The kernel layout (TfqCodebookDecode nodes), which the kernel tests run too."""
    return compress(codebook_int8, layout="kernel", return_report=True)


def _weights(content):
    """name -> (op, int8 array in TFLite layout) of conv/depthwise/dense weights."""
    model = fb.read_model(content)
    subgraph = model.subgraphs[0]
    result = {}
    for op in subgraph.operators:
        name = fb.op_name(model, op)
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            tensor = subgraph.tensors[op.inputs[1]]
            data = fb.buffer_data(model, tensor.buffer)
            key = tensor.name.decode()
            result[key] = (name, None if data is None else data.view(np.int8).reshape(tensor.shape))
    return result


def _layer(name, names):
    (match,) = [n for n in names if f"/quant_{name}/" in n]
    return match


def test_int8_export_keeps_the_block_structure(codebook_int8):
    weights = _weights(codebook_int8)
    conv = weights[_layer("conv_b", weights)][1]  # (O, H, W, I)
    kernels = conv.transpose(0, 3, 1, 2).reshape(-1, 9)
    assert len(np.unique(kernels, axis=0)) <= CONV_BANK
    dense = weights[_layer("dense_a", weights)][1]  # (O, I)
    assert len(np.unique(dense.reshape(-1, DENSE_BLOCK), axis=0)) <= DENSE_BANK


def test_report_layouts_and_sizes(compressed, codebook_int8):
    content, report = compressed
    assert isinstance(report, CompressionReport)
    by_layer = {name: t for t in report.tensors for name in ("conv_a", "conv_b", "depthwise", "pointwise",
                                                             "dense_a", "dense_b") if f"/quant_{name}/" in t.name}
    conv, dense = by_layer["conv_b"], by_layer["dense_a"]
    assert conv.compressed and conv.layout == (32, 9, 8) and conv.K <= CONV_BANK and conv.bits == 4
    assert dense.compressed and dense.layout == (64 * 512 // 8, 8, 1) and dense.K <= DENSE_BANK
    assert dense.bits == math.ceil(math.log2(dense.K))
    assert by_layer["pointwise"].compressed and by_layer["pointwise"].layout[1:] == (8, 1)
    for t in report.compressed:
        assert t.bytes_after == math.ceil(t.num_blocks * t.bits / 8) + t.K * t.layout[1]
        assert t.num_blocks == t.layout[0] * t.layout[2]
    # conv_a (72 bytes) and dense_b would grow with the per-tensor tables: left dense, with a reason
    assert not by_layer["conv_a"].compressed and "min_saving" in by_layer["conv_a"].reason
    assert report.size_before == len(codebook_int8) and report.size_after == len(content)
    assert "compressed" in str(report) and "payload accounting" in str(report)


def test_roundtrip_is_byte_identical(compressed, codebook_int8):
    content, report = compressed
    assert is_compressed(content) and not is_compressed(codebook_int8)
    assert fb.op_names(fb.read_model(content)).count(CUSTOM_OP_NAME) == len(report.compressed) == 3
    restored = decompress(content)
    # TF's converter writes int8 files with the same object API, so even the bytes come back
    assert restored == codebook_int8
    original, back = _weights(codebook_int8), _weights(restored)
    assert original.keys() == back.keys()
    for name in original:
        assert np.array_equal(original[name][1], back[name][1]), name
    assert fb.op_names(fb.read_model(restored)) == fb.op_names(fb.read_model(codebook_int8))
    # the dense weights are really gone from the compressed file
    assert all(data is None for name, (_, data) in _weights(content).items()
               if any(name == t.name for t in report.compressed))


def test_file_size_matches_accounting(compressed):
    content, report = compressed
    expected = report.expected_size()
    tables = len(content) - expected
    # the flatbuffer tables of each replaced weight (2 tensors, 2 buffers, 1 operator) plus one operator code
    assert 0 < tables <= 256 * len(report.compressed) + 64
    assert len(content) <= 1.05 * expected + 256 * len(report.compressed)
    assert report.ratio == pytest.approx(report.size_before / len(content))
    assert report.ratio > 3


def test_decompress_leaves_dense_files_alone(ptq_int8):
    # per-channel weights: no layout with few distinct blocks
    content, report = compress(ptq_int8, return_report=True)
    assert content == ptq_int8 and not report.compressed
    assert decompress(ptq_int8) == ptq_int8


@pytest.mark.parametrize("spec, layout", [
    (8, None), ((4096, 8, 1), (4096, 8, 1)), (4, (8192, 4, 1)), (None, None),
], ids=["block-8", "explicit-view", "block-4", "automatic"])
def test_explicit_tensor_specs(codebook_int8, spec, layout):
    name = _layer("dense_a", _weights(codebook_int8))
    content, report = compress(codebook_int8, {name: spec}, layout="kernel", return_report=True)
    (entry,) = report.tensors
    assert entry.name == name and entry.compressed
    assert entry.layout == (layout or (4096, 8, 1))
    assert decompress(content) == codebook_int8


def test_names_list_and_kernel_block_size(codebook_int8):
    name = _layer("conv_b", _weights(codebook_int8))
    _, report = compress(codebook_int8, [name], return_report=True)
    assert [t.layout for t in report.tensors] == [(32, 9, 8)]
    _, report = compress(codebook_int8, {name: 9}, return_report=True)  # d == H*W: one block per kernel
    assert report.tensors[0].layout == (32, 9, 8)


def test_too_many_distinct_blocks(codebook_int8):
    name = _layer("dense_a", _weights(codebook_int8))
    content, report = compress(codebook_int8, {name: 16}, return_report=True)  # pairs of 8-blocks: > 256
    assert content == codebook_int8
    assert not report.tensors[0].compressed and "more than 2**8 distinct blocks" in report.tensors[0].reason


def test_max_bits_limits_the_codebook(codebook_int8):
    _, report = compress(codebook_int8, max_bits=3, return_report=True)
    dense = next(t for t in report.tensors if "/quant_dense_a/" in t.name)
    assert not dense.compressed and "2**3" in dense.reason


@pytest.mark.parametrize("kwargs, error, match", [
    ({"tensors": ["no/such/tensor"]}, ValueError, "no operator reads"),
    ({"tensors": "abc"}, TypeError, "`tensors` must be"),
    ({"max_bits": 0}, ValueError, "`max_bits` must be an integer in 1..8"),
    ({"max_bits": 9}, ValueError, "max_bits=9"),
    ({"min_saving": 1.0}, ValueError, "`min_saving`"),
], ids=["unknown-name", "string", "bits-0", "bits-9", "saving-1"])
def test_compress_argument_errors(codebook_int8, kwargs, error, match):
    with pytest.raises(error, match=match):
        compress(codebook_int8, **kwargs)


@pytest.mark.parametrize("spec, match", [(7, "must divide the last axis"), ((1, 2, 3), r"A\*d\*B"),
                                         (-1, "positive block size")], ids=["7", "bad-view", "negative"])
def test_block_size_errors(codebook_int8, spec, match):
    name = _layer("dense_a", _weights(codebook_int8))
    with pytest.raises(ValueError, match=match):
        compress(codebook_int8, {name: spec})


def test_input_type_errors():
    with pytest.raises(TypeError, match="int8_flatbuffer"):
        compress("model.tflite")
    with pytest.raises(ValueError, match="not a TFLite flatbuffer"):
        decompress(b"\0" * 32)


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_unpack_roundtrip(bits):
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 1 << bits, size=37)
    packed = pack_indices(values, bits)
    assert len(packed) == math.ceil(37 * bits / 8)
    assert np.array_equal(unpack_indices(packed, 37, bits), values)


def test_pack_is_lsb_first():
    assert pack_indices([1, 2, 3], 2) == bytes([0b00111001])
    assert pack_indices([5], 3) == bytes([0b101])
    with pytest.raises(ValueError, match="indices"):
        pack_indices([4], 2)


# --- malformed compressed files -------------------------------------------------------------------------


def edit_decode_node(content, edit, node=0):
    """Applies ``edit(model, subgraph, op, attrs)`` to the ``node``-th decode op; a returned dict replaces
    the custom options."""
    model = fb.read_model(content)
    subgraph = model.subgraphs[0]
    ops = [op for op in subgraph.operators if fb.op_name(model, op) == CUSTOM_OP_NAME]
    op = ops[node]
    attrs = flexbuffers.Loads(bytes(op.customOptions))
    new = edit(model, subgraph, op, attrs)
    if isinstance(new, dict):
        op.customOptions = np.frombuffer(flexbuffers.Dumps(new), np.uint8).copy()
    elif isinstance(new, bytes):
        op.customOptions = np.frombuffer(new, np.uint8).copy()
    return fb.write_model(model)


def _truncate_indices(model, subgraph, op, attrs, keep_shape=False):
    """One byte less of packed indices; the tensor's shape follows unless `keep_shape`."""
    tensor = subgraph.tensors[op.inputs[0]]
    data = fb.buffer_data(model, tensor.buffer)[:-1]
    fb.set_buffer_data(model, tensor.buffer, data)
    if not keep_shape:
        tensor.shape = np.asarray([data.size], np.int32)


def _index_out_of_range(model, subgraph, op, attrs):
    """K - 1 codebook rows: the blocks that used the last row now point past the codebook."""
    codebook = subgraph.tensors[op.inputs[1]]
    data = fb.buffer_data(model, codebook.buffer)
    fb.set_buffer_data(model, codebook.buffer, data[:-attrs["d"]])
    codebook.shape = np.asarray([attrs["K"] - 1, attrs["d"]], np.int32)
    return dict(attrs, K=attrs["K"] - 1)


def _drop_input(model, subgraph, op, attrs):
    op.inputs = op.inputs[:1]


MALFORMED = {
    "truncated-indices": (_truncate_indices, "packed indices have"),
    "indices-shorter-than-shape": (lambda *args: _truncate_indices(*args, keep_shape=True),
                                   "packed indices have"),
    "index-out-of-range": (_index_out_of_range, "out of range|>= K"),
    "A-zero": (lambda m, s, o, a: dict(a, A=0), "A, d, B|A=0"),
    "d-wrong": (lambda m, s, o, a: dict(a, d=a["d"] + 1), "codebook has|packed indices have|output has"),
    "B-negative": (lambda m, s, o, a: dict(a, B=-3), "B=-3"),
    "bits-9": (lambda m, s, o, a: dict(a, bits=9), "bits"),
    "K-too-big": (lambda m, s, o, a: dict(a, K=(1 << a["bits"]) + 1), "K"),
    "missing-attribute": (lambda m, s, o, a: {k: v for k, v in a.items() if k != "K"}, "K"),
    "float-attribute": (lambda m, s, o, a: dict(a, A=1.5), "integer"),
    "garbage-options": (lambda m, s, o, a: b"\x07\xff\x03", "FlexBuffer"),
    "one-input": (_drop_input, "2 inputs"),
}


@pytest.fixture(scope="session")
def malformed_files(compressed):
    content, _ = compressed
    return {key: edit_decode_node(content, edit) for key, (edit, _) in MALFORMED.items()}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_decompress_rejects_malformed_files(malformed_files, case):
    with pytest.raises(ValueError, match=MALFORMED[case][1]):
        decompress(malformed_files[case])


def test_truncated_file_is_a_value_error(compressed):
    content, _ = compressed
    with pytest.raises(ValueError, match="truncated or corrupt|not a TFLite"):
        decompress(content[:len(content) // 2])


# --- decode nodes that would write into the model or run after a reader ---------------------------------


def _output_holds_data(model, subgraph, op, attrs):
    out = subgraph.tensors[op.outputs[0]]
    fb.set_buffer_data(model, out.buffer, np.zeros(attrs["A"] * attrs["d"] * attrs["B"], np.uint8))


def _output_on_buffer_zero(model, subgraph, op, attrs):
    subgraph.tensors[op.outputs[0]].buffer = 0


def _output_shares_a_buffer(model, subgraph, op, attrs):
    other = next(t for t in subgraph.tensors if fb.buffer_data(model, t.buffer) is None and t.buffer != 0
                 and t is not subgraph.tensors[op.outputs[0]])
    other.buffer = subgraph.tensors[op.outputs[0]].buffer


def _moved_after_reader(model, subgraph, op, attrs):
    position = next(i for i, o in enumerate(subgraph.operators) if o is op)
    reader = next(i for i, o in enumerate(subgraph.operators) if op.outputs[0] in list(o.inputs))
    subgraph.operators.insert(reader + 1, subgraph.operators.pop(position))


def _second_writer(model, subgraph, op, attrs):
    reader = next(o for o in subgraph.operators if op.outputs[0] in list(o.inputs))
    reader.outputs = np.asarray([op.outputs[0]], np.int32)


def _graph_input(model, subgraph, op, attrs):
    subgraph.inputs = np.asarray(list(subgraph.inputs) + [op.outputs[0]], np.int32)


def _unnamed_output(model, subgraph, op, attrs):
    subgraph.tensors[op.outputs[0]].name = None
    return dict(attrs, K=0)


def _undecodable_name(model, subgraph, op, attrs):
    subgraph.tensors[op.outputs[0]].name = b"\xff\xfe weight"
    return dict(attrs, K=0)


HOSTILE = {
    "output-holds-constant-data": (_output_holds_data, "own an empty buffer"),
    "output-on-buffer-0": (_output_on_buffer_zero, "own an empty buffer"),
    "output-buffer-shared": (_output_shares_a_buffer, "own an empty buffer"),
    "decode-after-reader": (_moved_after_reader, "reads the decoded tensor before"),
    "second-writer": (_second_writer, "also writes the decoded tensor"),
    "output-is-graph-input": (_graph_input, "graph input"),
    "unnamed-output": (_unnamed_output, "<unnamed>"),
    "non-utf8-name": (_undecodable_name, "weight"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_decompress_rejects_hostile_decode_nodes(compressed, case):
    edit, match = HOSTILE[case]
    bad = edit_decode_node(compressed[0], edit)
    with pytest.raises(ValueError, match=match):
        decompress(bad)


@pytest.mark.parametrize("what", ["buffer", "opcode", "input"])
def test_references_out_of_range_are_value_errors(compressed, what):
    def edit(model, subgraph, op, attrs):
        if what == "buffer":
            subgraph.tensors[op.inputs[0]].buffer = 10**6
        elif what == "opcode":
            op.opcodeIndex = 999
        else:
            op.inputs = np.asarray([op.inputs[0], 10**6], np.int32)
    bad = edit_decode_node(compressed[0], edit)
    with pytest.raises(ValueError, match="names buffer|operator code|tensor 1000000"):
        decompress(bad)
