"""Block layout shared by Quant-Noise, iPQ and KQ: how a kernel is cut into d-dimensional blocks.

- Dense kernel (in, out) and Embedding (vocab, dim): block = ``block_size`` contiguous input features of one
  output unit (Dense) or one row (Embedding).
- Conv kernel (kh, kw, in, out) with kh*kw > 1: block = one whole (in, out) kernel of kh*kw weights.
- 1x1 conv (1, 1, in, out): blocks of ``block_size`` contiguous input channels of one output channel.

Blocks are ordered output-major, which matches TFLite's weight layouts (FULLY_CONNECTED (O, I); CONV_2D
(O, H, W, I) with one block per (o, i)), so identical blocks stay identical in the exported int8 file.
Forward/backward: pure reshapes/transposes (gradients flow through unchanged).
"""

from __future__ import annotations

from typing import Tuple

from tfq_ext._keras import tf

__all__ = ["KINDS", "block_dim", "num_blocks", "to_blocks", "from_blocks", "check_block_size"]

KINDS = ("dense", "conv", "embedding")


def block_dim(kind: str, kernel_shape: Tuple[int, ...], block_size: int) -> int:
    """The block length d for a kernel."""
    if kind == "conv" and kernel_shape[0] * kernel_shape[1] > 1:
        return int(kernel_shape[0] * kernel_shape[1])
    return int(block_size)


def check_block_size(kind: str, kernel_shape: Tuple[int, ...], block_size: int, layer_name: str = "") -> int:
    """Validates the block size against the dimension it splits; returns d."""
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}. Received: kind={kind!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"`block_size` must be a positive int. Received: block_size={block_size!r}")
    d = block_dim(kind, kernel_shape, block_size)
    if kind == "conv" and d == int(kernel_shape[0] * kernel_shape[1]) and d > 1:
        return d
    split = kernel_shape[-2] if kind in ("dense", "conv") else kernel_shape[-1]
    if split % d:
        what = "input features" if kind == "dense" else ("input channels" if kind == "conv" else "embedding dims")
        raise ValueError(f"`block_size` must divide the {what} ({split}) of layer {layer_name!r}. "
                         f"Received: block_size={block_size}")
    return d


def num_blocks(kind: str, kernel_shape: Tuple[int, ...], block_size: int) -> int:
    total = 1
    for s in kernel_shape:
        total *= int(s)
    return total // block_dim(kind, kernel_shape, block_size)


def to_blocks(kernel: tf.Tensor, kind: str, block_size: int) -> tf.Tensor:
    """(n_blocks, d) view of ``kernel`` in the block order described in the module docstring."""
    shape = tuple(int(s) for s in kernel.shape)
    d = block_dim(kind, shape, block_size)
    if kind == "embedding":
        return tf.reshape(kernel, (-1, d))
    if kind == "dense":
        return tf.reshape(tf.transpose(kernel), (-1, d))  # (out, in) rows, split along in
    kh, kw, cin, cout = shape
    if kh * kw > 1:
        return tf.reshape(tf.transpose(kernel, (3, 2, 0, 1)), (-1, d))  # (out, in, kh*kw)
    return tf.reshape(tf.transpose(tf.reshape(kernel, (cin, cout))), (-1, d))  # (out, in) rows


def from_blocks(blocks: tf.Tensor, kind: str, kernel_shape: Tuple[int, ...], block_size: int) -> tf.Tensor:
    """Inverse of :func:`to_blocks`."""
    shape = tuple(int(s) for s in kernel_shape)
    if kind == "embedding":
        return tf.reshape(blocks, shape)
    if kind == "dense":
        return tf.transpose(tf.reshape(blocks, (shape[1], shape[0])))
    kh, kw, cin, cout = shape
    if kh * kw > 1:
        return tf.transpose(tf.reshape(blocks, (cout, cin, kh, kw)), (2, 3, 1, 0))
    return tf.reshape(tf.transpose(tf.reshape(blocks, (cout, cin))), shape)
