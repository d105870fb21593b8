"""Quant-Noise layers: Dense, Conv2D and Embedding whose kernel gets block-wise quantization noise in training.

The noise is applied to a temporary copy of the kernel inside ``call(training=True)``; the variable is never
written and inference uses the kernel as it is. The noise rate lives in a non-trainable variable so that a
schedule (:class:`QuantNoiseSchedule`) can change it between steps without retracing.

Forward (training): W' = from_blocks(phi(to_blocks(W), mask ~ Bernoulli(p))); (inference): W.
Backward: through phi as documented in ``tfq_ext.ops.quant_noise``.

References: Fan, Stock et al. 2021, arXiv 2004.07320.
"""

from __future__ import annotations

import numpy as np

from tfq_ext._compat import resolve_training, smart_cond
from tfq_ext._keras import keras, tf
from tfq_ext.ops.blocks import check_block_size, from_blocks, num_blocks, to_blocks
from tfq_ext.ops.linear import dense
from tfq_ext.ops.kmeans import clamp_k, kmeans
from tfq_ext.ops.quant_noise import block_mask, pq_noise, proxy_noise, scalar_noise

__all__ = ["QuantNoiseDense", "QuantNoiseConv2D", "QuantNoiseEmbedding", "QuantNoiseSchedule",
           "QuantNoiseCentroidRefresh", "NOISE_FORMS"]

NOISE_FORMS = ("proxy", "scalar", "pq")


class _QuantNoiseMixin:
    """Shared state and noise of the Quant-Noise layers; ``_kind`` and ``_kernel_attr`` are set by subclasses."""

    _kind = "dense"
    _kernel_attr = "kernel"

    def _init_noise(self, noise_rate, block_size, noise, num_bits, n_centroids):
        if not 0.0 <= float(noise_rate) < 1.0:
            raise ValueError(f"`noise_rate` must be in [0, 1). Received: noise_rate={noise_rate}")
        if noise not in NOISE_FORMS:
            raise ValueError(f"`noise` must be one of {NOISE_FORMS}. Received: noise={noise!r}")
        if isinstance(num_bits, bool) or not isinstance(num_bits, int) or not 2 <= num_bits <= 16:
            raise ValueError(f"`num_bits` must be an int in [2, 16]. Received: num_bits={num_bits!r}")
        if isinstance(n_centroids, bool) or not isinstance(n_centroids, int) or n_centroids < 1:
            raise ValueError(f"`n_centroids` must be a positive int. Received: n_centroids={n_centroids!r}")
        self.initial_noise_rate = float(noise_rate)
        self.block_size = block_size
        self.noise = noise
        self.num_bits = int(num_bits)
        self.n_centroids = int(n_centroids)

    def _build_noise(self):
        kernel = getattr(self, self._kernel_attr)
        shape = tuple(int(s) for s in kernel.shape)
        self.block_dim = check_block_size(self._kind, shape, self.block_size, self.name)
        self.n_blocks = num_blocks(self._kind, shape, self.block_size)
        self.noise_rate = self.add_weight("noise_rate", shape=(), trainable=False,
                                          initializer=keras.initializers.Constant(self.initial_noise_rate))
        if self.noise == "pq":
            k = clamp_k(self.n_centroids, self.n_blocks)
            self.centroids = self.add_weight("noise_centroids", shape=(k, self.block_dim), trainable=False,
                                             initializer="zeros")
            self.refresh_centroids()

    def refresh_centroids(self, n_iter: int = 10, seed: int = 0, warm_start: bool = False) -> None:
        """Re-runs k-means on the current kernel (the "pq" noise uses these centroids).

        ``warm_start`` starts Lloyd's iterations from the current centroids instead of a k-means++ seeding:
        much cheaper for periodic refreshes while the weights move a little between them.
        """
        if self.noise != "pq":
            raise ValueError(f"layer {self.name!r} uses noise={self.noise!r}; only 'pq' noise has centroids")
        blocks = to_blocks(tf.convert_to_tensor(getattr(self, self._kernel_attr)), self._kind, self.block_size)
        current = self.centroids.numpy()
        init = current if warm_start and np.any(current) else "kmeans++"
        result = kmeans(blocks.numpy(), int(self.centroids.shape[0]), n_iter=n_iter, seed=seed, init=init)
        self.centroids.assign(result.centroids)

    def noised_kernel(self, kernel):
        """The kernel with Quant-Noise on a Bernoulli(noise_rate) subset of its blocks."""
        blocks = to_blocks(kernel, self._kind, self.block_size)
        mask = block_mask(self.n_blocks, self.noise_rate)
        if self.noise == "proxy":
            noised = proxy_noise(blocks, mask, self.noise_rate)
        elif self.noise == "scalar":
            noised = scalar_noise(blocks, mask, self.num_bits)
        else:
            noised = pq_noise(blocks, mask, self.centroids)
        return from_blocks(noised, self._kind, tuple(kernel.shape), self.block_size)

    def _training_kernel(self, training):
        kernel = getattr(self, self._kernel_attr)
        return smart_cond(resolve_training(training), lambda: self.noised_kernel(kernel),
                          lambda: tf.convert_to_tensor(kernel))

    def _noise_config(self):
        return {"noise_rate": self.initial_noise_rate, "block_size": self.block_size, "noise": self.noise,
                "num_bits": self.num_bits, "n_centroids": self.n_centroids}


