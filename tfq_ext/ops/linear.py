"""The Dense product on inputs of any rank, for layers that compute their kernel themselves."""

from __future__ import annotations

from tfq_ext._keras import tf

__all__ = ["dense"]


def dense(inputs: tf.Tensor, kernel: tf.Tensor, bias=None, activation=None) -> tf.Tensor:
    """``activation(inputs @ kernel + bias)`` over the last axis of ``inputs`` (rank 2 or more)."""
    if inputs.shape.rank == 2:
        outputs = tf.matmul(inputs, kernel)
    else:
        outputs = tf.tensordot(inputs, kernel, [[inputs.shape.rank - 1], [0]])
    if bias is not None:
        outputs = tf.nn.bias_add(outputs, bias)
    return activation(outputs) if activation is not None else outputs
