"""Run by test_mirrored.py in a fresh process: 4 logical CPU devices must be configured before TF uses them.

Prints one JSON line with what the test checks.
"""

import json
import sys

from tfq_ext._keras import keras, tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 4)

import numpy as np  # noqa: E402

from tfq_ext.data import load_digits  # noqa: E402
from tfq_ext.distribute import AdaComp, AdaCompLogger, with_adacomp  # noqa: E402
from tfq_ext.ops import adacomp as ops  # noqa: E402

out_dir = sys.argv[1]
strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(4)])
result = {"replicas": strategy.num_replicas_in_sync}

# 1. One exchange on known per-replica gradients equals the sum of each replica's compressed update.
with strategy.scope():
    variables = [tf.Variable(tf.zeros([6, 5]), name="w"), tf.Variable(tf.zeros([7]), name="b")]
    compressor = AdaComp({"fc": 10, "other": 3})
grads = [np.random.default_rng(r).normal(size=(4, 6, 5)).astype(np.float32) for r in range(2)]


per_replica = ((grads[0].reshape(4, -1), 10), (grads[1].reshape(4, -1)[:, :7], 3))  # (gradients, bin size)


def exchange_once(adacomp):
    """One exchange of the known per-replica gradients; every replica's result."""
    def step():
        r = tf.distribute.get_replica_context().replica_id_in_sync_group
        pairs = [(tf.gather(tf.constant(grads[0]), r), variables[0]),
                 (tf.gather(tf.constant(grads[1].reshape(4, -1)[:, :7]), r), variables[1])]
        return [g for g, _ in adacomp.exchange(pairs)]

    return [strategy.experimental_local_results(t) for t in tf.function(lambda: strategy.run(step))()]


summed = exchange_once(compressor)
expected = []
for g, size in per_replica:
    expected.append(sum(ops.compress_step(tf.zeros_like(g[r]), tf.constant(g[r]), size).sent.numpy()
                        for r in range(4)))
result["exchange_max_error"] = max(float(np.abs(np.reshape(s[r].numpy(), [-1]) - e).max())
                                   for s, e in zip(summed, expected) for r in range(4))
result["exchange_report"] = compressor.report()

# 1b. The exact-values ablation (quantize=False): the sum of every replica's selected residual values.
with strategy.scope():
    exact = AdaComp({"fc": 10, "other": 3}, quantize=False)

exact_summed = exchange_once(exact)
exact_expected = []
for g, size in per_replica:
    masks = [ops.adacomp_mask(tf.constant(g[r]), tf.constant(g[r]), size).numpy() for r in range(4)]
    exact_expected.append(sum(np.where(m, g[r], 0.0) for r, m in enumerate(masks)))
result["exact_exchange_max_error"] = max(float(np.abs(np.reshape(s[r].numpy(), [-1]) - e).max())
                                         for s, e in zip(exact_summed, exact_expected) for r in range(4))

# 2. model.fit with AdaComp on digits.
data = load_digits()
keras.utils.set_random_seed(0)


def make_model():
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
                             keras.layers.Flatten(), keras.layers.Dense(10, name="fc")])


loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
with strategy.scope():
    model = make_model()
    model.compile(with_adacomp(keras.optimizers.SGD(0.05, momentum=0.9)), loss, metrics=["accuracy"])
logger = AdaCompLogger()
history = model.fit(data.x_train, data.y_train, batch_size=64, epochs=3, verbose=0, callbacks=[logger])
result["history"] = {k: [float(x) for x in v] for k, v in history.history.items()}
result["test_accuracy"] = float(model.evaluate(data.x_test, data.y_test, verbose=0)[1])
result["identical_weights"] = all(
    all(np.array_equal(w.values[0].numpy(), c.numpy()) for c in w.values[1:]) for w in model.weights)
result["report"] = model.optimizer.adacomp.report()
residuals = model.optimizer.adacomp.residual_values()
# Residuals are per learner: the four replicas saw different data, so their residuals differ.
result["residuals_differ"] = all(not np.array_equal(v[0], v[1]) for v in residuals.values())
result["is_sgd"] = isinstance(model.optimizer, keras.optimizers.SGD)

# 3. Checkpoint round trip into a fresh model: every replica's residual comes back.
path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(f"{out_dir}/ckpt")
with strategy.scope():
    fresh = make_model()
    fresh.compile(with_adacomp(keras.optimizers.SGD(0.05, momentum=0.9)), loss)
tf.train.Checkpoint(model=fresh, optimizer=fresh.optimizer).read(path).expect_partial()
with strategy.scope():
    fresh.optimizer.adacomp.build(fresh.trainable_variables)
restored = fresh.optimizer.adacomp.residual_values()
result["residuals_restored"] = all(np.array_equal(residuals[k], restored[k]) for k in residuals)

# 4. precondition="rms" (per-learner second moments) with SGD-momentum: trains, replicas stay identical, the
#    moments are per learner, and the update is the mean over the learners.
keras.utils.set_random_seed(0)
with strategy.scope():
    rms_model = make_model()
    rms_model.compile(with_adacomp(keras.optimizers.SGD(2e-3, momentum=0.9), precondition="rms"), loss,
                      metrics=["accuracy"])
rms_history = rms_model.fit(data.x_train, data.y_train, batch_size=64, epochs=3, verbose=0)
result["rms_loss"] = [float(x) for x in rms_history.history["loss"]]
result["rms_test_accuracy"] = float(rms_model.evaluate(data.x_test, data.y_test, verbose=0)[1])
result["rms_identical_weights"] = all(
    all(np.array_equal(w.values[0].numpy(), c.numpy()) for c in w.values[1:]) for w in rms_model.weights)
moments = rms_model.optimizer.adacomp._moments
result["rms_moments_differ"] = all(not np.array_equal(m.variable.values[0].numpy(), m.variable.values[1].numpy())
                                   for m in moments.values())
print("RESULT " + json.dumps(result, default=float))