@keras.utils.register_keras_serializable(package="tfq_ext")
class QuantNoiseDense(_QuantNoiseMixin, keras.layers.Dense):
    """Dense with Quant-Noise on blocks of ``block_size`` contiguous input features of one output unit.

    Args:
        units, activation, use_bias, ...: as ``keras.layers.Dense``.
        noise_rate: probability p that a block is noised in a training step.
        block_size: block length d (must divide the input features; the iPQ default for Dense is 8).
        noise: "proxy" (drop), "scalar" (int-N) or "pq" (nearest centroid).
        num_bits: bits of the "scalar" noise.
        n_centroids: centroids of the "pq" noise (clamped to n_blocks / 4).
    """

    _kind = "dense"

    def __init__(self, units, noise_rate=0.1, block_size=8, noise="proxy", num_bits=8, n_centroids=256, **kwargs):
        super().__init__(units, **kwargs)
        self._init_noise(noise_rate, block_size, noise, num_bits, n_centroids)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_noise()

    def call(self, inputs, training=None):
        return dense(inputs, self._training_kernel(training), self.bias if self.use_bias else None, self.activation)

    def get_config(self):
        return {**super().get_config(), **self._noise_config()}


@keras.utils.register_keras_serializable(package="tfq_ext")
class QuantNoiseConv2D(_QuantNoiseMixin, keras.layers.Conv2D):
    """Conv2D (channels last) with Quant-Noise; a block is a whole k x k kernel (1x1: ``block_size`` channels).

    Args: as ``keras.layers.Conv2D`` plus those of :class:`QuantNoiseDense`.
    """

    _kind = "conv"

    def __init__(self, filters, kernel_size, noise_rate=0.1, block_size=4, noise="proxy", num_bits=8,
                 n_centroids=256, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        if self.data_format != "channels_last":
            raise ValueError(f"QuantNoiseConv2D supports data_format='channels_last' only. "
                             f"Received: data_format={self.data_format!r}")
        self._init_noise(noise_rate, block_size, noise, num_bits, n_centroids)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_noise()

    def call(self, inputs, training=None):
        outputs = self.convolution_op(inputs, self._training_kernel(training))
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias)
        return self.activation(outputs)

    def get_config(self):
        return {**super().get_config(), **self._noise_config()}


@keras.utils.register_keras_serializable(package="tfq_ext")
class QuantNoiseEmbedding(_QuantNoiseMixin, keras.layers.Embedding):
    """Embedding with Quant-Noise on blocks of ``block_size`` contiguous dims of one row (iPQ default 4)."""

    _kind = "embedding"
    _kernel_attr = "embeddings"

    def __init__(self, input_dim, output_dim, noise_rate=0.1, block_size=4, noise="proxy", num_bits=8,
                 n_centroids=256, **kwargs):
        super().__init__(input_dim, output_dim, **kwargs)
        self._init_noise(noise_rate, block_size, noise, num_bits, n_centroids)

    def build(self, input_shape=None):
        super().build(input_shape)
        self._build_noise()

    def call(self, inputs, training=None):
        if inputs.dtype not in (tf.int32, tf.int64):
            inputs = tf.cast(inputs, tf.int32)
        return tf.nn.embedding_lookup(self._training_kernel(training), inputs)

    def get_config(self):
        return {**super().get_config(), **self._noise_config()}


class QuantNoiseSchedule(keras.callbacks.Callback):
    """Sets every Quant-Noise layer's rate at the start of each epoch: ``rate = schedule(epoch)``.

    Example: ``QuantNoiseSchedule(lambda epoch: min(0.1 * (epoch + 1), 0.5))``.
    """

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def on_epoch_begin(self, epoch, logs=None):
        rate = float(self.schedule(epoch))
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"the noise schedule must return a rate in [0, 1). Received: {rate} at epoch {epoch}")
        for layer in _walk(self.model):
            if isinstance(layer, _QuantNoiseMixin):
                layer.noise_rate.assign(rate)


class QuantNoiseCentroidRefresh(keras.callbacks.Callback):
    """Re-clusters the centroids of every ``noise="pq"`` layer every ``every_n_batches`` training batches.

    The "pq" noise replaces the selected blocks by their nearest centroid; as the weights train, centroids
    computed once at conversion drift away from the k-means of the current kernel. This keeps them current
    (warm-started Lloyd's iterations by default, so a refresh costs ``n_iter`` assignment passes).

    Example: ``model.fit(x, y, callbacks=[QuantNoiseCentroidRefresh(every_n_batches=100)])``.
    """

    def __init__(self, every_n_batches: int = 100, n_iter: int = 5, warm_start: bool = True, seed: int = 0):
        super().__init__()
        if isinstance(every_n_batches, bool) or not isinstance(every_n_batches, int) or every_n_batches < 1:
            raise ValueError(f"`every_n_batches` must be a positive int. "
                             f"Received: every_n_batches={every_n_batches!r}")
        self.every_n_batches = every_n_batches
        self.n_iter = int(n_iter)
        self.warm_start = bool(warm_start)
        self.seed = int(seed)
        self.refreshes = 0
        self._batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if self._batches % self.every_n_batches:
            return
        for layer in _walk(self.model):
            if isinstance(layer, _QuantNoiseMixin) and layer.noise == "pq":
                layer.refresh_centroids(n_iter=self.n_iter, seed=self.seed, warm_start=self.warm_start)
        self.refreshes += 1


def _walk(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _walk(layer)
