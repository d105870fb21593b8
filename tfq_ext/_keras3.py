"""Rebuilds Keras 3 models (``import keras``) with tf_keras from their configs and weights.

TensorFlow 2.21's default Keras is Keras 3, but tfmot and tf-gnn work only on the Keras 2 API (``tf_keras``).
``convert_keras3_model`` walks a Keras 3 Sequential or functional graph (nested models included, at any
depth) in topological order and calls the equivalent tf_keras layers on tf_keras symbolic tensors, then copies
every weight by structure. Keras 3 operations recorded in a graph (``x + 3.0``, ``x[..., :2]``, ...) become
the same Python operator or TensorFlow function applied to tf_keras tensors, i.e. the ``TFOpLambda`` layers a
model written with tf_keras has. Activations that tf_keras lacks or computes differently (Keras 3's
``hard_sigmoid`` is relu6(x + 3) / 6, tf_keras' is clip(0.2 x + 0.5, 0, 1)) become an explicit subgraph of
standard layers and ops. Everything refused raises a ``TypeError`` naming the layer or operation.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

import keras as keras3  # only imported once a Keras 3 model reached an entry point
import numpy as np

from tfq_ext import _compat
from tfq_ext._keras import keras, tf
from tfq_ext._keras3_ops import OPS, activation as _activation

__all__ = ["convert_keras3_model", "is_keras3_graph_model", "register_keras3_layer", "register_keras3_op"]

_FUNCTIONAL = "keras.src.models.functional.Functional"
_CONVNEXT_TWINS = {"keras.src.applications.convnext.LayerScale", "keras.src.applications.convnext.StochasticDepth"}
_FIX = ("Rebuild the model with tf_keras (`from tfq_ext._keras import keras`) and copy its weights, or register "
        "a converter: {}.")


class _Rebuilt(NamedTuple):
    call: Callable  # applied to one node's (args, kwargs) on tf_keras tensors
    layer: Any  # the tf_keras layer that receives the Keras 3 layer's weights, or None


_LAYER_CONVERTERS: dict[str, Callable] = {}
_OP_CONVERTERS: dict[str, tuple[Callable, tuple[str, ...]]] = {}


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_keras3_layer(keras3_class, converter: Callable) -> None:
    """Registers how to rebuild a Keras 3 layer class that has no tf_keras twin of the same name.

    Args:
        keras3_class: the Keras 3 layer class (exactly; subclasses do not match), or its ``"module.QualName"``.
        converter: ``converter(layer)`` returns a tf_keras layer, which then gets the Keras 3 layer's weights (same
            number and shapes), or, for a layer without weights, a callable on tf_keras tensors.
    """
    if not callable(converter):
        raise TypeError(f"`converter` must be callable. Received: converter={converter!r}")
    _LAYER_CONVERTERS[keras3_class if isinstance(keras3_class, str) else _qualname(keras3_class)] = converter


def register_keras3_op(class_name: str, converter: Callable, config_keys: tuple[str, ...] = ()) -> None:
    """Registers how to rebuild a Keras 3 operation (``keras.ops``) recorded in a functional graph.

    Args:
        class_name: a ``keras.ops`` operation's class name (``"Add"``, ``"Cumsum"``), or the ``"module.QualName"``
            of one's own ``Operation`` subclass.
        converter: called with the node's arguments (tf_keras tensors, constants) and the config entries named in
            ``config_keys`` as keyword arguments; returns tf_keras tensors.
        config_keys: the config entries it takes; any other entry that is not None makes conversion fail.
    """
    if not callable(converter):
        raise TypeError(f"`converter` must be callable. Received: converter={converter!r}")
    _OP_CONVERTERS[class_name] = (converter, tuple(config_keys))


# ----------------------------------------------------------------------------------------------- layer configs
_TF_LAYER_KWARGS = {"name", "trainable", "dtype", "dynamic", "input_dim", "input_shape", "batch_input_shape",
                    "batch_size", "weights", "activity_regularizer", "autocast", "implementation",
                    "zero_output_for_mask"}  # the last: popped from **kwargs by tf_keras RNN layers
_RANDOMNESS_ONLY = {"seed", "use_cudnn"}  # affect dropout draws or kernel choice, not what the layer computes
_NESTED_LAYER_KEYS = {"layer", "backward_layer", "cell"}
_RENAMED_KEYS = {"LeakyReLU": {"negative_slope": "alpha"}}
# Keras 3 normalizes with tf.nn.batch_normalization; tf_keras' fused kernel rounds differently (about 1e-7 per
# layer), which a deep network can amplify (a randomly initialized EfficientNetV2L: 0.9 of its output range).
_FORCED_KEYS = {"BatchNormalization": {"fused": False}}
_REQUIRED = inspect.Parameter.empty
_KERAS3_HIDDEN_DEFAULTS = {"rms_scaling": False}  # popped from **kwargs: no signature shows these defaults


def _init_parameters(cls: type, stop: type) -> dict[str, Any]:
    """Constructor arguments (name -> default) of ``cls``, following ``**kwargs`` up the MRO to ``stop``."""
    params: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        signature = inspect.signature(init).parameters.values()
        for p in signature:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
                params.setdefault(p.name, p.default)
        if klass is stop or not any(p.kind == p.VAR_KEYWORD for p in signature):
            break
    return params


def _dtype(value, where: str):
    if isinstance(value, dict) and value.get("class_name") not in ("DTypePolicy", "FloatDTypePolicy"):
        raise TypeError(f"{where} has the dtype policy {value.get('class_name')} ({value.get('config')}); quantized "
                        f"Keras 3 layers are not converted. Convert the float model, then quantize it with tfq_ext.")
    return value["config"]["name"] if isinstance(value, dict) else value


def _keras_object(value: dict, key: str):
    """A tf_keras initializer / regularizer / constraint for a Keras 3 one, or None if it cannot be made."""
    module = {"initializer": keras.initializers, "regularizer": keras.regularizers,
              "constraint": keras.constraints}[key.rsplit("_", 1)[-1]]
    cls = getattr(module, value.get("class_name", ""), None)
    if cls is None or not isinstance(cls, type):
        return None
    accepted = _init_parameters(cls, object)
    config = dict(value.get("config") or {})
    if any(k not in accepted and v is not None for k, v in config.items()):
        return None
    return cls(**{k: v for k, v in config.items() if k in accepted})


def _translate(class_name: str, tf_cls: type, k3_cls: type, config: dict, where: str):
    """(tf_keras constructor arguments, activation expansion or None) for a Keras 3 layer config."""
    accepted = _init_parameters(tf_cls, keras.layers.Layer) | dict.fromkeys(_TF_LAYER_KWARGS)
    k3_defaults = dict(_KERAS3_HIDDEN_DEFAULTS)
    k3_defaults.update(_init_parameters(k3_cls, keras3.layers.Layer) if k3_cls is not None else {})
    renamed = _RENAMED_KEYS.get(class_name, {})
    out, post = {}, None
    for key, value in config.items():
        key = renamed.get(key, key)
        if key == "dtype":
            value = _dtype(value, where)
        elif key in ("activation", "recurrent_activation"):
            value, expansion = _activation(value, key, class_name, where)
            post = expansion or post
        elif key.endswith(("_initializer", "_regularizer", "_constraint")) and isinstance(value, dict):
            translated = _keras_object(value, key)
            if translated is None and not key.endswith("_initializer"):  # weights are copied: initializers may go
                raise TypeError(f"{where} has `{key}={value}`, which has no tf_keras equivalent; it would change "
                                f"training. Remove it from the Keras 3 model or rebuild the model with tf_keras.")
            value = translated
        elif key in _NESTED_LAYER_KEYS and isinstance(value, dict) and "class_name" in value:
            value = _nested_layer(value, f"{where}, sub-layer `{key}`")
        elif key == "build_config":
            continue
        if value is None and key.endswith("_initializer"):
            continue
        if key not in accepted:
            if key in _RANDOMNESS_ONLY or k3_defaults.get(key, _REQUIRED) == value or (
                    key == "data_format" and value == "channels_last"):  # tf_keras' only layout there
                continue  # a Keras 3 option left at its default (or randomness only) that tf_keras lacks
            raise TypeError(f"{where} sets the Keras 3 option `{key}={value!r}`, which tf_keras' "
                            f"{tf_cls.__name__} does not have.")
        out[key] = value
    out.update(_FORCED_KEYS.get(class_name, {}))
    return out, post


def _nested_layer(serialized: dict, where: str):
    """A tf_keras layer for a Keras 3 layer serialized inside a wrapper's config (Bidirectional, RNN, ...)."""
    name = serialized["class_name"]
    module = serialized.get("module") or ""
    tf_cls = getattr(keras.layers, name, None)
    if not module.startswith("keras") or not isinstance(tf_cls, type):
        raise TypeError(f"{where} is the Keras 3 layer class {name} (module {module}), which has no tf_keras "
                        f"equivalent.")
    config, post = _translate(name, tf_cls, getattr(keras3.layers, name, None), serialized["config"], where)
    if post is not None:
        raise TypeError(f"{where} uses an activation that tf_keras lacks, inside a wrapper.")
    return _construct(tf_cls, config, where)


