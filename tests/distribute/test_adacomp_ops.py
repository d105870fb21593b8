"""Golden tests of the AdaComp math (tfq_ext.ops.adacomp), hand-computed on tiny float64 tensors."""

import numpy as np
import pytest

from tfq_ext._keras import tf
from tfq_ext.ops import adacomp as ac


def _step(residual, grad, bin_size=None, k=None):
    r = tf.constant(residual, tf.float64)
    g = tf.constant(grad, tf.float64)
    return ac.compress_step(r, g, bin_size, k=k)


def test_golden_two_bins_with_tie():
    # G = r + dW = [.75, 1, -.5, -.5]; H = G + dW = [1, 2, -1, 0]; bins of 2: g_max = [1, .5].
    # Bin 0: |H| = [1, 2] >= 1 -> both (the first is a tie, ties are sent).
    # Bin 1: |H| = [1, 0] vs .5 -> only the first; the second has the bin's largest |G| but dW pulls it back.
    out = _step([0.5, 0.0, 0.0, -1.0], [0.25, 1.0, -0.5, 0.5], bin_size=2)
    np.testing.assert_array_equal(out.mask.numpy(), [True, True, True, False])
    assert out.scale.numpy() == 0.75  # mean(|.75|, |1|, |-.5|)
    np.testing.assert_array_equal(out.sent.numpy(), [0.75, 0.75, -0.75, 0.0])
    np.testing.assert_array_equal(out.residual.numpy(), [0.0, 0.25, 0.25, -0.5])
    assert int(out.count) == 3
    # Mass conservation, exactly: every value here is dyadic.
    np.testing.assert_array_equal((out.sent + out.residual).numpy(), [0.75, 1.0, -0.5, -0.5])


@pytest.mark.parametrize("grad,expected", [
    ([1.0, 0.5, 0.25, 0.125], [True, True, False, False]),   # 2*.5 == 1 == g_max: tie, sent
    ([1.0, 0.49, 0.25, 0.125], [True, False, False, False]),  # just below the tie
    ([-1.0, 1.0, 0.5, -0.5], [True, True, True, True]),       # equal magnitudes in a bin: all tie
], ids=["tie_sent", "below_tie", "all_equal"])
def test_ties_from_zero_residual(grad, expected):
    # Zero residual: G = dW, H = 2 dW, so i is sent iff |dW_i| >= max_bin |dW| / 2; one bin of 4.
    out = _step([0.0] * 4, grad, bin_size=4)
    np.testing.assert_array_equal(out.mask.numpy(), expected)


def test_short_last_bin_and_zero_bin():
    # 5 elements, L_T = 2 -> bins [0,1] [2,3] [4]; bin [2,3] is all zero and sends nothing.
    out = _step([0.0] * 5, [1.0, 0.25, 0.0, 0.0, -0.125], bin_size=2)
    np.testing.assert_array_equal(out.mask.numpy(), [True, False, False, False, True])


def test_bin_size_one_sends_every_nonzero_element_from_zero_residual():
    # L_T = 1: g_max = |G_i| and, from a zero residual, |H_i| = 2|dW_i| >= |dW_i|: everything nonzero is sent.
    grad = np.random.default_rng(0).normal(size=37)
    out = _step(np.zeros(37), grad, bin_size=1)
    assert int(out.count) == 37
    # Only quantization error stays behind.
    scale = np.mean(np.abs(grad))
    np.testing.assert_allclose(out.residual.numpy(), grad - np.sign(grad) * scale, rtol=0, atol=1e-15)


def test_bin_size_one_with_residual_follows_the_rule():
    # With a residual, L_T = 1 sends i iff |G_i + dW_i| >= |G_i| <=> dW_i (2 G_i + dW_i) >= 0, not always.
    out = _step([3.0, 3.0, -2.0], [-1.0, 1.0, 4.5], bin_size=1)
    # G = [2, 4, 2.5], H = [1, 5, 7]: the first (dW against G) stays in the residual.
    np.testing.assert_array_equal(out.mask.numpy(), [False, True, True])


def test_mass_conservation_over_steps():
    rng = np.random.default_rng(1)
    residual = tf.zeros([300], tf.float64)
    total_grad = np.zeros(300)
    total_sent = np.zeros(300)
    for _ in range(20):
        grad = rng.normal(size=300)
        out = ac.compress_step(residual, tf.constant(grad), 50)
        residual = out.residual
        total_grad += grad
        total_sent += out.sent.numpy()
    # One float64 rounding per step in G - sent: tolerance a few ulps of the accumulated magnitudes.
    np.testing.assert_allclose(total_sent + residual.numpy(), total_grad, rtol=0, atol=1e-12)
    assert np.abs(residual.numpy()).max() < 10  # the residual stays bounded: large values get sent


def test_topk_selects_k_largest():
    out = _step([0.0] * 5, [0.5, -3.0, 1.0, 2.0, 0.0], k=2)
    np.testing.assert_array_equal(out.mask.numpy(), [False, True, False, True, False])
    assert out.scale.numpy() == 2.5


def test_encode_decode_sums_learners():
    g1 = tf.constant([0.5, 0.0, -1.0, 2.0], tf.float64)
    m1 = tf.constant([True, False, True, False])
    g2 = tf.constant([-1.0, 1.0, 0.0, 0.0], tf.float64)
    m2 = tf.constant([True, True, False, False])
    p1, p2 = ac.encode_sparse(g1, m1), ac.encode_sparse(g2, m2)
    np.testing.assert_array_equal(p1.numpy(), [1, -3])
    packed = tf.concat([p1, p2], 0)
    scales = tf.constant([0.75, 0.75, 0.5, 0.5], tf.float64)
    dense = ac.decode_sparse_sum(packed, scales, 4, tf.float64)
    np.testing.assert_array_equal(dense.numpy(), [0.75 - 0.5, 0.5, -0.75, 0.0])


@pytest.mark.parametrize("count,n,bits", [(3, 4, 3 * 3 + 32), (10, 1000, 10 * 11 + 32), (0, 1, 32)],
                         ids=["n4", "n1000", "empty"])
def test_encoded_bits_count_index_bits(count, n, bits):
    assert ac.encoded_bits(count, n) == bits
    assert ac.dense_bits(n) == 32 * n


@pytest.mark.parametrize("shape,kind", [((3, 3, 1, 8), "conv"), ((5, 4, 8), "conv"), ((64, 10), "fc"),
                                        ((10,), "other")], ids=["conv2d", "conv1d", "dense", "bias"])
def test_layer_kind(shape, kind):
    assert ac.layer_kind(shape) == kind


@pytest.mark.parametrize("value,error", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError),
                                         ("50", TypeError)], ids=["zero", "negative", "float", "bool", "str"])
def test_invalid_bin_size(value, error):
    with pytest.raises(error, match="bin_size"):
        ac.validate_bin_size(value)
    with pytest.raises(error, match="L_T"):
        _step([0.0, 0.0], [1.0, 1.0], bin_size=value)


def test_compress_step_needs_exactly_one_rule():
    with pytest.raises(ValueError, match="Exactly one of"):
        _step([0.0], [1.0])
    with pytest.raises(ValueError, match="Received: bin_size=2, k=1"):
        _step([0.0], [1.0], bin_size=2, k=1)
