"""Kernel-quantized convolutions: every k x k kernel is an index into a per-layer codebook of kernels.

A KQ layer stores a codebook C of K kernels (K, k*k), one index per (in, out) kernel (per channel for a
depthwise conv) and the bias. In every forward the codebook is fake-quantized to ``codebook_bits`` bits with one
symmetric per-layer scale (s = max|C| / (2^(b-1) - 1), narrow range), so what trains is exactly what is stored.
Only the codebook (and the bias) train; the gradient of a codeword is the mean of the gradients of the kernels
that use it (``tfq_ext.ops.codebook.gather_mean_grad``), as in iPQ.

Forward: W = from_blocks(s * round(C / s)[indices]). Backward: straight-through through the rounding (clipped
outside the range), then dC_k = mean of dW_i over the kernels i with index k.

Storage of one layer (bits): n_kernels * ceil(log2 K) + codebook_bits * k*k * K + 32 (the float32 scale), i.e.
log2(K)/k^2 + (codebook_bits * k^2 * K + 32) / n_weights bits per weight.

References: Yu et al. 2020, arXiv 2003.05148 (KQ); Stock et al. 2020, arXiv 1907.05686 (mean centroid gradient).
"""

from __future__ import annotations

import numpy as np

from tfq_ext._keras import keras, tf
from tfq_ext.ops.blocks import from_blocks, num_blocks
from tfq_ext.ops.codebook import gather_mean_grad
from tfq_ext.ops.fake_quant import fake_quant, qrange, symmetric_range
from tfq_ext.ops.size import TensorSize, index_bits, packed_bytes

__all__ = [
    "CODEBOOK_BITS_RANGE",
    "KQ_LAYERS",
    "SCALE_BITS",
    "KQConv2D",
    "KQDepthwiseConv2D",
    "check_codebook_bits",
    "kq_bits",
]

CODEBOOK_BITS_RANGE = (2, 8)
SCALE_BITS = 32  # one float32 scale per layer for the quantized codebook


def check_codebook_bits(codebook_bits) -> int:
    """Validates ``codebook_bits`` (an int in [2, 8]) and returns it."""
    lo, hi = CODEBOOK_BITS_RANGE
    if isinstance(codebook_bits, bool) or not isinstance(codebook_bits, (int, np.integer)) \
            or not lo <= codebook_bits <= hi:
        raise ValueError(f"`codebook_bits` must be an int in [{lo}, {hi}] (the paper uses 6). "
                         f"Received: codebook_bits={codebook_bits!r}")
    return int(codebook_bits)


def kq_bits(n_kernels: int, kernel_dim: int, n_codewords: int, codebook_bits: int = 6) -> int:
    """Exact bits of one KQ kernel: indices + quantized codebook + the codebook's float32 scale.

    Args:
        n_kernels: number of k x k kernels in the layer (in * out, or channels * multiplier for depthwise).
        kernel_dim: k*k, the weights of one kernel.
        n_codewords: K, the codebook size.
        codebook_bits: bits of one codebook value.
    """
    return int(n_kernels) * index_bits(n_codewords) + int(codebook_bits) * int(kernel_dim) * int(n_codewords) \
        + SCALE_BITS


def _pair(value, name: str) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    try:
        pair = tuple(int(v) for v in value)
    except TypeError:
        pair = ()
    if len(pair) != 2:
        raise ValueError(f"`{name}` must be an int or a pair of ints. Received: {name}={value!r}")
    return pair  # type: ignore[return-value]