def _construct(tf_cls: type, config: dict, where: str):
    # Not from_config: the config holds tf_keras objects (sub-layers, initializers), not their serializations,
    # and some from_config methods expect keys only tf_keras writes (MultiHeadAttention's query_shape).
    try:
        return tf_cls(**config)
    except Exception as exc:  # noqa: BLE001 - re-raised with the layer named
        raise TypeError(f"{where} could not be rebuilt as tf_keras {tf_cls.__name__}: {exc}") from exc


def _with_expansion(new_layer, post: Callable, base: str) -> Callable:
    calls = [0]

    def call(*args, **kwargs):
        name = base if calls[0] == 0 else f"{base}_call{calls[0]}"  # a shared layer expands once per call
        calls[0] += 1
        x = new_layer(*args, **kwargs) if new_layer is not None else args[0]
        return post(x, name)

    return call


def _describe(layer) -> str:
    return f"Keras 3 layer {layer.name!r} (class {type(layer).__name__} from module {type(layer).__module__})"


def _rebuild_layer(layer) -> _Rebuilt:
    """The tf_keras equivalent of one Keras 3 layer that is not a model."""
    cls = type(layer)
    where = _describe(layer)
    converter = _LAYER_CONVERTERS.get(_qualname(cls))
    if converter is not None:
        new = converter(layer)
        if isinstance(new, keras.layers.Layer):
            return _Rebuilt(new, new)
        if layer.weights:
            raise TypeError(f"the converter registered for {where} returned {new!r}, not a tf_keras layer, but the "
                            f"layer has {len(layer.weights)} weights that need a tf_keras layer to go to.")
        return _Rebuilt(new, None)
    if _qualname(cls) in _CONVNEXT_TWINS:  # same name and math in tf_keras' ConvNeXt
        tf_cls = _compat.tf_keras_convnext_layers()[cls.__name__]
    elif cls.__module__.startswith("keras.src.layers.") and cls.__name__ not in ("Lambda", "Layer", "TFSMLayer"):
        tf_cls = getattr(keras.layers, cls.__name__, None)
    else:
        tf_cls = None
    if not isinstance(tf_cls, type):
        raise TypeError(f"{where} has no tf_keras equivalent. " + _FIX.format(
            f"`tfq_ext._keras3.register_keras3_layer({cls.__name__}, fn)`, where `fn(layer)` returns the tf_keras "
            f"layer"))
    config, post = _translate(cls.__name__, tf_cls, cls, layer.get_config(), where)
    if post is not None and cls.__name__ == "Activation":
        return _Rebuilt(_with_expansion(None, post, layer.name), None)  # the expansion replaces the layer
    new = _construct(tf_cls, config, where)
    if post is None:
        return _Rebuilt(new, new)
    return _Rebuilt(_with_expansion(new, post, f"{layer.name}_{layer.get_config()['activation']}"), new)


