"""Kernel codebooks (KQ) on a CNN trained without tfq_ext, on scikit-learn's digits (under a minute).

    python examples/kq.py
"""

import numpy as np

import tflite_export
from tfq_ext._keras import keras
from tfq_ext.data import load_digits
from tfq_ext.kq import quantize_kernels, to_dense_model

data = load_digits()
layers = keras.layers
keras.utils.set_random_seed(0)

# 1. Any plain Keras CNN, trained as usual.
model = keras.Sequential([
    keras.Input((8, 8, 1)),
    layers.Conv2D(16, 3, padding="same", activation="relu"),
    layers.Conv2D(32, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
    layers.Conv2D(32, 3, padding="same", activation="relu"),
    layers.GlobalAveragePooling2D(), layers.Dense(10),
])
model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
model.fit(data.x_train, data.y_train, epochs=10, batch_size=64, verbose=0)
float_accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)[1]

# 2. KQ: K per layer from a budget of 1.5 bits per conv weight (indices, 6-bit codebooks, scales and the small
#    first conv all counted), k-means on the 3x3 kernels, then 3 epochs of codebook fine-tuning.
kq, report = quantize_kernels(model, data.x_train, data.y_train, bits_per_weight=1.5, min_kernels=64,
                              finetune_epochs=3, optimizer=keras.optimizers.Adam(1e-3),
                              validation_data=(data.x_test, data.y_test))
for name, row in report["conv_bits"]["layers"].items():
    print(f"  {name}: {row['method']:<16} {row['bits_per_weight']:.2f} bits per weight")

# 3. Export: plain convs holding the codebook kernels, full-int8 with per-tensor scales (identical kernels stay
#    identical in the file, which tflite_export.compress can share).
flatbuffer = tflite_export.convert(to_dense_model(kq), representative_data=data.x_train[:200], per_channel=False)
accuracy = np.mean(np.argmax(tflite_export.run(flatbuffer, data.x_test), 1) == data.y_test)
print(f"float accuracy {float_accuracy:.4f}; KQ at {report['bits_per_conv_weight']:.2f} bits per conv weight: "
      f"Keras {report['accuracy_after_finetune']:.4f}, int8 TFLite {accuracy:.4f} ({len(flatbuffer)} bytes)")
