"""Keras model -> full-integer TFLite flatbuffer, checked to be integer-only: ``convert``.

Two paths, chosen by :func:`is_qat_model`:

- A quantization-aware-trained model already carries fake-quant ops whose ranges the converter reads, so
  calibration data is optional. Without it the converter must not be told ``TFLITE_BUILTINS_INT8`` (it then
  demands a representative dataset even for QAT models, measured with TF 2.21).
- A float model gets post-training full-integer quantization: ranges come from calibration samples, and
  ``TFLITE_BUILTINS_INT8`` forbids float kernels where an int8 one exists.

Neither path guarantees an integer-only file: an op without int8 kernel (e.g. CUMSUM) is silently kept in
float between DEQUANTIZE and QUANTIZE nodes even under ``TFLITE_BUILTINS_INT8``. That is why the result is
verified (``tflite_export.report.verify``) and a float tensor raises :class:`ConversionError`.
"""

from __future__ import annotations

import itertools
import logging
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from tfq_ext._keras import ensure_tf_keras_model, keras, tf
from tflite_export.report import ConversionReport, verify

__all__ = [
    "convert", "verify", "is_qat_model", "ConversionError", "ConversionReport", "MAX_CALIBRATION_SAMPLES",
]

MAX_CALIBRATION_SAMPLES = 200
_FORMS = ("an array (N, *input_shape), a list/tuple of arrays (one per input), a dict of arrays by input "
          "name, a tf.data.Dataset or a generator")
_QAT_CLASS_NAMES = {"QuantizeWrapper", "QuantizeWrapperV2", "QuantizeLayer"}
_QAT_MODULE_PREFIXES = ("tfq_ext", "tensorflow_model_optimization")


class ConversionError(RuntimeError):
    """The converted flatbuffer breaks the integer-only rule; ``report`` says where."""

    def __init__(self, message: str, report: ConversionReport | None = None):
        super().__init__(message)
        self.report = report


def _sublayers(layer: Any) -> list:
    """Direct children of a layer: nested models' layers and a wrapper's wrapped layer."""
    children = list(getattr(layer, "layers", None) or [])
    inner = getattr(layer, "layer", None)
    if isinstance(inner, keras.layers.Layer):
        children.append(inner)
    return children


def is_qat_model(model: Any) -> bool:
    """True if ``model`` or any nested layer holds fake-quant ops (tfmot or tfq_ext layers).

    Args:
        model: A Keras model or layer.

    Returns:
        Whether a layer of a ``QuantizeWrapper``/``QuantizeWrapperV2``/``QuantizeLayer`` class, or any class
        defined in a ``tfq_ext`` or ``tensorflow_model_optimization`` module, is reachable from ``model``.
    """
    stack, seen = [model], set()
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        cls, module = type(layer), type(layer).__module__ or ""
        if cls.__name__ in _QAT_CLASS_NAMES or any(
                module == prefix or module.startswith(prefix + ".") for prefix in _QAT_MODULE_PREFIXES):
            return True
        stack.extend(_sublayers(layer))
    return False


class _InputSpec(NamedTuple):
    name: str
    shape: tuple  # per sample, batch axis excluded; None is any size
    dtype: np.dtype


def _input_specs(model: keras.Model) -> list[_InputSpec]:
    names = list(getattr(model, "input_names", None) or [])
    specs = []
    for i, tensor in enumerate(model.inputs):
        name = names[i] if i < len(names) else getattr(tensor, "name", f"input_{i}")
        shape = tuple(tensor.shape.as_list()[1:])
        specs.append(_InputSpec(name, shape, np.dtype(tensor.dtype.as_numpy_dtype)))
    return specs


def _describe(data: Any) -> str:
    if isinstance(data, np.ndarray):
        return f"array of shape {data.shape} and dtype {data.dtype}"
    if isinstance(data, tf.data.Dataset):
        return f"tf.data.Dataset with element_spec {data.element_spec}"
    if isinstance(data, (list, tuple)):
        return f"{type(data).__name__} of {len(data)} items"
    text = repr(data)
    return text if len(text) <= 80 else text[:80] + "..."


def _is_array_like(value: Any) -> bool:
    return isinstance(value, (np.ndarray, tf.Tensor, np.generic)) or (
        hasattr(value, "__array__") and not isinstance(value, (Mapping, list, tuple)))


def _to_numpy(value: Any, where: str, received: str) -> np.ndarray:
    array = value.numpy() if isinstance(value, tf.Tensor) else np.asarray(value)
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(f"{where} must hold real numbers, but has dtype {array.dtype}. "
                        f"Convert it with `.astype('float32')`. Received: representative_data={received}")
    return array