def _scale_sum(layer) -> Callable:
    scale = layer.get_config()["scale"]
    return lambda inputs: inputs[0] + inputs[1] * scale  # what CustomScaleLayer.call computes


register_keras3_layer("keras.src.applications.inception_resnet_v2.CustomScaleLayer", _scale_sum)


for _name, (_fn, _keys) in OPS.items():
    register_keras3_op(_name, _fn, _keys)


def _rebuild_op(entry: dict, op) -> _Rebuilt:
    name, cls = entry["name"], type(op)
    found = _OP_CONVERTERS.get(_qualname(cls))  # a user's own Operation subclass, registered by full name
    if found is None and cls.__module__.startswith("keras.src.ops."):
        found = _OP_CONVERTERS.get(cls.__name__)
    if found is None:
        raise TypeError(f"Keras 3 operation {name!r} (class {cls.__name__} from module {cls.__module__}) has no "
                        f"tf_keras equivalent in the converter. Supported operations: {sorted(_OP_CONVERTERS)}. "
                        + _FIX.format(f"`tfq_ext._keras3.register_keras3_op({cls.__name__!r}, fn)`"))
    fn, keys = found
    config = entry.get("config") or {}
    extra = {k: v for k, v in config.items() if k not in keys and k != "name" and v is not None}
    if extra:
        raise TypeError(f"Keras 3 operation {name!r} ({cls.__name__}) has the arguments {extra}, which the "
                        f"converter does not rebuild.")
    options = {k: config[k] for k in keys if k in config}
    return _Rebuilt(lambda *args, **kwargs: fn(*args, **options, **kwargs), None)


