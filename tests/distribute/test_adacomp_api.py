"""tfq_ext.distribute in-process: argument errors, unsupported strategies, and AdaComp without a strategy."""

import numpy as np
import pytest

from tfq_ext._keras import keras, tf
from tfq_ext.distribute import AdaComp, AdaCompLogger, TopK, check_strategy, with_adacomp


def _model():
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
                             keras.layers.Flatten(), keras.layers.Dense(10, name="fc")])


def test_unsupported_strategy_is_a_clear_error():
    strategy = tf.distribute.experimental.CentralStorageStrategy()
    with strategy.scope():
        with pytest.raises(TypeError, match="Received: strategy=CentralStorageStrategy"):
            with_adacomp(keras.optimizers.SGD(0.1))
    with pytest.raises(TypeError, match="MultiWorkerMirroredStrategy"):
        check_strategy(strategy)


def test_supported_strategies_pass():
    check_strategy(tf.distribute.get_strategy())  # the default (no) strategy
    check_strategy(tf.distribute.OneDeviceStrategy("/cpu:0"))
    check_strategy(tf.distribute.MirroredStrategy(["/cpu:0"]))


@pytest.mark.parametrize("optimizer", [keras.optimizers.legacy.SGD(0.1), "sgd", None],
                         ids=["legacy", "string", "none"])
def test_with_adacomp_rejects_non_optimizers(optimizer):
    with pytest.raises(TypeError, match="`optimizer` must be a tf_keras optimizer.*Received: optimizer="):
        with_adacomp(optimizer)


def test_with_adacomp_argument_errors():
    with pytest.raises(TypeError, match="`compressor` must be an AdaComp instance. Received: compressor=3"):
        with_adacomp(keras.optimizers.SGD(0.1), compressor=3)
    with pytest.raises(ValueError, match="either `compressor` or AdaComp keyword arguments"):
        with_adacomp(keras.optimizers.SGD(0.1), compressor=AdaComp(), residual=False)
    with pytest.raises(TypeError, match="`learner_clipping` must be a bool. Received: learner_clipping='yes'"):
        with_adacomp(keras.optimizers.SGD(0.1), learner_clipping="yes")
    # learner_clipping=False keeps tf_keras's clip of the aggregated update.
    legacy = with_adacomp(keras.optimizers.SGD(0.1, global_clipnorm=1.0), learner_clipping=False)
    assert float(tf.linalg.global_norm(legacy._clip_gradients([tf.ones([4]) * 10.0]))) == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"bin_sizes": 0}, ValueError, r"bin_sizes.*>= 1. Received: bin_sizes=0"),
    ({"bin_sizes": 2.5}, TypeError, r"positive integer. Received: bin_sizes=2.5"),
    ({"bin_sizes": {"lstm": 500}}, ValueError, r"keys must be among .*Received: bin_sizes=\{'lstm': 500\}"),
    ({"bin_sizes": {"fc": -1}}, ValueError, r"bin_sizes\['fc'\].*Received: bin_sizes\['fc'\]=-1"),
    ({"residual": "yes"}, TypeError, r"`residual` must be a bool. Received: residual='yes'"),
    ({"quantize": 0}, TypeError, r"`quantize` must be a bool. Received: quantize=0"),
    ({"precondition": "lamb"}, ValueError,
     r"`precondition` must be one of \(None, 'rms', 'momentum', 'adam'\). Received: precondition='lamb'"),
    ({"precondition": "momentum", "momentum": 1.0}, ValueError, r"`momentum` must be a number in \[0, 1\). Received: momentum=1.0"),
    ({"precondition": "rms", "beta_2": 1.0}, ValueError, r"`beta_2` must be a number in \(0, 1\). Received: beta_2=1.0"),
    ({"precondition": "rms", "epsilon": 0}, ValueError, r"`epsilon` must be a positive number. Received: epsilon=0"),
], ids=["zero", "float", "unknown_kind", "negative_fc", "residual_str", "quantize_int", "precondition_name", "momentum", "beta_2", "epsilon"])
def test_adacomp_argument_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        AdaComp(**kwargs)


@pytest.mark.parametrize("rates", [{"conv": 0.5}, {"rnn": 10}, [10]], ids=["below_one", "unknown", "list"])
def test_topk_rate_errors(rates):
    with pytest.raises(ValueError, match="rates"):
        TopK(rates)


def test_logger_errors():
    with pytest.raises(TypeError, match="Received: compressor=3"):
        AdaCompLogger(compressor=3)
    model = _model()
    model.compile(keras.optimizers.SGD(0.1), "mse")
    logger = AdaCompLogger()
    logger.set_model(model)
    with pytest.raises(ValueError, match="found no compressor"):
        logger.on_train_begin()


