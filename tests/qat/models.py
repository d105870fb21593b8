"""Architectures for the QAT tests: together they use every layer class quantize_model supports."""

from tfq_ext._keras import keras

L = keras.layers


def conv_bn_sequential():
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        L.Conv2D(16, 3, padding="same", use_bias=False), L.BatchNormalization(momentum=0.9), L.ReLU(),
        L.MaxPooling2D(), L.Conv2D(16, 3, padding="same"), L.BatchNormalization(momentum=0.9), L.ReLU(6.0),
        L.GlobalAveragePooling2D(), L.Dense(10, activation="softmax"),
    ], name="conv_bn_sequential")


def residual_functional():
    i = keras.Input((8, 8, 1))
    x = L.Conv2D(16, 3, padding="same")(i)
    x = L.BatchNormalization(momentum=0.9)(x)
    x = L.Activation("relu")(x)
    y = L.Conv2D(16, 3, padding="same")(x)
    y = L.BatchNormalization(momentum=0.9)(y)
    x = L.ReLU()(L.Add()([x, y]))
    g = L.Conv2D(16, 1, activation="sigmoid")(x)
    x = L.Multiply()([x, g])
    x = L.Concatenate()([x, L.Conv2D(8, 1, activation="relu")(x)])
    x = x[..., :20]  # a slicing lambda (SlicingOpLambda), which tfmot refuses
    x = L.Cropping2D(1)(x)
    x = L.AveragePooling2D()(x)
    x = L.GlobalMaxPooling2D()(x)
    x = L.Dense(32)(x)
    x = L.BatchNormalization(momentum=0.9)(x)
    x = L.ReLU()(x)
    return keras.Model(i, L.Dense(10)(x), name="residual_functional")


def _block(name):
    block_in = keras.Input((8, 8, 8))
    b = L.Conv2D(8, 3, padding="same", use_bias=False)(block_in)
    b = L.BatchNormalization(momentum=0.9)(b)
    b = L.ReLU()(b)
    return keras.Model(block_in, L.Add()([block_in, b]), name=name)


def nested_models():
    """A functional block and a Sequential head nested in a functional model, the block itself nested twice."""
    inner = _block("inner_block")
    outer_in = keras.Input((8, 8, 8))
    outer = keras.Model(outer_in, L.ReLU()(inner(outer_in)), name="outer_block")
    head = keras.Sequential([L.Flatten(), L.Dropout(0.1), L.Dense(10)], name="head")
    i = keras.Input((8, 8, 1))
    x = L.Conv2D(8, 3, padding="same", activation="relu")(i)
    return keras.Model(i, head(outer(x)), name="nested_models")


def shared_block_model():
    """The same nested model called twice: after inlining its layers must stay shared."""
    block = _block("block")
    i = keras.Input((8, 8, 1))
    x = L.Conv2D(8, 3, padding="same", activation="relu")(i)
    return keras.Model(i, L.Dense(10)(L.Flatten()(block(block(x)))), name="shared_block")


def image_ops():
    i = keras.Input((8, 8, 1))
    x = L.Rescaling(2.0, offset=-1.0)(i)
    x = L.ZeroPadding2D(1)(x)
    x = L.SeparableConv2D(16, 3, padding="valid")(x)
    x = L.BatchNormalization(momentum=0.9)(x)
    x = L.ReLU()(x)
    x = L.DepthwiseConv2D(3, padding="same", depth_multiplier=1)(x)
    x = L.BatchNormalization(momentum=0.9)(x)
    x = L.ReLU()(x)
    x = L.MaxPooling2D()(x)
    x = L.UpSampling2D()(x)
    x = L.Conv2DTranspose(8, 3, strides=2, padding="same")(x)
    x = L.BatchNormalization(momentum=0.9)(x)
    x = L.ReLU()(x)
    x = L.AveragePooling2D(4)(x)
    x = L.BatchNormalization(momentum=0.9)(x)  # standalone: nothing to fold into
    x = L.Reshape((-1,))(x)
    return keras.Model(i, L.Dense(10)(x), name="image_ops")


def conv1d_dense_bn():
    i = keras.Input((8, 8, 1))
    x = L.Reshape((8, 8))(i)
    x = L.Conv1D(16, 3, padding="same")(x)
    x = L.BatchNormalization(momentum=0.9)(x)
    x = L.ReLU()(x)
    x = L.GlobalMaxPooling1D()(x)
    x = L.Dense(32, use_bias=False)(x)
    x = L.BatchNormalization(momentum=0.9)(x)
    x = L.Activation("relu6")(x)
    x = L.Dropout(0.2)(x)
    return keras.Model(i, L.Dense(10, activation="softmax")(x), name="conv1d_dense_bn")


ARCHITECTURES = {f.__name__: f for f in (conv_bn_sequential, residual_functional, nested_models, image_ops,
                                         conv1d_dense_bn)}