# ----------------------------------------------------------------------------------------------- graphs
class _NotReady(Exception):
    """A node's input is not computed yet (a layer shared at several depths of the graph)."""


def _decode(value, outputs: dict):
    """A node argument of a Keras 3 functional config with its tensors replaced by tf_keras tensors."""
    if isinstance(value, (list, tuple)):
        return type(value)(_decode(v, outputs) for v in value)
    if not isinstance(value, dict):
        return value
    kind, config = value.get("class_name"), value.get("config") or {}
    if kind == "__keras_tensor__":
        name, node, index = config["keras_history"]
        if node >= len(outputs.get(name, ())):
            raise _NotReady(name)
        return outputs[name][node][index]
    if kind in ("__numpy__", "__tensor__"):  # constants stay constants of the tf_keras graph
        return np.array(config["value"], dtype=config["dtype"])
    if kind == "__slice__":
        return slice(*(_decode(config[k], outputs) for k in ("start", "stop", "step")))
    if kind in ("__ellipsis__", "__bytes__"):
        return Ellipsis if kind == "__ellipsis__" else config["value"].encode("utf-8")
    if kind is not None and "config" in value:
        raise TypeError(f"a layer call of the Keras 3 model takes the argument {value}, which the converter does "
                        f"not rebuild.")
    return {k: _decode(v, outputs) for k, v in value.items()}


def _input(config: dict):
    options = {key: True for key in ("sparse", "ragged", "optional") if config.get(key)}
    return keras.Input(batch_shape=tuple(config["batch_shape"]), dtype=config.get("dtype"), name=config.get("name"),
                       **options)


def _functional_base(model):
    return next((c for c in type(model).__mro__ if _qualname(c) == _FUNCTIONAL), None)


def is_keras3_graph_model(model) -> bool:
    """True for a Keras 3 Sequential or functional model whose graph is its computation (``call`` not overridden)."""
    base = keras3.Sequential if isinstance(model, keras3.Sequential) else _functional_base(model)
    return base is not None and type(model).call is base.call


def _check_graph_model(model, where: str) -> None:
    if not isinstance(model, keras3.Model):
        raise TypeError(f"{where} is a Keras 3 {type(model).__name__}, not a model; pass a Sequential or functional "
                        f"keras.Model.")
    if not is_keras3_graph_model(model):
        raise TypeError(
            f"{where} is a subclassed Keras 3 model (class {type(model).__name__} from module {type(model).__module__})"
            f". Conversion rebuilds a functional or Sequential graph of layers, and a subclassed model's `call()` is "
            f"Python code that exposes no such graph. Wrapping it, as in `inputs = keras.Input(shape); keras.Model("
            f"inputs, model(inputs))`, does not help: the subclassed model stays one opaque layer inside. Rebuild it "
            f"so that its layers are called in a functional graph (`x = keras.Input(shape)`, `y = layer(x)`, ..., "
            f"`keras.Model(x, y)`) or a Sequential model, or build it with tf_keras.")
    if not model.built or not getattr(model, "inputs", None):
        raise ValueError(f"{where} is an unbuilt Keras 3 model. Build it (give it an Input) or rebuild it with "
                         f"tf_keras.")


