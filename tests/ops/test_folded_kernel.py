"""fake_quant_folded_kernel: its written-out gradient equals automatic differentiation of the same forward."""

import numpy as np
import pytest

from tfq_ext._keras import tf
from tfq_ext.ops.fake_quant import fake_quant_folded_kernel


def _reference(kernel, gamma, inv_sigma, per_channel):
    factor = gamma * tf.stop_gradient(inv_sigma)
    u = kernel * factor
    axes = list(range(kernel.shape.rank - 1)) if per_channel else None
    bound = tf.maximum(tf.reduce_max(tf.abs(u), axis=axes), 1e-8)
    if per_channel:
        q = tf.quantization.fake_quant_with_min_max_vars_per_channel(u, -bound, bound, num_bits=8, narrow_range=True)
    else:
        q = tf.quantization.fake_quant_with_min_max_vars(u, -bound, bound, num_bits=8, narrow_range=True)
    regular = tf.abs(factor) > 1e-12
    unfolded = q / tf.where(regular, factor, 1e-12)
    scale = tf.where(regular, gamma, 1e-12 / inv_sigma)
    return q, unfolded, scale


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("with_quantized", [True, False])
@pytest.mark.parametrize("shape", [(3, 3, 4, 6), (5, 6)])
def test_forward_and_gradient_match_autodiff(per_channel, with_quantized, shape):
    rng = np.random.default_rng(1)
    kernel = tf.constant(rng.normal(size=shape).astype("float32"))
    gamma_np = rng.normal(size=shape[-1]).astype("float32")
    gamma_np[1] = 0.0  # a dead channel takes the 1e-12 branch
    gamma = tf.constant(gamma_np)
    inv_sigma = tf.constant(rng.uniform(0.5, 2.0, size=shape[-1]).astype("float32"))
    weights = [tf.constant(rng.normal(size=shape).astype("float32")) for _ in range(2)]
    w_scale = tf.constant(rng.normal(size=shape[-1]).astype("float32"))

    def loss(outputs):
        q, unfolded, scale = outputs
        total = tf.reduce_sum(unfolded * weights[0]) + tf.reduce_sum(scale * w_scale)
        return total + (tf.reduce_sum(q * weights[1]) if with_quantized else 0.0)

    with tf.GradientTape(persistent=True) as tape:
        tape.watch([kernel, gamma])
        got = fake_quant_folded_kernel(kernel, gamma, inv_sigma, 8, per_channel, return_quantized=with_quantized)
        if not with_quantized:
            got = (None,) + tuple(got)
            got_loss = loss((tf.zeros(shape),) + got[1:])
        else:
            got_loss = loss(got)
        ref = _reference(kernel, gamma, inv_sigma, per_channel)
        ref_loss = loss(ref if with_quantized else (tf.zeros(shape),) + ref[1:])
    for a, b in zip(got, ref):
        if a is not None:
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)
    g_got = tape.gradient(got_loss, [kernel, gamma])
    g_ref = tape.gradient(ref_loss, [kernel, gamma])
    for a, b in zip(g_got, g_ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)
    assert np.abs(g_got[1].numpy()).sum() > 0  # gamma is trained


def test_rejects_bad_num_bits():
    with pytest.raises(ValueError, match="num_bits"):
        fake_quant_folded_kernel(tf.ones((2, 2)), tf.ones(2), tf.ones(2), num_bits=1)
