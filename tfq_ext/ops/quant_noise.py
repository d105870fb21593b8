"""Quant-Noise: quantization noise on a random subset of weight blocks (Fan, Stock et al., arXiv 2004.07320).

Each training forward draws a Bernoulli(p) mask over blocks; only the selected blocks get the noise phi, the
others stay exact and receive unbiased gradients. The noised kernel is a temporary tensor: the variable is never
written (unlike fairseq's hook, which zeroes dropped blocks in place and rescales the survivors on every step).

- proxy: phi = drop the block; survivors scaled by 1/(1-p) (as dropout). Forward as stated; backward: the mask.
- scalar: selected entries replaced by their int-N value; backward: identity (noise is stop_gradient(Q(w) - w)).
- pq: selected blocks replaced by their nearest centroid; backward: identity (STE).

References: Fan, Stock et al. 2021, arXiv 2004.07320.
"""

from __future__ import annotations

from tfq_ext._keras import tf
from tfq_ext.ops.fake_quant import fake_quant, symmetric_range

__all__ = ["block_mask", "proxy_noise", "scalar_noise", "pq_noise", "nearest_centroids"]


def block_mask(n_blocks: int, rate, seed=None) -> tf.Tensor:
    """(n_blocks, 1) float mask, 1 where a block is selected for noise (Bernoulli(rate))."""
    uniform = tf.random.uniform((n_blocks, 1), seed=seed)
    return tf.cast(uniform < tf.cast(rate, tf.float32), tf.float32)


def proxy_noise(blocks: tf.Tensor, mask: tf.Tensor, rate) -> tf.Tensor:
    """Drops the selected blocks and rescales the others by 1 / (1 - rate)."""
    keep = 1.0 - tf.cast(rate, blocks.dtype)
    return blocks * (1.0 - mask) / tf.maximum(keep, 1e-6)


def scalar_noise(blocks: tf.Tensor, mask: tf.Tensor, num_bits: int = 8) -> tf.Tensor:
    """Selected blocks take their symmetric int-N fake-quantized value (straight-through gradient)."""
    bound = tf.maximum(symmetric_range(blocks), 1e-8)
    quantized = fake_quant(blocks, -bound, bound, num_bits, narrow_range=True)
    return blocks + mask * tf.stop_gradient(quantized - blocks)


def nearest_centroids(blocks: tf.Tensor, centroids: tf.Tensor) -> tf.Tensor:
    """Index of the nearest centroid (squared L2) of every block."""
    distances = (tf.reduce_sum(tf.square(blocks), 1, keepdims=True) - 2.0 * tf.matmul(blocks, centroids, transpose_b=True)
                 + tf.reduce_sum(tf.square(centroids), 1)[None, :])
    return tf.argmin(distances, axis=1, output_type=tf.int32)


def pq_noise(blocks: tf.Tensor, mask: tf.Tensor, centroids: tf.Tensor) -> tf.Tensor:
    """Selected blocks take their nearest centroid (straight-through gradient)."""
    target = tf.gather(centroids, nearest_centroids(tf.stop_gradient(blocks), centroids))
    return blocks + mask * tf.stop_gradient(target - blocks)