def test_exchange_needs_replica_context():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        var = tf.Variable(tf.zeros([3]))
    with pytest.raises(RuntimeError, match="replica context"):
        with strategy.scope():
            AdaComp().exchange([(tf.ones([3]), var)])


def test_bin_sizes_defaults_and_int():
    assert AdaComp().bin_sizes == {"conv": 50, "fc": 500, "other": 50}
    assert AdaComp(7).bin_sizes == {"conv": 7, "fc": 7, "other": 7}
    assert AdaComp({"fc": 100}).get_config()["bin_sizes"]["fc"] == 100


def test_fit_without_strategy_and_checkpoint_round_trip(digits, tmp_path):
    model = _model()
    optimizer = with_adacomp(keras.optimizers.Adam(1e-2), bin_sizes={"conv": 8, "fc": 64})
    assert isinstance(optimizer, keras.optimizers.Adam) and optimizer.learning_rate.numpy() == np.float32(1e-2)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    logger = AdaCompLogger()
    history = model.fit(digits.x_train[:512], digits.y_train[:512], batch_size=64, epochs=2, verbose=0,
                        callbacks=[logger])
    assert history.history["loss"][-1] < history.history["loss"][0]
    report = optimizer.adacomp.report()
    assert report["steps"] == 16 and report["wire_reduction"] > 1
    assert [e["steps"] for e in logger.epochs] == [8, 8]
    residuals = optimizer.adacomp.residual_values()
    path = tf.train.Checkpoint(model=model, optimizer=optimizer).write(str(tmp_path / "ckpt"))

    fresh = _model()
    fresh_opt = with_adacomp(keras.optimizers.Adam(1e-2), bin_sizes={"conv": 8, "fc": 64})
    fresh.compile(fresh_opt, "mse")
    tf.train.Checkpoint(model=fresh, optimizer=fresh_opt).read(path).expect_partial()
    fresh_opt.adacomp.build(fresh.trainable_variables)
    restored = fresh_opt.adacomp.residual_values()
    assert set(restored) == set(residuals)
    for key in residuals:
        np.testing.assert_array_equal(restored[key], residuals[key])


def test_no_residual_ablation_keeps_no_state(digits):
    compressor = AdaComp(residual=False)
    model = _model()
    model.compile(with_adacomp(keras.optimizers.SGD(0.05), compressor=compressor),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits.x_train[:256], digits.y_train[:256], batch_size=64, epochs=1, verbose=0)
    assert compressor.report()["steps"] == 4
    assert compressor.residual_values() == {}


def test_topk_sends_a_fixed_number_per_layer(digits):
    compressor = TopK({"conv": 4, "fc": 50})
    model = _model()
    model.compile(with_adacomp(keras.optimizers.SGD(0.05), compressor=compressor),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits.x_train[:256], digits.y_train[:256], batch_size=64, epochs=1, verbose=0)
    report = compressor.report()
    # 4 steps; conv kernel 36 -> ceil(36 / 4) = 9; fc kernel 144 * 10 -> ceil(1440 / 50) = 29; biases (kind
    # "other", rate 1) send all of their 4 + 10 elements.
    assert (report["conv_sent"], report["fc_sent"], report["other_sent"]) == (4 * 9, 4 * 29, 4 * 14)


def test_rms_precondition_needs_plain_sgd():
    with pytest.raises(ValueError, match="optimizer must be SGD.*Received: optimizer=Adam"):
        with_adacomp(keras.optimizers.Adam(1e-3), precondition="rms")
    assert isinstance(with_adacomp(keras.optimizers.SGD(1e-3, momentum=0.9), precondition="rms"),
                      keras.optimizers.SGD)