class _KQMixin:
    """Codebook, indices, forward kernel and size accounting shared by the KQ layers."""

    def _init_kq(self, kernel_size, n_codewords, codebook_bits, strides, padding, dilation_rate, activation,
                 use_bias):
        if isinstance(n_codewords, bool) or not isinstance(n_codewords, (int, np.integer)) or n_codewords < 1:
            raise ValueError(f"`n_codewords` must be a positive int. Received: n_codewords={n_codewords!r}")
        self.kernel_size = _pair(kernel_size, "kernel_size")
        if self.kernel_size[0] * self.kernel_size[1] < 2:
            # A 1x1 kernel is a single weight: indexing it costs more than storing it (use scalar quantization).
            raise ValueError(f"`kernel_size` must have more than one weight per kernel for KQ (1x1 convs are not "
                             f"eligible). Received: kernel_size={kernel_size!r}")
        self.n_codewords = int(n_codewords)
        self.codebook_bits = check_codebook_bits(codebook_bits)
        self.strides, self.dilation_rate = _pair(strides, "strides"), _pair(dilation_rate, "dilation_rate")
        if padding not in ("valid", "same"):
            raise ValueError(f"`padding` must be 'valid' or 'same'. Received: padding={padding!r}")
        self.padding = padding
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)

    def _build_kq(self, kernel_shape: tuple[int, ...], n_outputs: int) -> None:
        self.kernel_shape = tuple(int(s) for s in kernel_shape)
        self.kernel_dim = self.kernel_shape[0] * self.kernel_shape[1]
        self.n_kernels = num_blocks("conv", self.kernel_shape, 1)
        if self.n_codewords > self.n_kernels:
            raise ValueError(f"`n_codewords` ({self.n_codewords}) must not exceed the number of kernels "
                             f"({self.n_kernels}) of layer {self.name!r}. Received: n_codewords={self.n_codewords}")
        self.codebook_variable = self.add_weight("codebook", shape=(self.n_codewords, self.kernel_dim),
                                                 initializer="glorot_uniform", trainable=True)
        self.indices = self.add_weight("indices", shape=(self.n_kernels,), dtype=tf.int32, initializer="zeros",
                                       trainable=False)
        self.bias = self.add_weight("bias", shape=(n_outputs,), initializer="zeros") if self.use_bias else None

    def codebook_scale(self) -> tf.Tensor:
        """Step of the codebook grid: max|C| / (2^(bits-1) - 1) (symmetric, narrow range)."""
        _, qmax = qrange(self.codebook_bits, narrow_range=True)
        return tf.maximum(symmetric_range(self.codebook_variable), 1e-8) / float(qmax)

    def codebook(self) -> tf.Tensor:
        """The codebook as used in the forward pass: on the ``codebook_bits`` grid (clipped STE gradient)."""
        bound = tf.maximum(symmetric_range(self.codebook_variable), 1e-8)
        # TF's op with a symmetric [-m, m] range and narrow_range has zero point 2^(b-1) exactly, so the grid is
        # {j * m / (2^(b-1) - 1)}; the converter would read the same range if this op were ever exported.
        return fake_quant(self.codebook_variable, -bound, bound, self.codebook_bits, narrow_range=True)

    def kq_kernel(self) -> tf.Tensor:
        """The dense kernel rebuilt from the quantized codebook and the indices (layer kernel layout)."""
        kernels = gather_mean_grad(self.codebook(), self.indices)
        return from_blocks(kernels, "conv", self.kernel_shape, 1)

    def set_codebook(self, codebook: np.ndarray, indices: np.ndarray) -> None:
        """Loads a codebook (K, k*k) and one index per kernel (n_kernels,), e.g. from k-means."""
        codebook = np.asarray(codebook, np.float32)
        indices = np.asarray(indices)
        if codebook.shape != (self.n_codewords, self.kernel_dim):
            raise ValueError(f"`codebook` must have shape {(self.n_codewords, self.kernel_dim)}. "
                             f"Received: codebook.shape={codebook.shape}")
        if indices.shape != (self.n_kernels,) or not np.issubdtype(indices.dtype, np.integer) \
                or indices.min() < 0 or indices.max() >= self.n_codewords:
            raise ValueError(f"`indices` must be {self.n_kernels} ints in [0, {self.n_codewords}). Received: "
                             f"shape={indices.shape}, dtype={indices.dtype}, "
                             f"range=[{indices.min() if indices.size else None}, "
                             f"{indices.max() if indices.size else None}]")
        self.codebook_variable.assign(codebook)
        self.indices.assign(indices.astype(np.int32))

    def kernel_bits(self) -> int:
        """Exact bits of the kernel storage (see :func:`kq_bits`)."""
        return kq_bits(self.n_kernels, self.kernel_dim, self.n_codewords, self.codebook_bits)

    def size_entries(self) -> list[TensorSize]:
        """Bytes of the packed indices, the packed codebook + float32 scale, and the float32 bias."""
        entries = [TensorSize(self.name, "kernel", int(np.prod(self.kernel_shape)), "kq",
                              index_bytes=packed_bytes(self.n_kernels, index_bits(self.n_codewords)),
                              codebook_bytes=packed_bytes(self.n_codewords * self.kernel_dim, self.codebook_bits)
                              + SCALE_BITS // 8)]
        if self.bias is not None:
            n = int(np.prod(self.bias.shape))
            entries.append(TensorSize(self.name, "bias", n, "float32", other_bytes=4 * n))
        return entries

    def _finish(self, outputs):
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias)
        return self.activation(outputs)

    def _kq_config(self) -> dict:
        return {"kernel_size": self.kernel_size, "strides": self.strides, "padding": self.padding,
                "dilation_rate": self.dilation_rate, "n_codewords": self.n_codewords,
                "codebook_bits": self.codebook_bits, "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias}


@keras.utils.register_keras_serializable(package="tfq_ext")
class KQConv2D(_KQMixin, keras.layers.Layer):
    """Conv2D (channels last, groups 1) whose k x k kernels index a ``codebook_bits`` codebook of K kernels.

    Forward: conv(x, from_blocks(Q_b(C)[indices])) + bias. Backward: clipped STE through Q_b; a codeword's
    gradient is the mean over the kernels that use it.

    Args:
        filters, kernel_size, strides, padding, dilation_rate, activation, use_bias: as ``keras.layers.Conv2D``.
        n_codewords: K, the number of kernels in the codebook (at most in_channels * filters).
        codebook_bits: bits of each codebook value, in [2, 8] (the paper uses 6).

    References: Yu et al. 2020, arXiv 2003.05148.
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", dilation_rate=(1, 1),
                 n_codewords=256, codebook_bits=6, activation=None, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        if isinstance(filters, bool) or not isinstance(filters, (int, np.integer)) or filters < 1:
            raise ValueError(f"`filters` must be a positive int. Received: filters={filters!r}")
        self.filters = int(filters)
        self._init_kq(kernel_size, n_codewords, codebook_bits, strides, padding, dilation_rate, activation,
                      use_bias)

    def build(self, input_shape):
        self._build_kq(self.kernel_size + (int(input_shape[-1]), self.filters), self.filters)
        super().build(input_shape)

    def call(self, inputs):
        outputs = tf.nn.conv2d(inputs, self.kq_kernel(), strides=self.strides, padding=self.padding.upper(),
                               dilations=self.dilation_rate)
        return self._finish(outputs)

    def compute_output_shape(self, input_shape):
        return keras.layers.Conv2D(self.filters, self.kernel_size, self.strides, self.padding,
                                   dilation_rate=self.dilation_rate).compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, **self._kq_config()}


@keras.utils.register_keras_serializable(package="tfq_ext")
class KQDepthwiseConv2D(_KQMixin, keras.layers.Layer):
    """DepthwiseConv2D (channels last) whose per-channel k x k kernels index a codebook of K kernels.

    Each of the in_channels * depth_multiplier kernels is one block (a depthwise kernel is already one channel).
    Forward: depthwise_conv(x, from_blocks(Q_b(C)[indices])) + bias. Backward: as :class:`KQConv2D`.

    Args:
        kernel_size, strides, padding, depth_multiplier, dilation_rate, activation, use_bias: as
            ``keras.layers.DepthwiseConv2D``.
        n_codewords: K (at most in_channels * depth_multiplier).
        codebook_bits: bits of each codebook value, in [2, 8].

    References: Yu et al. 2020, arXiv 2003.05148.
    """

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", depth_multiplier=1, dilation_rate=(1, 1),
                 n_codewords=256, codebook_bits=6, activation=None, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        if isinstance(depth_multiplier, bool) or not isinstance(depth_multiplier, (int, np.integer)) \
                or depth_multiplier < 1:
            raise ValueError(f"`depth_multiplier` must be a positive int. Received: "
                             f"depth_multiplier={depth_multiplier!r}")
        self.depth_multiplier = int(depth_multiplier)
        self._init_kq(kernel_size, n_codewords, codebook_bits, strides, padding, dilation_rate, activation,
                      use_bias)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self._build_kq(self.kernel_size + (channels, self.depth_multiplier), channels * self.depth_multiplier)
        super().build(input_shape)

    def call(self, inputs):
        # tf.nn.depthwise_conv2d takes 4-element strides; dilations apply only with unit strides (as in Keras).
        outputs = tf.nn.depthwise_conv2d(inputs, self.kq_kernel(), strides=(1,) + self.strides + (1,),
                                         padding=self.padding.upper(), dilations=self.dilation_rate)
        return self._finish(outputs)

    def compute_output_shape(self, input_shape):
        return keras.layers.DepthwiseConv2D(self.kernel_size, self.strides, self.padding,
                                            depth_multiplier=self.depth_multiplier,
                                            dilation_rate=self.dilation_rate).compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "depth_multiplier": self.depth_multiplier, **self._kq_config()}


KQ_LAYERS = (KQConv2D, KQDepthwiseConv2D)