def _per_input(element: Any, specs: list[_InputSpec], where: str, received: str, allow_xy: bool) -> list[Any]:
    """Maps one element (array, tuple/list, dict, or a streamed Keras ``(x, y)`` pair) to one array per input.

    ``(x, y[, sample_weight])`` is accepted only for streamed elements (datasets, generators), where it is the
    training convention; an in-memory list is one array per input, so ``[x, x]`` for one input is an error.
    """
    n = len(specs)
    if isinstance(element, Mapping):
        missing = [s.name for s in specs if s.name not in element]
        if missing:
            raise ValueError(f"{where} is a dict without keys {missing}; expected one "
                             f"key per model input {[s.name for s in specs]}. Received: "
                             f"representative_data={received}")
        return [element[s.name] for s in specs]
    if isinstance(element, (list, tuple)):
        if len(element) == n and all(_is_array_like(e) for e in element):
            return list(element)
        if allow_xy and len(element) in (2, 3) and (n == 1 and _is_array_like(element[0])
                                                    or isinstance(element[0], (list, tuple, Mapping))):
            return _per_input(element[0], specs, where, received, False)  # Keras fit's (x, y[, weights])
        raise ValueError(f"{where} is a {type(element).__name__} of {len(element)} items, but the model has "
                         f"{n} input(s) {[s.name for s in specs]}; give one array per input. Received: "
                         f"representative_data={received}")
    if _is_array_like(element):
        if n != 1:
            raise ValueError(f"{where} is one array, but the model has {n} inputs "
                             f"{[s.name for s in specs]}; give a list with one array per input. Received: "
                             f"representative_data={received}")
        return [element]
    raise TypeError(f"{where} must be {_FORMS}. Received: {type(element).__name__} in "
                    f"representative_data={received}")


def _split(arrays: list[Any], specs: list[_InputSpec], where: str, received: str,
           batched: bool | None) -> list[list[np.ndarray]]:
    """Splits per-input arrays into batch-1 samples, checking dtype and per-sample shape."""
    checked = []
    for value, spec in zip(arrays, specs):
        array = _to_numpy(value, where, received)
        rank = len(spec.shape)
        is_batched = batched if batched is not None else array.ndim == rank + 1
        if not is_batched and array.ndim == rank:
            array = array[None]
        shape_ok = array.ndim == rank + 1 and all(
            e is None or e == a for e, a in zip(spec.shape, array.shape[1:]))
        if not shape_ok:
            single = array.ndim == rank and all(e is None or e == a for e, a in zip(spec.shape, array.shape))
            hint = " If this is a single sample, add a batch axis with `x[None]`." if single else ""
            raise ValueError(
                f"`representative_data` does not match model input {spec.name!r}: expected samples of shape "
                f"{spec.shape} (batch axis first, then this shape; None is any size), but {where} has shape "
                f"{tuple(np.shape(value))}.{hint} Received: representative_data={received}")
        checked.append(array.astype(spec.dtype, copy=False))
    sizes = {a.shape[0] for a in checked}
    if len(sizes) > 1:
        raise ValueError(f"{where} has a different number of samples per input "
                         f"({[a.shape[0] for a in checked]}). Received: representative_data={received}")
    for array, spec in zip(checked, specs):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise ValueError(
                f"{where} contains {bad} non-finite values (NaN or inf) for model input {spec.name!r}; the "
                f"quantization ranges would be meaningless. Remove those samples or replace the values (e.g. "
                f"`np.nan_to_num`). Received: representative_data={received}")
    count = sizes.pop()
    if batched and count > MAX_CALIBRATION_SAMPLES:
        # Evenly spaced samples cover a class-sorted array better than its first rows.
        indices = np.unique(np.linspace(0, count - 1, MAX_CALIBRATION_SAMPLES).round().astype(int))
    else:
        indices = range(count)
    return [[a[i:i + 1] for a in checked] for i in indices]


def _iterate(data: Any) -> Iterator | None:
    """An iterator over the elements of streamed data; None for in-memory arrays (which are iterable too)."""
    if _is_array_like(data):
        return None
    if isinstance(data, tf.data.Dataset):
        return iter(data)
    if callable(data):
        return iter(data())
    if isinstance(data, Iterator):
        return data
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes, Mapping, list, tuple)):
        return iter(data)
    return None