def test_rms_precondition_matches_a_numpy_reference_and_checkpoints(tmp_path):
    """Two exchanges on one learner: v, the residual and the returned update follow Adam's bias-corrected v."""
    beta_2, eps, bins = 0.9, 1e-7, 4
    var = tf.Variable(tf.zeros([8]), name="w")
    compressor = AdaComp(bins, precondition="rms", beta_2=beta_2, epsilon=eps)
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=8).astype(np.float32) * scale for scale in (1.0, 100.0)]
    v = np.zeros(8)
    residual = np.zeros(8)
    for t, g in enumerate(grads, start=1):
        out = compressor.exchange([(tf.constant(g), var)])[0][0].numpy()
        v = beta_2 * v + (1 - beta_2) * g.astype(np.float64) ** 2
        pre = g / (np.sqrt(v / (1 - beta_2 ** t)) + eps)
        accumulated = residual + pre
        # The rule (per bin of 4): send where |G + g| >= the bin's max |G| of the accumulated residual, as
        # sign x the mean magnitude sent; one learner, so the returned update is what it sent.
        sent = np.zeros(8)
        mask = np.zeros(8, bool)
        for b in range(0, 8, bins):
            top = np.abs(accumulated[b:b + bins]).max()
            mask[b:b + bins] = (np.abs(accumulated[b:b + bins] + pre[b:b + bins]) >= top) & (accumulated[b:b + bins] != 0)
        sent[mask] = np.sign(accumulated[mask]) * np.abs(accumulated[mask]).mean()
        residual = accumulated - sent
        np.testing.assert_allclose(out, sent, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(compressor._moments["w"].variable.numpy(), v, rtol=1e-5)
        np.testing.assert_allclose(compressor.residual_values()["w"][0], residual, rtol=1e-5, atol=1e-6)
    # A gradient 100x larger still gives a unit-scale update: the preconditioner normalises it.
    assert np.abs(out[out != 0]).max() < 10
    path = tf.train.Checkpoint(compressor=compressor).write(str(tmp_path / "ckpt"))
    fresh = AdaComp(bins, precondition="rms", beta_2=beta_2, epsilon=eps)
    tf.train.Checkpoint(compressor=fresh).read(path).expect_partial()
    fresh.build([var])
    np.testing.assert_allclose(fresh._moments["w"].variable.numpy(), v, rtol=1e-5)
    assert float(fresh._moment_steps.variable.numpy()[0]) == 2.0
    np.testing.assert_allclose(fresh.residual_values()["w"][0], residual, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precondition", ["momentum", "adam"])
def test_momentum_precondition_matches_a_numpy_reference_and_checkpoints(tmp_path, precondition):
    """Three exchanges on one learner: the residual accumulates the learner's velocity (of the rms-scaled gradient
    for "adam"), and a sent element's velocity restarts from 0 (momentum correction with factor masking)."""
    momentum, bins, beta_2, eps = 0.9, 4, 0.9, 1e-7
    var = tf.Variable(tf.zeros([8]), name="w")
    compressor = AdaComp(bins, precondition=precondition, momentum=momentum, beta_2=beta_2, epsilon=eps)
    rng = np.random.default_rng(1)
    grads = [rng.normal(size=8).astype(np.float32) * scale for scale in (1.0, 30.0, 1.0)]
    u = np.zeros(8)
    v = np.zeros(8)
    residual = np.zeros(8)
    masked = 0
    for t, g in enumerate(grads, start=1):
        out = compressor.exchange([(tf.constant(g), var)])[0][0].numpy()
        if precondition == "adam":
            v = beta_2 * v + (1 - beta_2) * g.astype(np.float64) ** 2
            g = g / (np.sqrt(v / (1 - beta_2 ** t)) + eps)
        u = momentum * u + g
        accumulated = residual + u
        mask = np.zeros(8, bool)
        for b in range(0, 8, bins):
            top = np.abs(accumulated[b:b + bins]).max()
            mask[b:b + bins] = (np.abs(accumulated[b:b + bins] + u[b:b + bins]) >= top) & (accumulated[b:b + bins] != 0)
        sent = np.zeros(8)
        sent[mask] = np.sign(accumulated[mask]) * np.abs(accumulated[mask]).mean()
        residual = accumulated - sent
        u = np.where(mask, 0.0, u)
        masked += int(mask.sum())
        np.testing.assert_allclose(out, sent, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(compressor._velocities["w"].variable.numpy(), u, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(compressor.residual_values()["w"][0], residual, rtol=1e-5, atol=1e-6)
    assert 0 < masked < 24  # some velocities were reset and some carried over
    path = tf.train.Checkpoint(compressor=compressor).write(str(tmp_path / "ckpt"))
    fresh = AdaComp(bins, precondition=precondition, momentum=momentum, beta_2=beta_2, epsilon=eps)
    tf.train.Checkpoint(compressor=fresh).read(path).expect_partial()
    fresh.build([var])
    np.testing.assert_allclose(fresh._velocities["w"].variable.numpy(), u, rtol=1e-5, atol=1e-6)
    if precondition == "adam":
        np.testing.assert_allclose(fresh._moments["w"].variable.numpy(), v, rtol=1e-5)
    assert fresh.get_config()["momentum"] == momentum


def test_momentum_precondition_needs_sgd_without_momentum():
    with pytest.raises(ValueError, match=r"SGD without momentum .* Received: optimizer=SGD with momentum=0.9"):
        with_adacomp(keras.optimizers.SGD(1e-3, momentum=0.9), precondition="momentum")
    with pytest.raises(ValueError, match=r"SGD without momentum .* Received: optimizer=Adam"):
        with_adacomp(keras.optimizers.Adam(1e-3), precondition="momentum")
    with pytest.raises(ValueError, match=r"precondition='adam'.* Received: optimizer=SGD with momentum=0.9"):
        with_adacomp(keras.optimizers.SGD(1e-3, momentum=0.9), precondition="adam")
    assert isinstance(with_adacomp(keras.optimizers.SGD(1e-3), precondition="momentum"), keras.optimizers.SGD)


def test_momentum_correction_moves_the_sgd_momentum_onto_the_learners():
    opt = with_adacomp(keras.optimizers.SGD(0.5, momentum=0.8), momentum_correction=True, bin_sizes=10)
    assert isinstance(opt, keras.optimizers.SGD) and opt.momentum == 0.0
    assert opt.adacomp.precondition == "momentum" and opt.adacomp.momentum == pytest.approx(0.8)
    assert opt.adacomp.bin_sizes["fc"] == 10 and float(opt.learning_rate) == 0.5
    cases = [(keras.optimizers.Adam(1e-3), {}, ValueError, r"SGD with momentum > 0 .* Received: optimizer=Adam"),
             (keras.optimizers.SGD(0.1), {}, ValueError, r"Received: optimizer=SGD with momentum=0.0"),
             (keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True), {}, ValueError, r"nesterov=True"),
             (keras.optimizers.SGD(0.1, momentum=0.9), {"compressor": AdaComp()}, ValueError,
              r"builds the compressor"),
             (keras.optimizers.SGD(0.1, momentum=0.9), {"momentum_correction": 1}, TypeError,
              r"`momentum_correction` must be a bool. Received: momentum_correction=1")]
    for optimizer, kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            with_adacomp(optimizer, **{"momentum_correction": True, **kwargs})


@pytest.mark.parametrize("clip,reference", [
    ({"global_clipnorm": 1.0}, lambda g: tf.clip_by_global_norm([g], 1.0)[0][0]),
    ({"clipnorm": 0.5}, lambda g: tf.clip_by_norm(g, 0.5)),
    ({"clipvalue": 2.0}, lambda g: tf.clip_by_value(g, -2.0, 2.0)),
], ids=["global_clipnorm", "clipnorm", "clipvalue"])
def test_clipping_happens_before_the_residual_so_no_mass_is_lost(clip, reference):
    """Each step's gradient is clipped, then accumulated; the optimizer does not clip the sparse update again,
    so weights - lr x residual equal -lr x the sum of the clipped gradients (a post-aggregation clip would
    scale down the large sends that residual accumulation produces)."""
    lr, steps = 0.5, 25
    var = tf.Variable(tf.zeros([16]), name="w")
    optimizer = with_adacomp(keras.optimizers.SGD(lr, **clip), bin_sizes=16)  # one bin: few sends, big spikes
    assert optimizer._clip_gradients([tf.ones([3]) * 100.0])[0].numpy().max() == 100.0
    grad = tf.constant(np.linspace(0.2, 3.0, 16), tf.float32)
    largest = 0.0
    for _ in range(steps):
        before = var.numpy().copy()
        optimizer.apply_gradients([(grad, var)])
        largest = max(largest, float(np.linalg.norm(var.numpy() - before)) / lr)
    clipped = reference(grad).numpy()
    residual = optimizer.adacomp.residual_values()["w"][0]
    assert np.abs(residual).max() > 0.1  # mass is waiting in the residual
    np.testing.assert_allclose(var.numpy() - lr * residual, -lr * steps * clipped, rtol=1e-4, atol=1e-4)
    # Some sends were larger than the clipping threshold: clipping them after aggregation would have lost mass.
    assert largest > max(clip.values()) * 1.5


def test_exact_values_ablation_sends_the_selected_residual_values():
    var = tf.Variable(tf.zeros([8]), name="w")
    exact, ternary = AdaComp(4, quantize=False), AdaComp(4)
    grad = tf.constant([0.1, -3.0, 0.5, 0.2, 2.0, 0.0, -0.4, 1.0])
    sent = exact.exchange([(grad, var)])[0][0].numpy()
    quantized = ternary.exchange([(grad, var)])[0][0].numpy()
    # From a zero residual the rule sends |g| >= max_bin |g| / 2; exact: each its own value.
    np.testing.assert_allclose(sent, [0, -3.0, 0, 0, 2.0, 0, 0, 1.0])
    np.testing.assert_allclose(quantized, [0, -2.0, 0, 0, 2.0, 0, 0, 2.0])  # sign x the mean sent magnitude
    np.testing.assert_allclose(exact.residual_values()["w"][0], grad.numpy() - sent)
    assert exact.get_config()["quantize"] is False
    # 32 more bits per sent element on the wire.
    assert exact.report()["other_bits"] == ternary.report()["other_bits"] + 3 * 32
