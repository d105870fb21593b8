"""The TfqCodebookDecode C kernel: decode logic via ctypes, the C API entry point, and the interpreter path."""

import ctypes
import math
import re
import types

import numpy as np
import pytest
from flatbuffers import flexbuffers

from tests.tflite_export import test_codebook
from tests.tflite_export.test_codebook import HOSTILE, MALFORMED, edit_decode_node
from tflite_export import flatbuffer as fb
from tflite_export import kernels, make_interpreter, run_raw
from tflite_export._kernel_layout import attributes
from tflite_export.codebook import decompress, load_interpreter, pack_indices
from tfq_ext._compat import tf_interpreter_with_custom_ops
from tfq_ext._keras import tf

# Session fixtures shared with test_codebook (built once per session).
codebook_int8, compressed, malformed_files = (test_codebook.codebook_int8, test_codebook.compressed,
                                              test_codebook.malformed_files)


@pytest.fixture(scope="module")
def libraries():
    try:
        return kernels.load_library("tflite"), kernels.load_library("c_api_mock")
    except kernels.KernelBuildError as exc:  # the package's own build step must work wherever tests run
        pytest.fail(f"the TfqCodebookDecode kernel did not build: {exc}")


def _call(function, options, packed, codebook, out_len):
    options = bytes(options)
    out = np.zeros(out_len, np.int8)
    err = ctypes.create_string_buffer(512)
    packed_array = np.frombuffer(packed, np.uint8) if packed else np.zeros(1, np.uint8)
    codebook = np.ascontiguousarray(codebook, np.int8)
    status = function(options, ctypes.c_size_t(len(options)), packed_array.ctypes.data_as(ctypes.c_void_p),
                      ctypes.c_size_t(len(packed)), codebook.ctypes.data_as(ctypes.c_void_p),
                      ctypes.c_size_t(codebook.size), out.ctypes.data_as(ctypes.c_void_p),
                      ctypes.c_size_t(out_len), err, ctypes.c_size_t(len(err)))
    return status, out, err.value.decode()


def _case(a, d, b, bits, k, seed=0):
    rng = np.random.default_rng(seed)
    codebook = rng.integers(-128, 128, size=(k, d)).astype(np.int8)
    indices = rng.integers(0, k, size=a * b)
    expected = codebook[indices].reshape(a, b, d).transpose(0, 2, 1).ravel()
    options = flexbuffers.Dumps({"A": a, "d": d, "B": b, "bits": bits, "K": k})
    return options, pack_indices(indices, bits), codebook, expected


LAYOUTS = [(32, 9, 16, 4, 16), (4096, 8, 1, 5, 32), (1, 9, 64, 3, 5), (100, 1, 1, 1, 2), (7, 3, 5, 8, 256),
           (3, 2, 3, 7, 100)]


