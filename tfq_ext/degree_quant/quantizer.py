"""Degree-Quant's activation quantizer and the quantized dense transform it wraps.

:class:`MaskedRangeQuantizer` fake-quantizes a node- or edge-indexed tensor. In training, rows flagged as
protected pass through in full precision and are left out of the range statistics, so the few high in-degree
nodes whose aggregates are orders of magnitude larger cannot stretch the range that every other node is
quantized with. Ranges are an exponential moving average (momentum 0.01, the reference's) of either the batch
percentiles (Degree-Quant) or the batch min/max (the plain-QAT baseline), always containing 0. At inference
there is no mask and the op is TF's ``FakeQuantWithMinMaxVars``, which the TFLite converter turns into the
tensor's int8 scale and zero point.

References: Tailor, Fernandez-Marques, Lane, "Degree-Quant", ICLR 2021, arXiv 2008.05000; Jacob et al. 2018,
arXiv 1712.05877 (fake quantization, EMA ranges).
"""

from __future__ import annotations

from tfq_ext._compat import resolve_training, smart_cond
from tfq_ext._keras import keras, tf
from tfq_ext.ops.fake_quant import fake_quant
from tfq_ext.ops.ranges import batch_min_max, ema_assign, percentile_min_max
from tfq_ext.qat.folding import FoldedBatchNorm, check_freeze_bn_delay
from tfq_ext.quantizers.affine import IdentityQuantizer, WeightQuantizer

__all__ = ["MaskedRangeQuantizer", "QuantDense", "MODES", "check_settings", "default_settings"]

MODES = ("dq", "qat", "float")
SUPPORTED_BITS = (4, 8)


def default_settings(num_bits: int) -> dict:
    """The paper's settings: INT8 p in [0, 0.1] with 0.1% percentiles, INT4 p in [0.1, 0.2] with 1%."""
    return {8: {"p_min": 0.0, "p_max": 0.1, "percentile": 0.1},
            4: {"p_min": 0.1, "p_max": 0.2, "percentile": 1.0}}[num_bits]


def check_settings(mode, num_bits, p_min=None, p_max=None, percentile=None, ema_decay=0.99) -> dict:
    """Validates the shared Degree-Quant arguments and fills in the per-bit-width defaults."""
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
    if isinstance(num_bits, bool) or num_bits not in SUPPORTED_BITS:
        raise ValueError(f"`num_bits` must be one of {SUPPORTED_BITS} (INT8 exports to TFLite; INT4 is "
                         f"simulated). Received: num_bits={num_bits!r}")
    defaults = default_settings(num_bits)
    p_min = defaults["p_min"] if p_min is None else float(p_min)
    p_max = defaults["p_max"] if p_max is None else float(p_max)
    percentile = defaults["percentile"] if percentile is None else float(percentile)
    for name, value in (("p_min", p_min), ("p_max", p_max)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"`{name}` must be a probability in [0, 1]. Received: {name}={value}")
    if p_min > p_max:
        raise ValueError(f"`p_min` must be <= `p_max`. Received: p_min={p_min}, p_max={p_max}")
    if not 0.0 <= percentile < 50.0:
        raise ValueError(f"`percentile` must be in [0, 50). Received: percentile={percentile}")
    if not 0.0 <= float(ema_decay) < 1.0:
        raise ValueError(f"`ema_decay` must be in [0, 1). Received: ema_decay={ema_decay}")
    return {"mode": mode, "num_bits": int(num_bits), "p_min": p_min, "p_max": p_max, "percentile": percentile,
            "ema_decay": float(ema_decay)}


