"""Integer-only QAT on scikit-learn's digits, exported to a full-int8 TFLite file (runs in under a minute).

    python examples/qat_int8.py
"""

import numpy as np

import tfq_ext  # noqa: F401  (selects tf_keras before TensorFlow is used)
import tflite_export
from tfq_ext._keras import keras
from tfq_ext.data import load_digits
from tfq_ext.qat import quantize_model

data = load_digits()
layers = keras.layers
model = keras.Sequential([
    keras.Input((8, 8, 1)),
    layers.Conv2D(16, 3, padding="same", use_bias=False), layers.BatchNormalization(), layers.ReLU(),
    layers.MaxPooling2D(), layers.Flatten(), layers.Dense(10),
])
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
model.compile("adam", loss, metrics=["accuracy"])
model.fit(data.x_train, data.y_train, epochs=20, verbose=0)

qat = quantize_model(model, freeze_bn_delay=100)  # BN folded into the conv, frozen after 100 steps
qat.compile(keras.optimizers.Adam(1e-4), loss, metrics=["accuracy"])
qat.fit(data.x_train, data.y_train, epochs=5, verbose=0)

flatbuffer = tflite_export.convert(qat)  # raises unless every tensor is int8/int32
print(tflite_export.verify(flatbuffer))
accuracy = np.mean(np.argmax(tflite_export.run(flatbuffer, data.x_test), 1) == data.y_test)
print(f"float {model.evaluate(data.x_test, data.y_test, verbose=0)[1]:.4f}  int8 TFLite {accuracy:.4f}  "
      f"{len(flatbuffer)} bytes")
