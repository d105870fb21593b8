"""The graph ops' TFLite C API entry point (tflite_export/kernels/tfq_graph_ops_c_api.c), run in the C API stand-in
(mock_tflite_c_api.c): the same int8 output as the core (kernels.graph_op_native), and an error naming the problem
for bad input."""

import ctypes
import re

import numpy as np
import pytest

from tflite_export import kernels

SUM, MEAN, GCN, NORM = kernels.GRAPH_OPS
RUNTIME, MMAP_RO, PERSISTENT_RO = 0, 1, 5  # how num_segments reaches the op (mock's num_segments_constant)
SENTINEL = 77

# tfq_mock_c_api_run_graph_op faults and variants (MOCK_FAULT_* / MOCK_VARIANT_* in mock_tflite_c_api.c)
FIVE_INPUTS, IDS_FLOAT, DATA_UINT8, OUTPUT_NO_QUANT, OUTPUT_PER_CHANNEL, OPTIONS, OUTPUT_IS_INPUT = range(1, 8)
OUTPUT_MMAP, BAD_INPUT_INDEX, TOO_FEW_INPUTS, DATA_BYTES, OUTPUT_VARIABLE, NO_PREPARE = range(8, 14)
NUM_SEGMENTS_2, IDS_2D, GATHER_LONGER, OUTPUT_MISSING, DATA_RANK0, NEGATIVE_DIM, RESIZE_FAILS = range(14, 21)
HUGE_SHAPE = 21
RANK3, OPTIONAL_SLOT, OUTPUT_SIZED = 30, 31, 32