def _rebuild(op, entry, memo: dict) -> _Rebuilt:
    """The tf_keras equivalent of one operation of a Keras 3 graph; one per object, so sharing is kept."""
    if id(op) not in memo:
        if isinstance(op, keras3.Model):
            rebuilt = _Rebuilt(_convert_model(op, memo, f"the nested Keras 3 model {op.name!r}"), None)
        elif isinstance(op, keras3.layers.Layer):
            rebuilt = _rebuild_layer(op)
        else:
            rebuilt = _rebuild_op(entry, op)
        memo[id(op)] = (op, rebuilt)  # keeps `op` alive so that its id stays unique
    return memo[id(op)][1]


def _convert_sequential(model, memo: dict):
    entries = model.get_config()["layers"]
    if entries and entries[0]["class_name"] == "InputLayer":
        inputs = _input(entries[0]["config"])
    else:  # built with build(input_shape): Keras 3 names that input after a tensor counter
        inputs = keras.Input(batch_shape=tuple(model.inputs[0].shape), dtype=model.inputs[0].dtype)
    rebuilt = [_rebuild(layer, None, memo) for layer in model.layers]
    if all(isinstance(r.call, keras.layers.Layer) for r in rebuilt):
        return keras.Sequential([inputs] + [r.call for r in rebuilt], name=model.name)
    x = inputs  # an activation became several layers: only a functional model can hold them
    for r in rebuilt:
        x = r.call(x)
    return keras.Model(inputs, x, name=model.name)


def _convert_functional(model, memo: dict, where: str):
    config = model.get_config()
    if "layers" not in config:
        raise TypeError(f"{where} is a functional Keras 3 model whose get_config() does not describe its graph "
                        f"(class {type(model).__name__} has its own constructor). Rebuild it as keras.Model(inputs, "
                        f"outputs).")
    entries, operations = config["layers"], list(model.operations)
    if [e["name"] for e in entries] != [op.name for op in operations]:
        raise RuntimeError(f"the config of {where} does not list its operations in order; cannot convert it.")
    outputs: dict[str, list] = {}  # operation name -> flat outputs of each of its calls, in config order
    pending, nested_functional = [], set()
    for entry, op in zip(entries, operations):
        if isinstance(op, keras3.layers.InputLayer):
            outputs[op.name] = [[_input(entry["config"])]]
            continue
        if _functional_base(op) is not None:
            nested_functional.add(op.name)
        if any(not isinstance(node, dict) for node in entry["inbound_nodes"]):
            raise TypeError(f"{where} has a legacy (Keras 2) node format in its config; cannot convert it.")
        pending.append((op.name, _rebuild(op, entry, memo), list(entry["inbound_nodes"])))
    while pending:  # topological order; a shared layer's later call may wait for a deeper one
        progressed = False
        for name, rebuilt, nodes in pending:
            while nodes:
                try:
                    args, kwargs = _decode(nodes[0]["args"], outputs), _decode(nodes[0]["kwargs"], outputs)
                except _NotReady:
                    break
                # Keras 3 records the `training` value it resolved while tracing (True for the random image
                # layers) and lets the model's own `training` override it; left out, tf_keras resolves it alike.
                kwargs.pop("training", None)
                outputs.setdefault(name, []).append(tf.nest.flatten(rebuilt.call(*args, **kwargs)))
                nodes.pop(0)
                progressed = True
        pending = [p for p in pending if p[2]]
        if pending and not progressed:
            raise ValueError(f"the graph of {where} could not be ordered; waiting: {[p[0] for p in pending]}.")

    def tensors(refs):
        if isinstance(refs, (list, tuple)) and len(refs) == 3 and isinstance(refs[0], str):
            name, node, index = refs
            # get_config numbers a nested functional model's calls from 1 in input/output_layers (its own node
            # is 0) but from 0 in the inbound nodes, which is how `outputs` is indexed.
            return outputs[name][node - (name in nested_functional)][index]
        if isinstance(refs, dict):
            return {k: tensors(v) for k, v in refs.items()}
        return [tensors(r) for r in refs]

    return keras.Model(tensors(config["input_layers"]), tensors(config["output_layers"]), name=model.name)