def _rows(mask: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """A per-row boolean mask broadcast against ``x`` of any rank."""
    return tf.reshape(mask, tf.concat([tf.shape(mask), tf.ones([tf.rank(x) - 1], tf.int32)], 0))


@keras.utils.register_keras_serializable(package="tfq_ext")
class MaskedRangeQuantizer(keras.layers.Layer):
    """Per-tensor asymmetric fake quantization whose range ignores protected rows.

    Args:
        num_bits: 4 or 8.
        range_mode: ``"percentile"`` (Degree-Quant) or ``"minmax"`` (plain QAT).
        percentile: for ``"percentile"``, the share (in %) cut from each tail of the batch distribution.
        ema_decay: decay of the moving average of the batch ranges (the first batch sets them).
        enabled: False makes the layer the identity (the float reference uses the same model code).
    """

    def __init__(self, num_bits: int = 8, range_mode: str = "percentile", percentile: float = 0.1,
                 ema_decay: float = 0.99, enabled: bool = True, **kwargs):
        super().__init__(**kwargs)
        if range_mode not in ("percentile", "minmax"):
            raise ValueError(f"`range_mode` must be 'percentile' or 'minmax'. Received: range_mode={range_mode!r}")
        self.num_bits = int(num_bits)
        self.range_mode = range_mode
        self.percentile = float(percentile)
        self.ema_decay = float(ema_decay)
        self.enabled = bool(enabled)

    def build(self, input_shape):
        def var(name, init, dtype=tf.float32):
            return self.add_weight(name, shape=(), dtype=dtype, trainable=False,
                                   initializer=keras.initializers.Constant(init))

        self.min_var = var("min", 0.0)
        self.max_var = var("max", 0.0)
        self.steps = var("steps", 0, tf.int64)
        super().build(input_shape)

    def _batch_range(self, values):
        if self.range_mode == "percentile":
            return percentile_min_max(values, self.percentile)
        return batch_min_max(values)

    def _update(self, x, protected):
        values = x if protected is None else tf.boolean_mask(x, tf.logical_not(protected))
        # A step where every row is protected has no statistics; the range keeps its value.
        have = tf.size(values) > 0
        lo, hi = tf.cond(have, lambda: self._batch_range(values), lambda: (self.min_var + 0.0, self.max_var + 0.0))
        initialized = self.steps > 0
        new_min = ema_assign(self.min_var, lo, self.ema_decay, initialized)
        new_max = ema_assign(self.max_var, hi, self.ema_decay, initialized)
        with tf.control_dependencies([new_min, new_max]):
            self.steps.assign_add(tf.cast(have, tf.int64))
        quantized = fake_quant(x, new_min, new_max, self.num_bits)
        if protected is None:
            return quantized
        return tf.where(_rows(protected, x), x, quantized)

    def call(self, x, protected=None, training=None):
        if not self.enabled:
            return x
        return smart_cond(resolve_training(training), lambda: self._update(x, protected),
                          lambda: fake_quant(x, self.min_var, self.max_var, self.num_bits))

    def get_config(self):
        return dict(super().get_config(), num_bits=self.num_bits, range_mode=self.range_mode,
                    percentile=self.percentile, ema_decay=self.ema_decay, enabled=self.enabled)


def activation_quantizer(settings: dict, name: str) -> MaskedRangeQuantizer:
    """The activation quantizer for one Degree-Quant site, from :func:`check_settings`' dict."""
    return MaskedRangeQuantizer(
        num_bits=settings["num_bits"], range_mode="percentile" if settings["mode"] == "dq" else "minmax",
        percentile=settings["percentile"], ema_decay=settings["ema_decay"], enabled=settings["mode"] != "float",
        name=name)


@keras.utils.register_keras_serializable(package="tfq_ext")
class QuantDense(keras.layers.Layer):
    """``activation(x @ W + b)`` with W fake-quantized (symmetric, per tensor) and the output quantized.

    Per-tensor weights keep every fully-connected op in the exported file on TFLite's int8 kernels. Used inside
    the Degree-Quant convolutions and as the readout head.

    Args:
        units: output features.
        activation: Keras activation applied before the output quantizer (so TFLite fuses it).
        mode, num_bits, percentile, ema_decay: see :func:`check_settings`.
        quantize_input: also quantize the input (for a head that reads a float pooling result).
        batch_norm: follow the matmul with batch normalization, folded into the kernel the way integer
            inference uses it (:class:`~tfq_ext.qat.folding.FoldedBatchNorm`: the quantized kernel is
            ``W * gamma / sigma_moving``), so the exported op is still one int8 fully-connected op with a bias.
            Replaces the layer's own bias.
        bn_momentum: the batch normalization's moving-statistics momentum.
        freeze_bn_delay: training steps after which the batch normalization uses and keeps its moving
            statistics, so that training sees exactly the inference arithmetic (None: never freeze).
    """

    def __init__(self, units: int, activation=None, *, mode: str = "dq", num_bits: int = 8,
                 percentile: float | None = None, ema_decay: float = 0.99, quantize_input: bool = False,
                 use_bias: bool = True, batch_norm: bool = False, bn_momentum: float = 0.99,
                 freeze_bn_delay: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(units, bool) or not isinstance(units, int) or units < 1:
            raise ValueError(f"`units` must be a positive int. Received: units={units!r}")
        self.settings = check_settings(mode, num_bits, percentile=percentile, ema_decay=ema_decay)
        if not 0.0 <= float(bn_momentum) < 1.0:
            raise ValueError(f"`bn_momentum` must be in [0, 1). Received: bn_momentum={bn_momentum}")
        self.units = units
        self.activation = keras.activations.get(activation)
        self.quantize_input = bool(quantize_input)
        self.use_bias = bool(use_bias)
        self.batch_norm = bool(batch_norm)
        self.bn_momentum = float(bn_momentum)
        self.freeze_bn_delay = check_freeze_bn_delay(freeze_bn_delay)
        self._weights_q = WeightQuantizer(self.settings["num_bits"], per_channel=False)
        self.input_quantizer = activation_quantizer(self.settings, "input_quant") if quantize_input else None
        self.output_quantizer = activation_quantizer(self.settings, "output_quant")

    def build(self, input_shape):
        if self.batch_norm:
            weights = IdentityQuantizer() if self.settings["mode"] == "float" else self._weights_q
            self.folded = FoldedBatchNorm(keras.layers.Dense(self.units, use_bias=False), weight_quantizer=weights,
                                          output_quantizer=IdentityQuantizer(), momentum=self.bn_momentum,
                                          activation=self.activation, freeze_bn_delay=self.freeze_bn_delay,
                                          name="folded_bn")
            self.folded.build(input_shape)
            self.kernel, self.bias = self.folded.kernel, None
        else:
            self.kernel = self.add_weight("kernel", shape=(int(input_shape[-1]), self.units),
                                          initializer="glorot_uniform")
            self.bias = self.add_weight("bias", shape=(self.units,), initializer="zeros") if self.use_bias else None
        super().build(input_shape)

    def call(self, x, protected=None, training=None):
        if self.input_quantizer is not None:
            x = self.input_quantizer(x, protected, training=training)
        if self.batch_norm:
            return self.output_quantizer(self.folded(x, training=training), protected, training=training)
        kernel = self.kernel if self.settings["mode"] == "float" else self._weights_q.quantize(self.kernel)
        y = tf.matmul(x, kernel)
        if self.bias is not None:
            y = y + self.bias
        return self.output_quantizer(self.activation(y), protected, training=training)

    def get_config(self):
        s = self.settings
        return dict(super().get_config(), units=self.units, activation=keras.activations.serialize(self.activation),
                    mode=s["mode"], num_bits=s["num_bits"], percentile=s["percentile"], ema_decay=s["ema_decay"],
                    quantize_input=self.quantize_input, use_bias=self.use_bias, batch_norm=self.batch_norm,
                    bn_momentum=self.bn_momentum, freeze_bn_delay=self.freeze_bn_delay)