@pytest.fixture(scope="module")
def lib():
    try:
        library = kernels.load_library("c_api_mock")
    except kernels.KernelBuildError as exc:
        pytest.fail(f"the C API mock library did not build: {exc}")
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p
    library.tfq_mock_c_api_run_graph_op.argtypes = [
        ctypes.c_char_p, ptr, i64, i64, ptr, i64, ptr, i32, ctypes.c_int, ctypes.c_double, i32, ctypes.c_double,
        i32, ptr, i64, ctypes.POINTER(i64), ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    library.tfq_mock_c_api_run_graph_op.restype = ctypes.c_int
    library.TfqGraphOpOperator.argtypes = [ctypes.c_char_p]
    library.TfqGraphOpOperator.restype = ctypes.c_void_p
    return library


def _f32(x):
    return float(np.float32(x))  # TFLite keeps per-tensor scales as float


def run_c_api(lib, op, data, ids, num_segments, *, gather=None, constant=MMAP_RO, in_scale=0.05, in_zero=0,
              out_scale=0.05, out_zero=0, fault=0, capacity=None):
    """(status, output [rows, inner] or None, error text) of one node run through the C API in the mock."""
    data = np.ascontiguousarray(data, np.int8)
    assert data.ndim == 2
    ids = np.ascontiguousarray(ids, np.int32).reshape(-1)
    gather = None if gather is None else np.ascontiguousarray(gather, np.int32).reshape(-1)
    if gather is not None and gather.size == 0:
        gather = np.zeros(1, np.int32)[:0]  # present but empty: still a valid (non-NULL) pointer
    rows, inner = data.shape
    out_rows_expected = rows if op == NORM else max(int(num_segments), 0)
    if capacity is None:
        capacity = out_rows_expected * inner
    out = np.full(max(capacity, 1), SENTINEL, np.int8)
    out_rows = ctypes.c_int64(-7)
    err = ctypes.create_string_buffer(1024)
    status = lib.tfq_mock_c_api_run_graph_op(
        None if op is None else op.encode(), data.ctypes.data if data.size else None, rows, inner,
        ids.ctypes.data if ids.size else None, ids.size, None if gather is None else gather.ctypes.data,
        int(num_segments), constant, in_scale, in_zero, out_scale, out_zero, out.ctypes.data, capacity,
        ctypes.byref(out_rows), fault, err, len(err))
    text = err.value.decode("utf-8", "replace")
    if status != 0:
        assert np.all(out == SENTINEL), "a failed run wrote the output"
        return status, None, text
    assert out_rows.value == out_rows_expected, text
    return status, out[:out_rows.value * inner].reshape(out_rows.value, inner), text


def _random_case(rng, op, *, with_gather, edges=None, empty=False):
    rows = int(rng.integers(1, 9))
    inner = int(rng.integers(1, 7))
    if op in (GCN, NORM):
        segments = rows
    else:
        segments = int(rng.integers(1, 10)) + (3 if empty else 0)
    if edges is None:
        edges = int(rng.integers(1, 40)) if (with_gather or op == NORM) else rows
    if not with_gather and op in (SUM, MEAN):
        rows = edges  # one data row per edge
    high = max(1, segments // 2) if empty else segments  # empty: the upper segments get no edge
    ids = rng.integers(0, high, size=edges).astype(np.int32)
    gather = rng.integers(0, rows, size=edges).astype(np.int32) if with_gather and rows else None
    if with_gather and gather is None:
        gather = np.zeros(0, np.int32)
    data = rng.integers(-128, 128, size=(rows, inner)).astype(np.int8)
    scales = dict(in_scale=_f32(rng.uniform(0.005, 0.3)), in_zero=int(rng.integers(-128, 128)),
                  out_scale=_f32(rng.uniform(0.005, 0.3)), out_zero=int(rng.integers(-128, 128)))
    return data, ids, segments, gather, scales


def _gather_modes(op):
    return {SUM: (False, True), MEAN: (False, True), GCN: (True,), NORM: (False,)}[op]


CONSTANTS = [MMAP_RO, PERSISTENT_RO, RUNTIME]


@pytest.mark.parametrize("op", kernels.GRAPH_OPS)
def test_c_api_matches_core_on_random_inputs(lib, op):
    rng = np.random.default_rng(kernels.GRAPH_OPS.index(op))
    count = 0
    for trial in range(30):
        for with_gather in _gather_modes(op):
            constant = CONSTANTS[trial % 3]
            data, ids, segments, gather, scales = _random_case(rng, op, with_gather=with_gather,
                                                               empty=trial % 4 == 1)
            expected = kernels.graph_op_native(op, data, ids, segments, gather=gather, **scales)
            status, got, err = run_c_api(lib, op, data, ids, segments, gather=gather, constant=constant, **scales)
            assert (status, err) == (0, ""), (trial, with_gather, constant)
            np.testing.assert_array_equal(got, expected.reshape(got.shape))
            count += 1
    assert count >= 30


@pytest.mark.parametrize("op", kernels.GRAPH_OPS)
@pytest.mark.parametrize("constant", CONSTANTS)
def test_c_api_zero_edges(lib, op, constant):
    rng = np.random.default_rng(1)
    for with_gather in _gather_modes(op):
        data, ids, segments, gather, scales = _random_case(rng, op, with_gather=with_gather, edges=0)
        if op in (SUM, MEAN) and not with_gather:
            segments = 3  # no edges, no rows: every segment is empty
        expected = kernels.graph_op_native(op, data, ids, segments, gather=gather, **scales)
        status, got, err = run_c_api(lib, op, data, ids, segments, gather=gather, constant=constant, **scales)
        assert (status, err) == (0, "")
        np.testing.assert_array_equal(got, expected.reshape(got.shape))
        if op in (SUM, MEAN):  # every output row is the output zero point
            assert np.all(got == scales["out_zero"])


@pytest.mark.parametrize("constant", CONSTANTS)
def test_c_api_empty_segments_and_zero_segments(lib, constant):
    data = np.array([[10, -20], [30, 40], [-128, 127]], np.int8)
    ids = np.array([4, 4, 0], np.int32)
    for op in (SUM, MEAN):
        expected = kernels.graph_op_native(op, data, ids, 6, in_scale=0.1, in_zero=3, out_scale=0.2, out_zero=-5)
        status, got, err = run_c_api(lib, op, data, ids, 6, constant=constant, in_scale=_f32(0.1), in_zero=3,
                                     out_scale=_f32(0.2), out_zero=-5)
        assert (status, err) == (0, "")
        np.testing.assert_array_equal(got, expected)
        assert np.all(got[[1, 2, 3, 5]] == -5)
        # num_segments = 0 with no edges: an empty output
        status, got, err = run_c_api(lib, op, np.zeros((0, 2), np.int8), [], 0, constant=constant)
        assert (status, err) == (0, "") and got.shape == (0, 2)


@pytest.mark.parametrize("variant", [RANK3, OPTIONAL_SLOT, OUTPUT_SIZED])
@pytest.mark.parametrize("constant", [MMAP_RO, RUNTIME])
def test_c_api_valid_variants(lib, variant, constant):
    """Data [rows, 1, inner]; the gather slot present but optional (-1); an output that already has its final shape
    (a dynamic output must still get memory)."""
    rng = np.random.default_rng(variant)
    for op in kernels.GRAPH_OPS:
        with_gather = op == GCN
        data, ids, segments, gather, scales = _random_case(rng, op, with_gather=with_gather)
        expected = kernels.graph_op_native(op, data, ids, segments, gather=gather, **scales)
        status, got, err = run_c_api(lib, op, data, ids, segments, gather=gather, constant=constant, fault=variant,
                                     **scales)
        assert (status, err) == (0, ""), op
        np.testing.assert_array_equal(got, expected.reshape(got.shape))


def test_operator_per_name(lib):
    pointers = [lib.TfqGraphOpOperator(name.encode()) for name in kernels.GRAPH_OPS]
    assert all(pointers) and len(set(pointers)) == 4
    assert pointers == [lib.TfqGraphOpOperator(name.encode()) for name in kernels.GRAPH_OPS]  # created once
    for name in (b"TfqSegmentMax", b"", b"tfqsegmentsum", b"TfqSegmentSum ", b"TfqCodebookDecode"):
        assert lib.TfqGraphOpOperator(name) is None
    assert lib.TfqGraphOpOperator(None) is None
    status, _, err = run_c_api(lib, "TfqSegmentMax", np.zeros((1, 1)), [0], 1)
    assert status == 2 and "NULL" in err


def _bad(lib, op, *, expect, data=None, ids=None, segments=None, gather="default", **kwargs):
    data = np.arange(12, dtype=np.int8).reshape(4, 3) if data is None else data
    ids = np.array([0, 1, 1, 0], np.int32) if ids is None else ids
    segments = (4 if op in (GCN, NORM) else 2) if segments is None else segments
    if isinstance(gather, str):
        gather = np.array([3, 2, 1, 0], np.int32) if op == GCN else None
    status, _, err = run_c_api(lib, op, data, ids, segments, gather=gather, **kwargs)
    assert status == 1, (status, err)  # -1 would mean the kernel broke the mock's runtime contract
    assert re.search(expect, err), err
    return err


@pytest.mark.parametrize("op", kernels.GRAPH_OPS)
@pytest.mark.parametrize("constant", [MMAP_RO, RUNTIME])
def test_c_api_rejects_bad_indices(lib, op, constant):
    segments = 4 if op in (GCN, NORM) else 2
    err = _bad(lib, op, ids=[0, 1, segments, 0], constant=constant,
               expect=rf"segment id {segments} at position 2 is outside \[0, {segments}\)")
    assert err.startswith(op + ": ")
    _bad(lib, op, ids=[0, -1, 1, 0], constant=constant, expect=r"segment id -1 at position 1 is outside")
    _bad(lib, op, ids=[0, 2**31 - 1, 1, 0], constant=constant, expect=r"segment id 2147483647 at position 1")
    if op in (SUM, MEAN, GCN):
        _bad(lib, op, gather=[0, 4, 1, 2], constant=constant,
             expect=r"gather index 4 at position 1 is outside \[0, 4\)")
        _bad(lib, op, gather=[0, 1, -3, 2], constant=constant, expect=r"gather index -3 at position 2 is outside")


@pytest.mark.parametrize("op", [SUM, MEAN, GCN])
@pytest.mark.parametrize("constant", CONSTANTS)
def test_c_api_rejects_negative_num_segments(lib, op, constant):
    err = _bad(lib, op, segments=-3, constant=constant, expect=r"num_segments must be >= 0; got -3")
    assert err.startswith(op + ": ")


@pytest.mark.parametrize("op", [SUM, MEAN])
def test_c_api_rejects_inconsistent_problems(lib, op):
    _bad(lib, op, ids=[0, 1, 1], expect=r"without gather indices the data needs one row per segment id; got 4 rows "
                                          r"and 3 ids")
    _bad(lib, op, in_scale=0.0, expect=r"data and output must be int8 tensors with one \(per-tensor\) scale")
    _bad(lib, op, in_scale=_f32(1e4), out_scale=_f32(1e-4), expect=r"above the supported")
    _bad(lib, op, in_zero=200, expect=r"zero points must be in \[-128, 127\]")


def test_c_api_gcn_rows_must_match(lib):
    _bad(lib, GCN, segments=3, expect=r"TfqGcnAggregate: output rows \(3\) must equal input rows \(4\)")


FAULTS = {
    # id: (fault, ops, expected error)
    "five-inputs": (FIVE_INPUTS, kernels.GRAPH_OPS, r"expected (3|4|2) to (4|2) inputs and 1 output"),
    "too-few-inputs": (TOO_FEW_INPUTS, kernels.GRAPH_OPS, r"expected (3|4|2) to (4|2) inputs and 1 output"),
    "ids-float32": (IDS_FLOAT, kernels.GRAPH_OPS, r"segment ids and gather indices must be int32 vectors"),
    "ids-2d": (IDS_2D, kernels.GRAPH_OPS, r"segment ids and gather indices must be int32 vectors"),
    "num-segments-2": (NUM_SEGMENTS_2, (SUM, MEAN, GCN), r"num_segments one int32"),
    "gather-longer": (GATHER_LONGER, (GCN,), r"gather indices and segment ids must have the same length"),
    "data-uint8": (DATA_UINT8, kernels.GRAPH_OPS, r"data and output must be int8 tensors with one \(per-tensor\)"),
    "output-unquantized": (OUTPUT_NO_QUANT, kernels.GRAPH_OPS, r"data and output must be int8 tensors"),
    "output-per-channel": (OUTPUT_PER_CHANNEL, kernels.GRAPH_OPS, r"data and output must be int8 tensors"),
    "custom-options": (OPTIONS, kernels.GRAPH_OPS, r"the op takes no custom options"),
    "output-is-input": (OUTPUT_IS_INPUT, kernels.GRAPH_OPS, r"the output is also an input of the node"),
    "output-missing": (OUTPUT_MISSING, kernels.GRAPH_OPS, r"an input or output tensor index is invalid or missing"),
    "input-index-invalid": (BAD_INPUT_INDEX, kernels.GRAPH_OPS, r"tensor index is invalid or missing"),
    "output-model-memory": (OUTPUT_MMAP, kernels.GRAPH_OPS, r"holds constant data from the model"),
    "output-variable": (OUTPUT_VARIABLE, kernels.GRAPH_OPS, r"variable tensor"),
    "data-byte-size": (DATA_BYTES, kernels.GRAPH_OPS, r"a tensor's byte size does not match its shape"),
    "data-rank-0": (DATA_RANK0, kernels.GRAPH_OPS, r"data must have at least one dimension"),
    "data-negative-dim": (NEGATIVE_DIM, kernels.GRAPH_OPS, r"data has a negative or too large shape"),
    "data-huge-shape": (HUGE_SHAPE, kernels.GRAPH_OPS, r"data has a negative or too large shape"),
    "invoke-before-prepare": (NO_PREPARE, kernels.GRAPH_OPS, r"Invoke before a successful Prepare"),
    "resize-fails": (RESIZE_FAILS, kernels.GRAPH_OPS, r"could not resize the output tensor"),
}


@pytest.mark.parametrize("case", list(FAULTS))
@pytest.mark.parametrize("constant", [MMAP_RO, RUNTIME])
def test_c_api_rejects_bad_nodes(lib, case, constant):
    fault, ops, expect = FAULTS[case]
    for op in ops:
        err = _bad(lib, op, fault=fault, constant=constant, expect=expect)
        assert err.startswith(op + ": ") or err.startswith("mock: "), err


def test_c_api_gcn_needs_gather(lib):
    _bad(lib, GCN, gather=None, expect=r"TfqGcnAggregate: expected 4 to 4 inputs and 1 output")
    _bad(lib, GCN, gather=None, fault=OPTIONAL_SLOT, expect=r"TfqGcnAggregate: an input or output tensor index is "
                                                              r"invalid or missing")


def test_c_api_bad_input_survives_random_garbage(lib):
    """Random ids, gathers, num_segments and zero points: each run either matches the core or fails as the core does
    (same message), never crashes."""
    rng = np.random.default_rng(7)
    for trial in range(300):
        op = kernels.GRAPH_OPS[trial % 4]
        with_gather = op == GCN or (op in (SUM, MEAN) and rng.random() < 0.5)
        data, ids, segments, gather, scales = _random_case(rng, op, with_gather=with_gather)
        if rng.random() < 0.5:
            ids[rng.integers(0, ids.size)] = rng.integers(-3, segments + 3)
        if gather is not None and gather.size and rng.random() < 0.5:
            gather[rng.integers(0, gather.size)] = rng.integers(-3, data.shape[0] + 3)
        if op in (SUM, MEAN) and rng.random() < 0.2:
            segments = int(rng.integers(-2, 3))
        try:
            expected = kernels.graph_op_native(op, data, ids, segments, gather=gather, **scales)
        except ValueError as exc:
            expected = str(exc)
        status, got, err = run_c_api(lib, op, data, ids, segments, gather=gather, constant=CONSTANTS[trial % 3],
                                     **scales)
        if isinstance(expected, str):
            assert status == 1, (trial, expected)
            assert expected in err or "num_segments must be >= 0" in err, (expected, err)
        else:
            assert (status, err) == (0, ""), trial
            np.testing.assert_array_equal(got, expected.reshape(got.shape))
