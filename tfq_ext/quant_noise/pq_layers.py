"""Product-quantized layers: the kernel is rebuilt from a codebook of centroids and one index per block.

Only the centroids (and the bias) train; the gradient of a centroid is the mean of the gradients of the blocks
assigned to it (``tfq_ext.ops.codebook.gather_mean_grad``). With ``int8_codebook`` the centroids are
fake-quantized to int8 (one symmetric per-layer scale) in every forward, as the paper combines iPQ with int8.

Forward: W = from_blocks(Q(C)[assignments]). Backward: dC_k = mean of dBlock_i over blocks with a_i = k.

References: Stock et al. 2020, arXiv 1907.05686 (iPQ).
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

from tfq_ext._keras import keras, tf
from tfq_ext.ops.blocks import check_block_size, from_blocks, num_blocks
from tfq_ext.ops.codebook import gather_mean_grad
from tfq_ext.ops.linear import dense
from tfq_ext.ops.fake_quant import fake_quant, symmetric_range
from tfq_ext.ops.size import TensorSize, codebook_bytes, index_bits, packed_bytes

__all__ = ["PQDense", "PQConv2D", "PQEmbedding", "PQ_LAYERS"]


class _PQMixin:
    _kind = "dense"

    def _init_pq(self, block_size, n_centroids, int8_codebook):
        if isinstance(n_centroids, bool) or not isinstance(n_centroids, int) or n_centroids < 1:
            raise ValueError(f"`n_centroids` must be a positive int. Received: n_centroids={n_centroids!r}")
        self.block_size = block_size
        self.n_centroids = int(n_centroids)
        self.int8_codebook = bool(int8_codebook)

    def _build_pq(self, kernel_shape: Tuple[int, ...]):
        self.kernel_shape = tuple(int(s) for s in kernel_shape)
        self.block_dim = check_block_size(self._kind, self.kernel_shape, self.block_size, self.name)
        self.n_blocks = num_blocks(self._kind, self.kernel_shape, self.block_size)
        if self.n_centroids > self.n_blocks:
            raise ValueError(f"`n_centroids` ({self.n_centroids}) must not exceed the number of blocks "
                             f"({self.n_blocks}) of layer {self.name!r}. Received: n_centroids={self.n_centroids}")
        self.centroids = self.add_weight("centroids", shape=(self.n_centroids, self.block_dim),
                                         initializer="glorot_uniform", trainable=True)
        self.assignments = self.add_weight("assignments", shape=(self.n_blocks,), dtype=tf.int32,
                                           initializer="zeros", trainable=False)

    def codebook(self) -> tf.Tensor:
        """The centroids as used in the forward pass (int8 grid when ``int8_codebook``)."""
        if not self.int8_codebook:
            return tf.convert_to_tensor(self.centroids)
        bound = tf.maximum(symmetric_range(self.centroids), 1e-8)
        return fake_quant(self.centroids, -bound, bound, 8, narrow_range=True)

    def pq_kernel(self) -> tf.Tensor:
        blocks = gather_mean_grad(self.codebook(), self.assignments)
        return from_blocks(blocks, self._kind, self.kernel_shape, self.block_size)

    def set_codebook(self, centroids: np.ndarray, assignments: np.ndarray) -> None:
        """Loads k-means results (centroids (K, d), assignments (n_blocks,))."""
        centroids = np.asarray(centroids, np.float32)
        assignments = np.asarray(assignments, np.int32)
        if centroids.shape != tuple(self.centroids.shape):
            raise ValueError(f"`centroids` must have shape {tuple(self.centroids.shape)}. "
                             f"Received: centroids.shape={centroids.shape}")
        if assignments.shape != (self.n_blocks,) or assignments.min() < 0 or assignments.max() >= self.n_centroids:
            raise ValueError(f"`assignments` must be {self.n_blocks} indices in [0, {self.n_centroids}). "
                             f"Received: shape={assignments.shape}, range=[{assignments.min()}, {assignments.max()}]")
        self.centroids.assign(centroids)
        self.assignments.assign(assignments)

    def size_entries(self) -> List[TensorSize]:
        """Bytes of the indices, the codebook (float16, or int8 + scale) and the float32 bias."""
        entries = [TensorSize(self.name, "kernel", int(np.prod(self.kernel_shape)), "pq",
                              index_bytes=packed_bytes(self.n_blocks, index_bits(self.n_centroids)),
                              codebook_bytes=codebook_bytes(self.n_centroids, self.block_dim,
                                                            8 if self.int8_codebook else 16))]
        bias = getattr(self, "bias", None)
        if bias is not None:
            entries.append(TensorSize(self.name, "bias", int(np.prod(bias.shape)), "float32",
                                      other_bytes=4 * int(np.prod(bias.shape))))
        return entries

    def _pq_config(self):
        return {"block_size": self.block_size, "n_centroids": self.n_centroids, "int8_codebook": self.int8_codebook}


@keras.utils.register_keras_serializable(package="tfq_ext")
class PQDense(_PQMixin, keras.layers.Layer):
    """Dense whose kernel is product-quantized (blocks of ``block_size`` inputs of one output unit)."""

    _kind = "dense"

    def __init__(self, units, block_size=8, n_centroids=256, int8_codebook=False, activation=None, use_bias=True,
                 **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self._init_pq(block_size, n_centroids, int8_codebook)

    def build(self, input_shape):
        self._build_pq((int(input_shape[-1]), self.units))
        self.bias = self.add_weight("bias", shape=(self.units,), initializer="zeros") if self.use_bias else None
        super().build(input_shape)

    def call(self, inputs):
        return dense(inputs, self.pq_kernel(), self.bias if self.use_bias else None, self.activation)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias, **self._pq_config()}


@keras.utils.register_keras_serializable(package="tfq_ext")
class PQConv2D(_PQMixin, keras.layers.Layer):
    """Conv2D (channels last, groups 1) whose kernel is product-quantized (a block is one k x k kernel)."""

    _kind = "conv"

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", dilation_rate=(1, 1), block_size=4,
                 n_centroids=256, int8_codebook=False, activation=None, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        pair = lambda v: (int(v), int(v)) if isinstance(v, (int, np.integer)) else tuple(int(x) for x in v)  # noqa: E731
        self.kernel_size, self.strides, self.dilation_rate = pair(kernel_size), pair(strides), pair(dilation_rate)
        if padding not in ("valid", "same"):
            raise ValueError(f"`padding` must be 'valid' or 'same'. Received: padding={padding!r}")
        self.padding = padding
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self._init_pq(block_size, n_centroids, int8_codebook)

    def build(self, input_shape):
        self._build_pq(self.kernel_size + (int(input_shape[-1]), self.filters))
        self.bias = self.add_weight("bias", shape=(self.filters,), initializer="zeros") if self.use_bias else None
        super().build(input_shape)

    def call(self, inputs):
        outputs = tf.nn.conv2d(inputs, self.pq_kernel(), strides=self.strides, padding=self.padding.upper(),
                               dilations=self.dilation_rate)
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias)
        return self.activation(outputs)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "padding": self.padding, "dilation_rate": self.dilation_rate,
                "activation": keras.activations.serialize(self.activation), "use_bias": self.use_bias,
                **self._pq_config()}


@keras.utils.register_keras_serializable(package="tfq_ext")
class PQEmbedding(_PQMixin, keras.layers.Layer):
    """Embedding whose table is product-quantized (blocks of ``block_size`` dims of one row)."""

    _kind = "embedding"

    def __init__(self, input_dim, output_dim, block_size=4, n_centroids=256, int8_codebook=False, **kwargs):
        super().__init__(**kwargs)
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)
        self._init_pq(block_size, n_centroids, int8_codebook)

    def build(self, input_shape=None):
        self._build_pq((self.input_dim, self.output_dim))
        super().build(input_shape)

    def call(self, inputs):
        if inputs.dtype not in (tf.int32, tf.int64):
            inputs = tf.cast(inputs, tf.int32)
        return tf.nn.embedding_lookup(self.pq_kernel(), inputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def get_config(self):
        return {**super().get_config(), "input_dim": self.input_dim, "output_dim": self.output_dim,
                **self._pq_config()}


PQ_LAYERS = (PQDense, PQConv2D, PQEmbedding)