def _calibration_samples(data: Any, model: keras.Model) -> list[list[np.ndarray]]:
    """Validates ``representative_data`` and returns up to 200 batch-1 samples, one array per input."""
    specs = _input_specs(model)
    received = _describe(data)
    if isinstance(data, (str, bytes)):
        raise TypeError(f"`representative_data` must be {_FORMS}. Received: representative_data={received}")
    iterator = _iterate(data)
    if iterator is None:  # in-memory arrays, batch axis first
        where = "`representative_data`"
        samples = _split(_per_input(data, specs, where, received, False), specs, where, received, True)
    else:
        samples = []
        for k, element in enumerate(itertools.islice(iterator, MAX_CALIBRATION_SAMPLES)):
            where = f"element {k} of `representative_data`"
            samples += _split(_per_input(element, specs, where, received, True), specs, where, received, None)
            if len(samples) >= MAX_CALIBRATION_SAMPLES:
                break
        samples = samples[:MAX_CALIBRATION_SAMPLES]
    if not samples:
        raise ValueError(f"`representative_data` is empty; calibration needs samples of the model inputs "
                         f"(about 100-200 are enough). Received: representative_data={received}")
    return samples


def _check_bool(value: Any, arg_name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{arg_name}` must be True or False. Received: {arg_name}={value!r}")
    return bool(value)


def _static_shapes(model: keras.Model, samples: list | None, input_shape: Any) -> list[tuple]:
    """Per input, the per-sample shape the file is converted at: the model's, with every dynamic (None) axis
    taken from ``input_shape`` or, failing that, from the calibration samples."""
    specs = _input_specs(model)
    given: list | None = None
    if input_shape is not None:
        nested = isinstance(input_shape, (list, tuple)) and input_shape and isinstance(input_shape[0], (list, tuple))
        given = [tuple(s) for s in input_shape] if nested else [tuple(input_shape)]
        if len(given) != len(specs) or not all(
                len(g) == len(s.shape) and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                               and v > 0 for v in g) for g, s in zip(given, specs)):
            raise ValueError(
                f"`input_shape` must give one per-sample shape of positive ints (batch axis excluded) per model "
                f"input, matching the rank of {[s.shape for s in specs]}. Received: input_shape={input_shape!r}")
    shapes = []
    for i, spec in enumerate(specs):
        if given is not None:
            if any(e is not None and e != g for e, g in zip(spec.shape, given[i])):
                raise ValueError(f"`input_shape` {given[i]} does not fit model input {spec.name!r} of shape "
                                 f"{spec.shape} (None is any size). Received: input_shape={input_shape!r}")
            shapes.append(tuple(int(v) for v in given[i]))
        elif None not in spec.shape:
            shapes.append(spec.shape)
        elif samples:
            sizes = {tuple(sample[i].shape[1:]) for sample in samples}
            if len(sizes) != 1:
                raise ValueError(f"Model input {spec.name!r} has a dynamic shape {spec.shape} and the calibration "
                                 f"samples have several sizes {sorted(sizes)}; the file is converted at one static "
                                 f"size: pass `input_shape=` or samples of one size.")
            shapes.append(sizes.pop())
        else:
            raise ValueError(
                f"Model input {spec.name!r} has a dynamic shape {spec.shape}: TFLite files for XNNPACK and Edge "
                f"TPU are converted at one static size (a dynamic one leaves shape arithmetic that XNNPACK "
                f"cannot reshape). Pass the size to convert at, e.g. `input_shape=(224, 224, 3)`, or "
                f"`representative_data` of that size. Received: input_shape=None")
    return shapes


def _make_converter(model: keras.Model, shapes: list[tuple]) -> tf.lite.TFLiteConverter:
    """A converter for the model's batch-1 inference graph with its variables frozen into constants.

    Static shapes let the converter fold shape arithmetic (a dynamic Reshape leaves SHAPE/STRIDED_SLICE/PACK
    ops, and TRANSPOSE_CONV gets a computed output shape that XNNPACK refuses to delegate; measured) and are
    what Edge TPU and mobile runtimes expect. Freezing first gives the same file 5-13x faster than letting the
    converter save the Keras model as a SavedModel (measured with TF 2.21: MobileNetV3Small QAT 87 s -> 7 s).
    """
    from tfq_ext._compat import freeze_concrete_function

    specs = [tf.TensorSpec((1,) + shape, tensor.dtype, name=_op_name(spec.name))
             for shape, tensor, spec in zip(shapes, model.inputs, _input_specs(model))]
    if len(specs) == 1:
        function = tf.function(lambda x: model(x, training=False))
    else:
        function = tf.function(lambda *xs: model(list(xs), training=False))
    concrete = function.get_concrete_function(*specs)
    frozen = freeze_concrete_function(concrete)
    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(_no_trackable_warning)
    try:
        return tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    finally:
        absl_logger.removeFilter(_no_trackable_warning)


def _no_trackable_warning(record: logging.LogRecord) -> bool:
    # The converter warns that a function without its trackable object takes its "deprecated" path: that path is
    # exactly the frozen graph wanted here (a trackable would make it save the Keras model first).
    return "trackable_obj" not in record.getMessage()


def _op_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name.split(":")[0]) or "input"


def _add_signature(flatbuffer: bytes, names: list[str]) -> bytes:
    """Adds the ``serving_default`` signature (inputs by Keras input name, outputs ``output_0``, ...) that a
    SavedModel-based conversion writes, and names the inputs ``serving_default_<name>:0`` as it does."""
    from tflite_export import flatbuffer as fb

    tree = fb.read_model(flatbuffer, "flatbuffer")
    if tree.signatureDefs:
        return flatbuffer
    s = fb.schema()
    subgraph = tree.subgraphs[0]
    signature = s.SignatureDefT()
    signature.signatureKey = b"serving_default"
    signature.subgraphIndex = 0
    signature.inputs, signature.outputs = [], []
    for name, index in zip(names, subgraph.inputs):
        entry = s.TensorMapT()
        entry.name, entry.tensorIndex = name.encode("utf-8"), int(index)
        signature.inputs.append(entry)
        subgraph.tensors[index].name = f"serving_default_{name}:0".encode("utf-8")
    for k, index in enumerate(subgraph.outputs):
        entry = s.TensorMapT()
        entry.name, entry.tensorIndex = f"output_{k}".encode("utf-8"), int(index)
        signature.outputs.append(entry)
    tree.signatureDefs = [signature]
    return fb.write_model(tree)


def _run_converter(model: keras.Model, samples: list | None, float_io: bool, per_channel: bool,
                   shapes: list[tuple]) -> bytes:
    converter = _make_converter(model, shapes)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if samples is not None:
        # Fed as a list in the frozen function's argument order, which is the flatbuffer's input order.
        converter.representative_dataset = lambda: iter(samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if not float_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    if hasattr(converter, "_experimental_disable_per_channel"):  # private flag; absent in some releases
        converter._experimental_disable_per_channel = not per_channel
    with warnings.catch_warnings():
        # Emitted for every int8-interface conversion; the input ranges come from calibration or fake quant.
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated")
        try:
            flatbuffer = converter.convert()
        except Exception as exc:  # noqa: BLE001 - the converter raises several unrelated types
            raise ConversionError(f"The TFLite converter failed for model {model.name!r}: {exc}") from exc
    return _add_signature(flatbuffer, [_op_name(spec.name) for spec in _input_specs(model)])


def convert(model: Any, representative_data: Any = None, *, float_io: bool = False, per_channel: bool = True,
            verify: bool = True, input_shape: Any = None, xnnpack_rewrites: bool = True,
            strip: bool = False) -> bytes:
    """Converts a tf_keras model to a full-integer (int8) TFLite flatbuffer.

    A QAT model (see :func:`is_qat_model`) converts from its fake-quant ranges; ``representative_data`` is
    optional and, given, also calibrates ops the fake quant does not cover. A float model is quantized after
    training and needs ``representative_data``.

    Args:
        model: A built tf_keras model (a built Keras 3 Sequential model is rebuilt with tf_keras). It is not
            modified.
        representative_data: Calibration inputs: an array ``(N, *input_shape)``, a list/tuple of arrays (one
            per input), a dict of arrays by input name, a ``tf.data.Dataset`` (batched or not; ``(x, y)``
            elements are accepted) or a generator / generator function yielding such elements. At most 200
            batch-1 samples are used (evenly spaced over an array).
        float_io: Keep float32 inputs/outputs (QUANTIZE/DEQUANTIZE nodes at the edges) instead of int8.
        per_channel: Quantize conv/dense weights per output channel (post-training path).
        verify: Check the result with :func:`tflite_export.report.verify` and raise on float tensors.
        input_shape: The per-sample input shape to convert at (batch axis excluded; a list of shapes for
            several inputs). Needed only for inputs with dynamic axes, e.g. ``(None, None, 3)``, when
            ``representative_data`` does not give the size: the file always has static shapes.
        xnnpack_rewrites: For a float model, first apply the exact rewrites that keep the int8 file in one
            XNNPACK partition (``tfq_ext.qat.float_lowering.lower_for_xnnpack``: hard-swish without HARD_SWISH,
            ``same`` average pools, ReLUs after shared Adds, ...). A QAT model already has them.
        strip: Drop the names of the inner tensors and the converter's metadata (:func:`tflite_export.strip`):
            the same model in fewer bytes, its inputs and outputs still named.

    Returns:
        The flatbuffer bytes.

    Raises:
        TypeError: ``model`` is not a Keras model, or ``representative_data`` is of an unsupported type or
            dtype, or a flag is not a bool.
        ValueError: ``model`` is unbuilt; ``representative_data`` is missing for a float model, empty, of the
            wrong per-sample shape, or holds NaN/inf; a dynamic input shape has no size to convert at, or
            ``input_shape`` does not fit the model.
        ConversionError: The converter failed, or the result holds float tensors where it must not.

    References:
        Jacob et al., Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
        Inference, arXiv:1712.05877 (the int8 scheme with int32 biases that the file follows).
    """
    float_io = _check_bool(float_io, "float_io")
    per_channel = _check_bool(per_channel, "per_channel")
    do_verify = _check_bool(verify, "verify")
    rewrites = _check_bool(xnnpack_rewrites, "xnnpack_rewrites")
    do_strip = _check_bool(strip, "strip")
    model = ensure_tf_keras_model(model, "model")
    qat = is_qat_model(model)
    if representative_data is None and not qat:
        raise ValueError(
            "`representative_data` is required to convert a float model to full integer: the activation "
            "ranges come from calibration samples. Pass about 100-200 training inputs, e.g. "
            "`convert(model, x_train[:200])`, or convert a quantization-aware-trained model. "
            f"Received: representative_data=None for model {model.name!r} without fake-quant layers")
    samples = None if representative_data is None else _calibration_samples(representative_data, model)
    if rewrites and not qat:
        model = _lowered(model)
    shapes = _static_shapes(model, samples, input_shape)
    if samples is not None and input_shape is not None:
        for i, shape in enumerate(shapes):
            if {tuple(sample[i].shape[1:]) for sample in samples} != {shape}:
                raise ValueError(f"`representative_data` samples do not have the shape {shape} given by "
                                 f"`input_shape`. Received: input_shape={input_shape!r}")
    flatbuffer = _run_converter(model, samples, float_io, per_channel, shapes)
    if do_verify:
        report = _verify_report(flatbuffer, float_io)
        if not report.integer_only:
            found = [f"{n} ({d})" for n, d in report.float_tensors] + [
                f"{n} ({d}: {why})" for n, d, why in report.disallowed_tensors]
            suspects = sorted(op for op in report.op_histogram if op not in _COMMON_INT8_OPS)
            listed = "; ".join(found[:10]) + (" ..." if len(found) > 10 else "")
            raise ConversionError(
                f"The converted model of {model.name!r} is not integer-only: {len(found)} tensor(s) break "
                f"the rule: {listed}. Less common ops in the file: {suspects}. Usually an op without int8 "
                f"kernel was left in float between DEQUANTIZE/QUANTIZE; replace it, or pass verify=False to "
                f"keep the file anyway.", report)
    if do_strip:
        from tflite_export.strip import strip as strip_file

        flatbuffer = strip_file(flatbuffer)
    return flatbuffer


def _lowered(model: keras.Model) -> keras.Model:
    """The float model with the XNNPACK rewrites, or the model itself when they do not apply."""
    from tfq_ext.qat.float_lowering import lower_for_xnnpack

    try:
        lowered = lower_for_xnnpack(model)
    except Exception as exc:  # noqa: BLE001 - the rewrites are an optimisation: convert the model as it is
        warnings.warn(f"The XNNPACK rewrites of model {model.name!r} failed ({type(exc).__name__}: {exc}); it is "
                      f"converted as it is, which may leave int8 ops outside XNNPACK. Pass "
                      f"xnnpack_rewrites=False to skip them.", RuntimeWarning, stacklevel=3)
        return model
    return model if lowered is None else lowered


# Ops whose presence is normal in an int8 file; the error message lists the others as suspects.
_COMMON_INT8_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "AVERAGE_POOL_2D",
                    "RESHAPE", "ADD", "MUL", "SOFTMAX", "MEAN", "CONCATENATION", "PAD"}
_verify_report = verify  # `convert` has a parameter named `verify` that shadows the function
