"""DiffQ on scikit-learn's digits: learn the bits of every group of 8 weights, then export (about 30 seconds).

    python examples/diffq.py      # files go to a fresh temporary folder, printed at the end
"""

import tempfile
from pathlib import Path

import numpy as np

import tflite_export
from tfq_ext import diffq
from tfq_ext._keras import keras
from tfq_ext.data import load_digits

out = Path(tempfile.mkdtemp(prefix="diffq_example_"))
data = load_digits()
layers = keras.layers
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
model = keras.Sequential([
    keras.Input((8, 8, 1)),
    layers.Conv2D(16, 3, padding="same", activation="relu", name="conv"), layers.MaxPooling2D(),
    layers.Flatten(), layers.Dense(64, activation="relu", name="fc"), layers.Dense(10, name="out"),
])
model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
model.fit(data.x_train, data.y_train, epochs=10, verbose=0)
float_accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)[1]

# 1. DiffQ: one bits value per group of 8 weights, learned between 2 and 8 bits; the size penalty (per MB of the
#    packed model) is a regularization loss, so plain model.fit trains it. min_size=0: the reference's 0.01 MB
#    threshold would leave every tensor of this tiny model in float.
qmodel = diffq.apply_diffq(model, group_size=8, min_bits=2, max_bits=8, init_bits=6, penalty=20.0, min_size=0)
# The bits logits get their own Adam (no weight decay), whatever optimizer trains the weights.
qmodel.compile(diffq.DiffQOptimizer(keras.optimizers.Adam(1e-3), bits_learning_rate=2e-2), loss,
               metrics=["accuracy"])
qmodel.fit(data.x_train, data.y_train, epochs=8, verbose=0, callbacks=[diffq.DiffQLogger()])
accuracy = qmodel.evaluate(data.x_test, data.y_test, verbose=0)[1]  # true quantization at inference
print(diffq.size_report(qmodel))
print(f"float accuracy {float_accuracy:.4f}; DiffQ accuracy {accuracy:.4f} at {diffq.mean_bits(qmodel):.2f} "
      f"mean bits, true size {diffq.true_size(qmodel)} bytes")

# 2. Finish on the true grid: the bits are fixed at their rounded values and the weights train on the real
#    rounding (straight-through), so the size does not change and the model adapts to the rounding it will meet.
size = diffq.true_size(qmodel)
diffq.freeze_bits(qmodel)
qmodel.compile(keras.optimizers.Adam(5e-4), loss, metrics=["accuracy"])
qmodel.fit(data.x_train, data.y_train, epochs=3, verbose=0)
assert diffq.true_size(qmodel) == size
frozen_accuracy = qmodel.evaluate(data.x_test, data.y_test, verbose=0)[1]
print(f"after 3 epochs on the true grid (frozen bits): accuracy {frozen_accuracy:.4f} at the same {size} bytes")

# 3. Exports: the packed form (integers + ranges + bits per group; round-trips exactly), a plot of the learned
#    bits, and a full-int8 TFLite file (every group has <= 8 bits).
packed = diffq.export_packed(qmodel, out / "digits.diffq")
assert diffq.PackedModel.from_bytes((out / "digits.diffq").read_bytes()).payload_bytes == diffq.true_size(qmodel)
diffq.plot_bits(diffq.learned_bits(qmodel), out / "digits_bits.png")
flatbuffer = diffq.export_tflite(qmodel, data.x_train[:200])
(out / "digits_diffq_int8.tflite").write_bytes(flatbuffer)
tflite_accuracy = np.mean(np.argmax(tflite_export.run(flatbuffer, data.x_test), 1) == data.y_test)
print(f"packed file {len(packed.to_bytes())} bytes; int8 TFLite {len(flatbuffer)} bytes, accuracy "
      f"{tflite_accuracy:.4f}; plot {out / 'digits_bits.png'}")
