"""Quant-Noise training, then iterative product quantization, on scikit-learn's digits (about a minute).

    python examples/quant_noise_pq.py
"""

import numpy as np

import tfq_ext
import tflite_export
from tfq_ext._keras import keras
from tfq_ext.data import load_digits
from tfq_ext.quant_noise import add_quant_noise, quantize_pq, to_dense_model

data = load_digits()
layers = keras.layers
model = keras.Sequential([
    keras.Input((8, 8, 1)),
    layers.Conv2D(32, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
    layers.Flatten(), layers.Dense(128, activation="relu"), layers.Dense(10),
])
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

# 1. Train with Quant-Noise: each step, 10% of the weight blocks are dropped (the "proxy" noise).
noisy = add_quant_noise(model, noise_rate=0.1, noise="proxy")
noisy.compile("adam", loss, metrics=["accuracy"])
noisy.fit(data.x_train, data.y_train, epochs=15, verbose=0)

# 2. iPQ: layer by layer, k-means on blocks, then fine-tune centroids and the layers not yet quantized.
pq, stages = quantize_pq(noisy, data.x_train, data.y_train, n_centroids=64, finetune_epochs=1, loss=loss,
                         validation_data=(data.x_test, data.y_test))
tfq_ext.size_summary(pq)  # bits per weight and bytes of indices / codebooks per layer

# 3. Export: dense int8 with per-tensor scales keeps identical blocks identical in the file.
flatbuffer = tflite_export.convert(to_dense_model(pq), representative_data=data.x_train[:200], per_channel=False)
accuracy = np.mean(np.argmax(tflite_export.run(flatbuffer, data.x_test), 1) == data.y_test)
print(f"iPQ model: {tfq_ext.model_size(pq).compression:.1f}x smaller than float32, int8 TFLite accuracy "
      f"{accuracy:.4f}")
