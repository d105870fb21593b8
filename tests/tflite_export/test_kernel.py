"""The TfqCodebookDecode C kernel: decode logic via ctypes, the C API entry point, and the interpreter path."""

import ctypes
import math
import re

import numpy as np
import pytest
from flatbuffers import flexbuffers

from tests.tflite_export import test_codebook
from tests.tflite_export.test_codebook import MALFORMED
from tflite_export import kernels, make_interpreter, run_raw
from tflite_export.codebook import decompress, load_interpreter, pack_indices

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