def _convert_model(model, memo: dict, where: str):
    _check_graph_model(model, where)
    if isinstance(model, keras3.Sequential):
        new = _convert_sequential(model, memo)
    else:
        new = _convert_functional(model, memo, where)
    if not model.trainable:
        new.trainable = False  # setting True would also override the layers' own flags, copied from configs
    return new


def _short_name(variable) -> str:
    return variable.name.split("/")[-1].split(":")[0]


def _copy_weights(src, dst) -> None:
    """Copies a Keras 3 layer's weights into its tf_keras rebuild, paired by weight name where names agree."""
    where = _describe(src)
    src_vars, dst_vars = list(src.weights), list(dst.weights)
    src_names, dst_names = [_short_name(v) for v in src_vars], [_short_name(v) for v in dst_vars]
    if len(src_vars) != len(dst_vars):
        raise ValueError(f"{where} has {len(src_vars)} weights {src_names} but its tf_keras rebuild {dst.name!r} "
                         f"({type(dst).__name__}) has {len(dst_vars)} {dst_names}; cannot copy them.")
    order = list(range(len(dst_vars)))
    if src_names != dst_names and sorted(src_names) == sorted(dst_names):
        slots: dict[str, list[int]] = {}
        for j, name in enumerate(dst_names):
            slots.setdefault(name, []).append(j)
        order = [slots[name].pop(0) for name in src_names]
    values = [np.asarray(v) for v in src.get_weights()]
    if isinstance(src, keras3.layers.Normalization):
        # Keras 3 normalizes with the mean and variance it cached when last built, adapted or loaded
        # (finalize_state); assigning the variables does not refresh them, so the cache is what it computes.
        cached = {"mean": src.mean, "variance": src.variance}
        values = [np.reshape(np.asarray(cached[n]), v.shape) if n in cached else v for n, v in zip(src_names, values)]
    target: list = [None] * len(dst_vars)
    for i, j in enumerate(order):
        if tuple(values[i].shape) != tuple(dst_vars[j].shape):
            raise ValueError(f"{where}: weight {src_names[i]!r} has shape {tuple(values[i].shape)}, but the tf_keras "
                             f"weight {dst_vars[j].name!r} it goes to has shape {tuple(dst_vars[j].shape)}.")
        target[j] = values[i]
    dst.set_weights(target)


def convert_keras3_model(model) -> keras.Model:
    """Rebuilds a built Keras 3 Sequential or functional model with tf_keras, with identical outputs.

    Nested models (any depth, shared ones too) become nested tf_keras models, each converted once, so weights stay
    shared. The Keras 3 model is not modified; the result is not compiled.

    Args:
        model: a built Keras 3 Sequential or functional model of built-in layers (and registered ones) and the
            ``keras.ops`` operations this module knows (``register_keras3_op`` adds more).

    Returns:
        A tf_keras Sequential model for a Sequential one whose layers all map one to one, else a functional one,
        with the Keras 3 model's names and weights.

    Raises:
        TypeError: a subclassed model, a layer, operation or layer option without tf_keras equivalent (named, with
            the fix).
        ValueError: an unbuilt model, or weights whose number or shapes do not match.
    """
    memo: dict[int, tuple] = {}
    new = _convert_model(model, memo, f"the Keras 3 model {getattr(model, 'name', model)!r}")
    for src, rebuilt in memo.values():
        if rebuilt.layer is not None:
            _copy_weights(src, rebuilt.layer)
    if len(new.weights) != len(model.weights):
        raise ValueError(f"the tf_keras rebuild of {model.name!r} has {len(new.weights)} weights, the Keras 3 model "
                         f"{len(model.weights)}; a registered converter dropped or added weights.")
    return new