@pytest.mark.parametrize("entry", ["tfq_codebook_decode_buffer", "tfq_mock_c_api_run"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=["x".join(map(str, v)) for v in LAYOUTS])
def test_c_decode_matches_python(libraries, entry, layout):
    library = libraries[0] if entry == "tfq_codebook_decode_buffer" else libraries[1]
    options, packed, codebook, expected = _case(*layout)
    status, out, err = _call(getattr(library, entry), options, packed, codebook, expected.size)
    assert (status, err) == (0, "")
    assert np.array_equal(out, expected)


def _valid():
    return _case(4, 3, 2, 3, 5, seed=1)


def _with(**changes):
    options, packed, codebook, expected = _valid()
    attrs = dict(flexbuffers.Loads(options), **changes.pop("attrs", {}))
    return (changes.get("options", flexbuffers.Dumps(attrs)), changes.get("packed", packed),
            changes.get("codebook", codebook), changes.get("out_len", expected.size))


C_ERRORS = {
    "truncated-indices": (lambda: _with(packed=_valid()[1][:-1]), "packed indices have"),
    "long-indices": (lambda: _with(packed=_valid()[1] + b"\0"), "packed indices have"),
    "index-out-of-range": (lambda: _with(packed=pack_indices([7] * 8, 3)), "out of range"),
    "short-codebook": (lambda: _with(codebook=_valid()[2][:4]), "codebook has"),
    "wrong-output": (lambda: _with(out_len=23), "output has"),
    "A-zero": (lambda: _with(attrs={"A": 0}), "A=0"),
    "B-negative": (lambda: _with(attrs={"B": -2}), "B=-2"),
    "bits-0": (lambda: _with(attrs={"bits": 0}), "bits"),
    "bits-9": (lambda: _with(attrs={"bits": 9}), "bits"),
    "K-too-big": (lambda: _with(attrs={"K": 9}), "K must be"),
    "huge-extent": (lambda: _with(attrs={"A": 2**40}), "below 2\\*\\*31"),
    "float-attribute": (lambda: _with(attrs={"d": 3.0}), "must be an integer"),
    "string-attribute": (lambda: _with(attrs={"d": "3"}), "must be an integer"),
    "missing-attribute": (lambda: _with(options=flexbuffers.Dumps({"A": 4, "d": 3, "B": 2, "bits": 3})),
                          "lack attribute K"),
    "not-a-map": (lambda: _with(options=flexbuffers.Dumps([4, 3, 2, 3, 5])), "map"),
    "empty-options": (lambda: _with(options=b""), "FlexBuffer"),
    "garbage-options": (lambda: _with(options=b"\x00\x01\x02\x03\xff\x25\x01"), "custom options"),
}


@pytest.mark.parametrize("entry", ["tfq_codebook_decode_buffer", "tfq_mock_c_api_run"])
@pytest.mark.parametrize("case", list(C_ERRORS))
def test_c_decode_rejects_bad_input(libraries, entry, case):
    library = libraries[0] if entry == "tfq_codebook_decode_buffer" else libraries[1]
    make, match = C_ERRORS[case]
    status, _, err = _call(getattr(library, entry), *make())
    assert status != 0
    assert re.search(match, err), err


def test_c_options_parser_survives_random_bytes(libraries):
    """Random and bit-flipped options never crash and never pass with wrong sizes."""
    function = libraries[0].tfq_codebook_decode_buffer
    rng = np.random.default_rng(0)
    options, packed, codebook, expected = _valid()
    results = []
    for trial in range(400):
        if trial % 2:
            raw = rng.integers(0, 256, size=rng.integers(0, 64)).astype(np.uint8).tobytes()
        else:
            mutated = bytearray(options)
            for _ in range(rng.integers(1, 4)):
                mutated[rng.integers(len(mutated))] = rng.integers(256)
            raw = bytes(mutated)
        status, out, err = _call(function, raw, packed, codebook, expected.size)
        results.append(status)
        if status == 0:  # a harmless flip (e.g. in an unused byte) must still decode correctly
            assert np.array_equal(out, expected)
        else:
            assert err
    assert results.count(0) < len(results)


# --- the kernel inside TensorFlow's interpreter -----------------------------------------------------------


@pytest.fixture(scope="module")
def registerer(libraries):
    return kernels.registerer()


@pytest.fixture(scope="module")
def probe(digits):
    return digits.x_test[:16]


def test_custom_op_path_matches_decompressed_and_original(compressed, codebook_int8, registerer, probe):
    content, _ = compressed
    # Same kernels everywhere (XNNPACK off): bit-exact
    with_kernel = make_interpreter(content, custom_op_registerers=[registerer], use_xnnpack=False)
    dense = make_interpreter(decompress(content), use_xnnpack=False)
    original = make_interpreter(codebook_int8, use_xnnpack=False)
    out_kernel = run_raw(None, probe, interpreter=with_kernel)
    assert np.array_equal(out_kernel, run_raw(None, probe, interpreter=dense))
    assert np.array_equal(out_kernel, run_raw(None, probe, interpreter=original))
    # With XNNPACK the decoded layers run on TFLite's builtin kernels, whose rounding differs from XNNPACK's
    # by at most a couple of steps on these models; the decompressed file is XNNPACK-for-XNNPACK identical.
    xnn_kernel = run_raw(None, probe, interpreter=make_interpreter(content, custom_op_registerers=[registerer]))
    xnn_dense = run_raw(decompress(content), probe)
    assert np.array_equal(xnn_dense, run_raw(codebook_int8, probe))
    assert np.abs(xnn_kernel.astype(int) - xnn_dense.astype(int)).max() <= 2


def test_load_interpreter_both_ways(compressed, codebook_int8, registerer, probe, tmp_path):
    content, _ = compressed
    path = tmp_path / "model.tflite"
    path.write_bytes(content)
    expected = run_raw(None, probe, interpreter=make_interpreter(codebook_int8, use_xnnpack=False))
    for use_kernel in (False, True):
        interpreter = load_interpreter(str(path), use_kernel=use_kernel, use_xnnpack=False)
        assert np.array_equal(run_raw(None, probe, interpreter=interpreter), expected)
    plain = load_interpreter(codebook_int8)
    assert np.array_equal(run_raw(None, probe, interpreter=plain), run_raw(codebook_int8, probe))


# Which stage reports each malformed file: Prepare (allocate_tensors) or Eval (invoke).
KERNEL_STAGE = {"index-out-of-range": "invoke"}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_kernel_rejects_malformed_files(malformed_files, registerer, probe, case):
    content = malformed_files[case]
    if case == "indices-shorter-than-shape":
        # TFLite's own loader refuses a buffer smaller than its tensor before any kernel runs
        with pytest.raises(ValueError, match="invalidly specified in schema"):
            make_interpreter(content, custom_op_registerers=[registerer], use_xnnpack=False)
        return
    match = "TfqCodebookDecode: expected 2 inputs" if case == "one-input" else "TfqCodebookDecode: "
    with pytest.raises(RuntimeError, match=match):
        interpreter = make_interpreter(content, custom_op_registerers=[registerer], use_xnnpack=False)
        assert KERNEL_STAGE.get(case) == "invoke", "Prepare should have failed"
        run_raw(None, probe[:1], interpreter=interpreter)


def test_library_is_cached_and_named(libraries):
    path = kernels.build_library("tflite")
    assert path.exists() and path.name.startswith("libtfq_tflite-")
    assert kernels.build_library("tflite") == path  # up to date: not rebuilt
    assert kernels.registerer() == kernels.REGISTERER == "TfqCodebookDecodeRegister"
    with pytest.raises(ValueError, match="`kind` must be one of"):
        kernels.build_library("cuda")
    assert math.isfinite(path.stat().st_size)



# --- decode nodes that would write into the model or run after a reader (through TFLite itself) ----------


def _constant_output(model, subgraph, op, attrs):
    """The decode output gets a constant buffer of the right size: TFLite maps it read-only from the model."""
    HOSTILE["output-holds-constant-data"][0](model, subgraph, op, attrs)


def _constant_output_with_odd_name(model, subgraph, op, attrs):
    _constant_output(model, subgraph, op, attrs)
    subgraph.tensors[op.outputs[0]].name = b"\xff\xfe weight"


def _variable_output(model, subgraph, op, attrs):
    subgraph.tensors[op.outputs[0]].isVariable = True


def _two_decode_writers(model, subgraph, op, attrs):
    """The next decode node writes this one's output too (TFLite itself refuses a node whose output is one of
    its own inputs, HOSTILE's "second-writer")."""
    decode = [o for o in subgraph.operators if fb.op_name(model, o) == "TfqCodebookDecode"]
    decode[1].outputs = np.asarray([op.outputs[0]], np.int32)


# Edit -> what Prepare reports. HOSTILE cases that are harmless to the kernel (an output on buffer 0 or sharing
# an empty buffer is still an arena tensor) are left to decompress; a graph input is checked by the C API entry
# point and by the Python readers (TfLiteContext lists no graph inputs, see tfq_codebook_decode_tflite.cc).
KERNEL_HOSTILE = {
    "constant-output": (_constant_output, "holds constant data from the model"),
    "constant-output-odd-name": (_constant_output_with_odd_name, r"\('\?\? weight'\): the output tensor holds"),
    "variable-output": (_variable_output, "variable tensor|allocation type 3"),
    "decode-after-reader": (HOSTILE["decode-after-reader"][0],
                            r"node 1 \(step 1 of the operator order\) reads the decoded tensor 10 before"),
    "two-decode-writers": (_two_decode_writers, r"node 4 \(step 4 of the operator order\) also writes the decoded "
                                                r"tensor 10"),
}


@pytest.fixture(scope="module")
def kernel_hostile(compressed):
    return {case: edit_decode_node(compressed[0], edit) for case, (edit, _) in KERNEL_HOSTILE.items()}


@pytest.mark.parametrize("use_xnnpack", [False, True], ids=["builtin", "xnnpack"])
@pytest.mark.parametrize("case", list(KERNEL_HOSTILE))
def test_kernel_prepare_rejects_hostile_graphs(kernel_hostile, registerer, case, use_xnnpack):
    content = kernel_hostile[case]
    pristine = bytes(bytearray(content))  # a copy: `content` itself is what the interpreter reads
    with pytest.raises(RuntimeError, match=KERNEL_HOSTILE[case][1]) as info:
        make_interpreter(content, custom_op_registerers=[registerer], use_xnnpack=use_xnnpack)
    assert "TfqCodebookDecode" in str(info.value) and "failed to prepare" in str(info.value)
    assert content == pristine  # the caller's immutable bytes were not written


def test_kernel_checks_the_operator_order_of_the_file(kernel_hostile):
    """XNNPACK replaces the reader by a DELEGATE node and orders the partitions by data dependency, so the decode
    node of a misordered file would run first again; Prepare still refuses it, as the Python readers do."""
    with pytest.raises(ValueError, match="node 1 reads the decoded tensor before this node writes it"):
        decompress(kernel_hostile["decode-after-reader"])


@pytest.mark.parametrize("case", ["constant-output", "decode-after-reader"])
def test_kernel_rejects_hostile_memory_mapped_files(kernel_hostile, registerer, probe, case, tmp_path):
    """With model_path TFLite maps the file read-only: writing a constant would be SIGSEGV, not an error."""
    path = tmp_path / "hostile.tflite"
    path.write_bytes(kernel_hostile[case])
    interpreter = tf_interpreter_with_custom_ops()(
        model_path=str(path), custom_op_registerers=[registerer],
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    with pytest.raises(RuntimeError, match=KERNEL_HOSTILE[case][1]):
        interpreter.allocate_tensors()
    assert path.read_bytes() == kernel_hostile[case]


def test_kernel_accepts_its_own_files_from_disk(compressed, registerer, probe, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(compressed[0])
    interpreter = tf_interpreter_with_custom_ops()(model_path=str(path), custom_op_registerers=[registerer])
    interpreter.allocate_tensors()
    expected = run_raw(None, probe, interpreter=make_interpreter(compressed[0], custom_op_registerers=[registerer]))
    assert np.array_equal(run_raw(None, probe, interpreter=interpreter), expected)


def test_graph_input_output_is_refused_before_the_kernel_runs(compressed):
    bad = edit_decode_node(compressed[0], HOSTILE["output-is-graph-input"][0])
    with pytest.raises(ValueError, match="graph input"):
        load_interpreter(bad, use_kernel=True)


# --- the C API entry point in a mock graph ----------------------------------------------------------------

ARENA, ARENA_PERSISTENT, DYNAMIC, MMAP_RO, PERSISTENT_RO, CUSTOM = 2, 3, 4, 1, 5, 6
READER = [2, 2, 3, 1, 4]  # reads the decode output (tensor 2) and tensor 3, writes 4


def _mock_graph(library, graph, *, allocation=ARENA, variable=False, inputs=(3,), subgraphs=1, own=0):
    options, packed, codebook, expected = _valid()
    options = bytes(options)
    out = np.full(expected.size, 77, np.int8)
    err = ctypes.create_string_buffer(1024)
    graph_array = (ctypes.c_int * len(graph))(*graph)
    input_array = (ctypes.c_int * max(1, len(inputs)))(*inputs)
    packed_array = np.frombuffer(packed, np.uint8)
    status = library.tfq_mock_c_api_run_graph(
        options, ctypes.c_size_t(len(options)), packed_array.ctypes.data_as(ctypes.c_void_p),
        ctypes.c_size_t(len(packed)), codebook.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(codebook.size),
        out.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(out.size), allocation, int(variable), graph_array,
        len(graph), input_array, len(inputs), subgraphs, own, err, ctypes.c_size_t(len(err)))
    return status, out, expected, err.value.decode()


MOCK_GRAPHS = {
    # id: (graph, keyword arguments, error or None)
    "decode-then-reader": ([-1, *READER], {}, None),
    "arena-persistent-output": ([-1, *READER], {"allocation": ARENA_PERSISTENT}, None),
    "dynamic-output": ([-1, *READER], {"allocation": DYNAMIC}, None),
    "third-of-three-subgraphs": ([-1, *READER], {"subgraphs": 3, "own": 2}, None),
    "mmap-output": ([-1, *READER], {"allocation": MMAP_RO}, "holds constant data from the model"),
    "persistent-ro-output": ([-1, *READER], {"allocation": PERSISTENT_RO}, "kTfLitePersistentRo"),
    "custom-allocation-output": ([-1, *READER], {"allocation": CUSTOM}, "kTfLiteCustom"),
    "variable-output": ([-1, *READER], {"variable": True}, "variable tensor"),
    "graph-input-output": ([-1, *READER], {"inputs": (3, 2)}, "graph input"),
    "reader-first": ([*READER, -1], {}, r"node 0 \(step 0 of the operator order\) reads the decoded tensor 2 "
                                        r"before"),
    "second-writer": ([-1, 1, 3, 1, 2], {}, "node 1 .* also writes the decoded tensor 2"),
    "reader-writes-it-back": ([-1, 1, 2, 1, 2], {}, "also writes the decoded tensor 2"),
    "two-decode-nodes": ([-1, -1, *READER], {}, "node 1 .* also writes the decoded tensor 2"),
    "decode-node-twice-in-plan": ([-1, -2, *READER], {}, r"appears twice in the execution plan \(steps 0 and 1\)"),
}


@pytest.mark.parametrize("case", list(MOCK_GRAPHS))
def test_c_api_prepare_checks_the_graph(libraries, case):
    graph, kwargs, error = MOCK_GRAPHS[case]
    status, out, expected, err = _mock_graph(libraries[1], graph, **kwargs)
    if error is None:
        assert (status, err) == (0, "")
        assert np.array_equal(out, expected)
    else:
        assert status == 1, err  # -1 would mean: a subgraph left in the delegate context, or output written
        assert re.search(error, err), err
        assert err.startswith("TfqCodebookDecode: output tensor 2 ('weight'): ")
        assert np.all(out == 77)


# --- custom options: the C parser accepts what the Python reader accepts -----------------------------------

_ATTRS = ("A", "d", "B", "bits", "K")
_BASE = {"A": 4, "d": 3, "B": 2, "bits": 3, "K": 5}
_BASE_VALUES = (4, 3, 2, 3, 5)


def _c_options(library, raw):
    raw = bytes(raw)
    values = (ctypes.c_int64 * 5)()
    err = ctypes.create_string_buffer(512)
    status = library.tfq_codebook_parse_options_buffer(raw, ctypes.c_size_t(len(raw)), values, err,
                                                       ctypes.c_size_t(len(err)))
    return (tuple(values) if status == 0 else None), err.value.decode()


def _python_options(raw):
    """The project's Python reader of decode-node options (tflite_export._kernel_layout.attributes)."""
    op = types.SimpleNamespace(customOptions=np.frombuffer(bytes(raw), np.uint8))
    try:
        values = attributes(op, "node")
    except ValueError:
        return None
    return tuple(values[k] for k in _ATTRS)


class _OutOfBounds(Exception):
    """Python's FlexBuffer decoder read outside the buffer (its slicing would wrap or shorten the read)."""


class _BoundedBytes(bytes):
    def __getitem__(self, key):
        n = len(self)
        if isinstance(key, slice):
            start = 0 if key.start is None else key.start
            stop = n if key.stop is None else key.stop
            if not (0 <= start <= n and 0 <= stop <= n):
                raise _OutOfBounds(f"bytes [{start}:{stop}] of {n}")
        elif not 0 <= key < n:
            raise _OutOfBounds(f"byte {key} of {n}")
        return super().__getitem__(key)


class _BoundedBuf(flexbuffers.Buf):
    def Slice(self, offset):  # noqa: N802  (flexbuffers' name)
        if self._offset + offset < 0:
            raise _OutOfBounds(f"position {self._offset + offset}")
        return _BoundedBuf(self._buf, self._offset + offset)


def _bounded_options(raw):
    """flexbuffers.Loads plus the attribute rule of `attributes`, with every byte access of the decoder checked:
    the reference the C parser matches. Returns the attributes, None (rejected) or "out-of-bounds"."""
    raw = bytes(raw)
    try:
        if len(raw) < 3:
            return None
        width, packed = raw[-1], raw[-2]
        if width + 2 > len(raw):
            raise _OutOfBounds("root")
        value = flexbuffers.Ref.PackedType(_BoundedBuf(_BoundedBytes(raw), len(raw) - 2 - width), width,
                                           packed).Value
    except _OutOfBounds:
        return "out-of-bounds"
    except Exception:  # what makes Loads fail, as in `attributes`
        return None
    if not isinstance(value, dict) or any(not isinstance(value.get(k), int) or isinstance(value.get(k), bool)
                                          for k in _ATTRS):
        return None
    a, d, b, bits, k = (value[key] for key in _ATTRS)
    if min(a, d, b) < 1 or not 1 <= bits <= 8 or not 1 <= k <= 1 << bits or a * d * b > 2**31 - 1 \
            or k * d > 2**31 - 1:
        return None
    return a, d, b, bits, k


def _dumps(**changes):
    return bytes(flexbuffers.Dumps({**_BASE, **changes}))


def _build(*entries):
    """A map written entry by entry: (method, key, value[, byte width])."""
    builder = flexbuffers.Builder()
    with builder.Map():
        for method, key, *args in entries:
            if method == "Null":
                builder.Key(key)
                builder.Null()
            else:
                getattr(builder, method)(key, *args)
    return bytes(builder.Finish())


def _base_entries(**replace):
    return [replace.get(k, ("Int", k, v)) for k, v in _BASE.items()]


def _patched(raw, old, new):
    assert raw.count(old) == 1, (raw, old)
    return raw.replace(old, new)


def _root_map(raw):
    """Position and byte width of the root map."""
    width = raw[-1]
    root = len(raw) - 2 - width
    return root - int.from_bytes(raw[root:root + width], "little"), 1 << (raw[-2] & 3)


def _set_key_count(raw, count):
    """Rewrites the size field of the root map's key vector."""
    data = bytearray(raw)
    m, w = _root_map(raw)
    keys_width = int.from_bytes(data[m - 2 * w:m - w], "little")
    keys = m - 3 * w - int.from_bytes(data[m - 3 * w:m - 2 * w], "little")
    data[keys - keys_width:keys] = count.to_bytes(keys_width, "little")
    return bytes(data)


def _set_key_width(raw, width):
    data = bytearray(raw)
    m, w = _root_map(raw)
    data[m - 2 * w:m - w] = width.to_bytes(w, "little")
    return bytes(data)


def _nested(depth):
    value = 1
    for _ in range(depth):
        value = [value]
    return value


def _string_size(raw, text, size):
    """Rewrites the size byte in front of a string value."""
    data = bytearray(raw)
    at = raw.index(text.encode() + b"\0")
    assert data[at - 1] == len(text)
    data[at - 1] = size
    return bytes(data)


def _vector_size(raw, size):
    """Rewrites the size byte of the only one-element vector [1] (bytes 01 01 04: size, element, type)."""
    return _patched(raw, b"\x01\x01\x04", bytes([size]) + b"\x01\x04")


ACCEPT, REJECT = "accept", "reject"
# id -> (options bytes, C and Python outcome: ACCEPT with the base values, REJECT, or a tuple of values)
OPTION_CASES = {
    "plain": (lambda: _dumps(), ACCEPT),
    "extra-int-key": (lambda: _dumps(zz=1), ACCEPT),
    "extra-nested-values": (lambda: _dumps(zz=[1, "x", 2.5, {"q": b"\x00\x01"}, None, True, [[]]]), ACCEPT),
    "extra-typed-vectors": (lambda: _build(*_base_entries(), ("TypedVectorFromElements", "t", [1, 2, 3]),
                                           ("TypedVectorFromElements", "u", [1.5, 2.5]),
                                           ("FixedTypedVectorFromElements", "v", [1, 2, 3]),
                                           ("TypedVectorFromElements", "w", [True, False]),
                                           ("IndirectFloat", "x", 1.5), ("Blob", "y", b"\xff\x00")), ACCEPT),
    "extra-key-vector-of-keys": (lambda: _build(*_base_entries(), ("TypedVectorFromElements", "k", ["p", "q"])),
                                 ACCEPT),
    "extra-non-ascii-key": (lambda: _patched(_dumps(zz=1), b"zz\x00", b"z\xe9\x00"), REJECT),
    "extra-string-not-utf8": (lambda: _patched(_dumps(zz="ab"), b"ab\x00", b"\xff\xfe\x00"), REJECT),
    "extra-string-surrogate": (lambda: _patched(_dumps(zz="abc"), b"abc\x00", b"\xed\xa0\x80\x00"), REJECT),
    "extra-string-utf8": (lambda: _dumps(zz="h\u00e9llo \u20ac \U0001f600"), ACCEPT),
    "extra-key-unterminated": (lambda: _patched(_dumps(zz=1), b"zz\x00", b"zzz"), REJECT),
    "extra-float-1-byte-wide": (lambda: _patched(_dumps(zz=1), b"\x04\x04\x04\x04\x04\x04", b"\x04" * 5 + b"\x0c"),
                                REJECT),
    "missing-K": (lambda: flexbuffers.Dumps({k: v for k, v in _BASE.items() if k != "K"}), REJECT),
    "empty-map": (lambda: flexbuffers.Dumps({}), REJECT),
    "bool-A": (lambda: _dumps(A=True), REJECT),
    "float-A": (lambda: _dumps(A=4.0), REJECT),
    "string-A": (lambda: _dumps(A="4"), REJECT),
    "null-A": (lambda: _build(*_base_entries(A=("Null", "A"))), REJECT),
    "vector-A": (lambda: _dumps(A=[4]), REJECT),
    "uint-A": (lambda: _build(*_base_entries(A=("UInt", "A", 4))), ACCEPT),
    "uint-A-above-2**63": (lambda: _build(*_base_entries(A=("UInt", "A", 2**64 - 1))), REJECT),
    "indirect-int-d": (lambda: _build(*_base_entries(d=("IndirectInt", "d", 3))), ACCEPT),
    "indirect-uint-d-8-bytes": (lambda: _build(*_base_entries(d=("IndirectUInt", "d", 3, 8))), ACCEPT),
    "negative-B": (lambda: _dumps(B=-2), REJECT),
    "bits-9": (lambda: _dumps(bits=9), REJECT),
    "K-above-2**bits": (lambda: _dumps(K=9), REJECT),
    "A*d*B-at-2**31": (lambda: _dumps(A=2**30, d=2, B=1), REJECT),
    "A*d*B-below-2**31": (lambda: _dumps(A=2**31 - 1, d=1, B=1), (2**31 - 1, 1, 1, 3, 5)),
    "duplicate-key-last-int": (lambda: _build(*_base_entries(A=("Bool", "A", True)), ("Int", "A", 7)),
                               (7, 3, 2, 3, 5)),
    "duplicate-key-last-bool": (lambda: _build(*_base_entries(), ("Bool", "A", True)), REJECT),
    "values-2-bytes-wide": (lambda: _dumps(zz=300), ACCEPT),
    "values-8-bytes-wide": (lambda: _dumps(zz=2**40), ACCEPT),
    "int-forced-8-bytes": (lambda: _build(*_base_entries(K=("Int", "K", 5, 8))), ACCEPT),
    "fewer-keys-than-values": (lambda: _set_key_count(_dumps(zz=1), 5), ACCEPT),  # zip stops at the shorter
    "key-vector-width-3": (lambda: _set_key_width(_dumps(), 3), REJECT),
    "key-vector-width-0": (lambda: _set_key_width(_dumps(), 0), REJECT),
    "root-width-3": (lambda: _dumps()[:-1] + b"\x03", REJECT),
    "root-width-16": (lambda: _dumps()[:-1] + b"\x10", REJECT),
    "root-not-a-map": (lambda: flexbuffers.Dumps([4, 3, 2, 3, 5]), REJECT),
    "root-int": (lambda: flexbuffers.Dumps(4), REJECT),
    "truncated-end": (lambda: _dumps()[:-1], REJECT),
    "truncated-start": (lambda: _dumps()[1:], REJECT),
    "truncated-half": (lambda: _dumps()[:len(_dumps()) // 2], REJECT),
    "empty": (lambda: b"", REJECT),
    "two-bytes": (lambda: b"\x00\x01", REJECT),
    "nested-64-deep": (lambda: _dumps(zz=_nested(62)), ACCEPT),
}
# Cases where Python's decoder reads outside the buffer (`_bounded_options` says "out-of-bounds") and accepts
# what it read there; the C parser rejects them. And the C parser's nesting limit, which Python lacks.
DISAGREEMENTS = {
    "vector-size-past-end": lambda: _vector_size(_dumps(zz=[1]), 200),  # Python: the vector reads as []
    "string-size-past-end": lambda: _string_size(_dumps(zz="abc"), "abc", 100),  # Python: a shortened string
    "nested-65-deep": lambda: _dumps(zz=_nested(64)),
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_c_options_parser_agrees_with_python(libraries, case):
    make, expected = OPTION_CASES[case]
    raw = make()
    expected = _BASE_VALUES if expected == ACCEPT else None if expected == REJECT else expected
    c, err = _c_options(libraries[0], raw)
    assert (c, _python_options(raw)) == (expected, expected), err
    assert _bounded_options(raw) in ((expected,) if expected else (None, "out-of-bounds"))
    assert (err == "") == (c is not None)


@pytest.mark.parametrize("case", list(DISAGREEMENTS))
def test_c_options_parser_is_stricter_on_reads_outside_the_buffer(libraries, case):
    raw = DISAGREEMENTS[case]()
    c, err = _c_options(libraries[0], raw)
    assert c is None and err
    assert _python_options(raw) == _BASE_VALUES
    assert _bounded_options(raw) == ("out-of-bounds" if "past-end" in case else _BASE_VALUES)


def test_c_options_parser_matches_bounded_python_on_mutations(libraries):
    """On byte-flipped options the C parser gives what Python's decoder gives with every access bounds-checked;
    the plain decoder differs only where it read outside the buffer."""
    seeds = [_dumps(), _dumps(zz=[1, "x", 2.5, {"q": b"\x00\x01"}, None, True]), _dumps(big=2**40, s="h\u00e9"),
             OPTION_CASES["extra-typed-vectors"][0]()]
    rng = np.random.default_rng(0)
    outcomes = {"accepted": 0, "rejected": 0, "out-of-bounds": 0}
    for trial in range(3000):
        data = bytearray(seeds[trial % len(seeds)])
        for _ in range(rng.integers(1, 4)):
            data[rng.integers(len(data))] = rng.integers(256)
        raw = bytes(data)
        reference = _bounded_options(raw)
        c, err = _c_options(libraries[0], raw)
        if reference == "out-of-bounds":
            outcomes["out-of-bounds"] += 1
            assert c is None, (raw, err)
            continue
        assert c == reference, (raw, err)
        assert _python_options(raw) == reference, raw
        outcomes["accepted" if c else "rejected"] += 1
    assert min(outcomes.values()) > 100, outcomes
