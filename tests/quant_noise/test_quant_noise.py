"""Quant-Noise layers, k-means, PQ layers, iPQ and size accounting."""

import numpy as np
import pytest

from tfq_ext import model_size
from tfq_ext._keras import keras, tf
from tfq_ext.ops.blocks import from_blocks, to_blocks
from tfq_ext.ops.codebook import gather_mean_grad
from tfq_ext.ops.kmeans import assign, clamp_k, kmeans
from tfq_ext.quant_noise import (PQConv2D, PQDense, PQEmbedding, QuantNoiseCentroidRefresh, QuantNoiseConv2D,
                                 QuantNoiseDense, QuantNoiseEmbedding, QuantNoiseSchedule, add_quant_noise,
                                 quantize_pq, to_dense_model)

L = keras.layers


@pytest.mark.parametrize("kind,shape,block", [("dense", (16, 6), 8), ("conv", (3, 3, 4, 5), 4),
                                              ("conv", (1, 1, 8, 3), 4), ("embedding", (10, 8), 4)],
                         ids=["dense", "conv3x3", "conv1x1", "embedding"])
def test_blocks_round_trip_and_layout(kind, shape, block):
    kernel = tf.constant(np.arange(np.prod(shape), dtype="float32").reshape(shape))
    blocks = to_blocks(kernel, kind, block)
    np.testing.assert_array_equal(from_blocks(blocks, kind, shape, block).numpy(), kernel.numpy())
    if kind == "dense":  # block 0 = first 8 inputs of output unit 0
        np.testing.assert_array_equal(blocks[0].numpy(), kernel.numpy()[:8, 0])
    if kind == "conv" and shape[0] == 3:  # block 0 = the 3x3 kernel of (in 0, out 0)
        np.testing.assert_array_equal(blocks[0].numpy(), kernel.numpy()[:, :, 0, 0].ravel())


def _dense_layer(noise, rate=0.25, units=32, inputs=64, **kw):
    layer = QuantNoiseDense(units, noise_rate=rate, block_size=8, noise=noise, **kw)
    layer.build((None, inputs))
    return layer


def test_proxy_noise_drops_whole_blocks_at_the_expected_rate():
    layer = _dense_layer("proxy", rate=0.25)
    kernel = layer.kernel.numpy()
    blocks = to_blocks(tf.constant(kernel), "dense", 8).numpy()
    dropped = []
    for _ in range(30):
        noised = to_blocks(layer.noised_kernel(layer.kernel), "dense", 8).numpy()
        zero = np.all(noised == 0, axis=1)
        # Survivors are rescaled by 1/(1-p), exactly; dropped blocks are entirely zero.
        np.testing.assert_allclose(noised[~zero], blocks[~zero] / 0.75, rtol=1e-6)
        dropped.append(zero.mean())
    n = 30 * blocks.shape[0]
    # Binomial(n, 0.25): 5 standard deviations.
    assert abs(np.mean(dropped) - 0.25) < 5 * np.sqrt(0.25 * 0.75 / n)


def test_scalar_and_pq_noise_touch_only_selected_blocks():
    for noise in ("scalar", "pq"):
        layer = _dense_layer(noise, rate=0.5, num_bits=2, n_centroids=4)
        blocks = to_blocks(tf.constant(layer.kernel.numpy()), "dense", 8).numpy()
        noised = to_blocks(layer.noised_kernel(layer.kernel), "dense", 8).numpy()
        changed = np.any(noised != blocks, axis=1)
        assert 0.3 < changed.mean() < 0.7
        if noise == "pq":
            centroids = layer.centroids.numpy()
            for row in noised[changed]:
                assert np.min(np.abs(centroids - row).max(axis=1)) < 1e-6  # replaced by a centroid


def test_variable_unchanged_by_training_and_no_noise_at_inference():
    tf.random.set_seed(0)
    model = keras.Sequential([keras.Input((64,)), QuantNoiseDense(10, noise_rate=0.5, block_size=8)])
    layer = model.layers[0]
    x = np.random.default_rng(0).normal(size=(32, 64)).astype("float32")
    before = layer.kernel.numpy().copy()
    model.compile(keras.optimizers.SGD(0.0), "mse")  # lr 0: only the noise could change the variable
    model.fit(x, np.zeros((32, 10)), epochs=2, verbose=0)
    np.testing.assert_array_equal(layer.kernel.numpy(), before)
    np.testing.assert_allclose(model(x, training=False).numpy(), x @ before + layer.bias.numpy(), atol=1e-5)
    assert not np.allclose(model(x, training=True).numpy(), model(x, training=False).numpy())


def test_noise_schedule_sets_rate():
    model = add_quant_noise(keras.Sequential([keras.Input((16,)), L.Dense(8)]), noise_rate=0.1)
    model.compile("sgd", "mse")
    model.fit(np.zeros((8, 16)), np.zeros((8, 8)), epochs=3, verbose=0,
              callbacks=[QuantNoiseSchedule(lambda epoch: 0.1 * (epoch + 1))])
    assert float(model.layers[0].noise_rate) == pytest.approx(0.3)


def test_noise_rate_per_kind_and_per_layer_name():
    inputs = keras.Input((6,), dtype="int32")
    h = L.Embedding(20, 8, name="emb")(inputs)
    h = L.Dense(16, name="attn_q")(h)
    model = keras.Model(inputs, L.Dense(8, name="ffn")(h))
    noisy = add_quant_noise(model, noise_rate={"dense": 0.2, "embedding": 0.05, "attn_q": 0.03})
    rates = {layer.name: float(layer.noise_rate) for layer in noisy.layers if hasattr(layer, "noise_rate")}
    assert rates == pytest.approx({"emb": 0.05, "attn_q": 0.03, "ffn": 0.2})
    # Kinds not named keep the default rate; a float applies to every layer.
    assert float(add_quant_noise(model, noise_rate={"dense": 0.2}).get_layer("emb").noise_rate) == pytest.approx(0.1)
    assert [float(layer.noise_rate) for layer in add_quant_noise(model, noise_rate=0.15).layers
            if hasattr(layer, "noise_rate")] == pytest.approx([0.15] * 3)


@pytest.mark.parametrize("rate,match", [({"dense": 1.5}, r"noise_rate\['dense'\]"), ({"ffn": "high"}, "ffn"),
                                        (-0.1, "noise_rate"), (True, "noise_rate")],
                         ids=["kind-out-of-range", "name-not-a-number", "negative", "bool"])
def test_noise_rate_errors_leave_the_model_untouched(rate, match):
    model = keras.Sequential([keras.Input((16,)), L.Dense(8, name="ffn")])
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=match):
        add_quant_noise(model, noise_rate=rate)
    assert [type(layer).__name__ for layer in model.layers] == ["Dense"]
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_centroid_refresh_callback_tracks_the_moving_kernel():
    rng = np.random.default_rng(0)
    tf.random.set_seed(0)
    fc = QuantNoiseDense(16, noise_rate=0.5, block_size=8, noise="pq", n_centroids=8)
    # A non-pq Quant-Noise layer is left alone (it has no centroids).
    model = keras.Sequential([keras.Input((32,)), fc, QuantNoiseDense(4, noise_rate=0.5, block_size=4)])
    stale = fc.centroids.numpy().copy()
    x, y = rng.normal(size=(64, 32)).astype("float32"), rng.normal(size=(64, 4)).astype("float32")
    refresh = QuantNoiseCentroidRefresh(every_n_batches=2, n_iter=3)
    model.compile(keras.optimizers.SGD(0.1), "mse")  # a large step so that the kernel moves far
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[refresh])
    assert refresh.refreshes == 4  # 8 batches, every 2
    blocks = to_blocks(tf.constant(fc.kernel.numpy()), "dense", 8).numpy()

    def error(centroids):
        return float(((blocks - centroids[assign(blocks, centroids)]) ** 2).sum())

    # The last refresh ran after the last batch: the centroids fit the final kernel better than stale ones.
    assert error(fc.centroids.numpy()) < error(stale)
    with pytest.raises(ValueError, match="every_n_batches"):
        QuantNoiseCentroidRefresh(every_n_batches=0)


def test_kmeans_warm_start_from_given_centroids():
    x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], "float32")
    result = kmeans(x, 2, n_iter=1, init=np.array([[10, 10], [0, 0]], "float32"))
    np.testing.assert_allclose(result.centroids, [[10.0, 10.5], [0.0, 0.5]])  # order kept from the start
    np.testing.assert_array_equal(result.assignments, [1, 1, 0, 0])
    with pytest.raises(ValueError, match="init"):
        kmeans(x, 2, init=np.zeros((3, 2)))


def test_kmeans_golden_two_clusters():
    x = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], "float32")
    result = kmeans(x, 2, seed=3)
    centroids = sorted(map(tuple, result.centroids))
    assert centroids == [(0.0, 0.5), (10.0, 10.5)]
    assert result.inertia == pytest.approx(1.0)
    np.testing.assert_array_equal(assign(x, result.centroids), result.assignments)


def test_kmeans_splits_empty_clusters_and_validates():
    x = np.repeat(np.array([[0.0, 0.0], [5.0, 5.0], [9.0, 0.0]], "float32"), 10, axis=0)
    result = kmeans(x, 6, seed=0, init="random")
    assert np.all(np.isfinite(result.centroids)) and result.inertia == pytest.approx(0.0, abs=1e-6)
    assert clamp_k(256, 100) == 25 and clamp_k(8, 2) == 1
    with pytest.raises(ValueError, match="k"):
        kmeans(x, 31)
    with pytest.raises(ValueError, match="x"):
        kmeans(np.zeros((0, 2)), 1)


def test_centroid_gradient_is_the_mean_of_assigned_blocks():
    centroids = tf.Variable([[1.0, 2.0], [3.0, 4.0]])
    assignments = tf.constant([0, 0, 0, 1])
    upstream = tf.constant([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [5.0, 7.0]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(gather_mean_grad(centroids, assignments) * upstream)
    np.testing.assert_allclose(tape.gradient(loss, centroids).numpy(), [[2.0, 2.0], [5.0, 7.0]])


def test_pq_reproduces_dense_layer_with_k_distinct_blocks():
    rng = np.random.default_rng(0)
    codebook = rng.normal(size=(4, 8)).astype("float32")
    blocks = codebook[rng.integers(0, 4, size=64 * 16 // 8)]
    model = keras.Sequential([keras.Input((64,)), L.Dense(16, name="fc")])
    model.layers[0].kernel.assign(from_blocks(tf.constant(blocks), "dense", (64, 16), 8))
    pq, stages = quantize_pq(model, n_centroids=4, verbose=0, loss="mse")
    x = rng.normal(size=(5, 64)).astype("float32")
    np.testing.assert_allclose(pq(x).numpy(), model(x).numpy(), atol=1e-5)
    assert isinstance(pq.get_layer("fc"), PQDense) and stages[0]["layers"]["fc"]["K"] == 4


def test_size_accounting_golden():
    layer = PQDense(32, block_size=8, n_centroids=16)
    layer.build((None, 64))
    entries = {e.name: e for e in layer.size_entries()}
    assert entries["kernel"].index_bytes == 128     # 256 blocks x 4 bits
    assert entries["kernel"].codebook_bytes == 256  # 16 x 8 float16
    assert entries["bias"].other_bytes == 128
    int8 = PQDense(32, block_size=8, n_centroids=16, int8_codebook=True)
    int8.build((None, 64))
    assert int8.size_entries()[0].codebook_bytes == 16 * 8 + 4
    model = keras.Sequential([keras.Input((64,)), layer, L.Dense(4)])
    report = model_size(model)
    assert report.bytes == 128 + 256 + 128 + 4 * (32 * 4 + 4)
    assert report.params == 64 * 32 + 32 + 32 * 4 + 4
    assert "compression vs float32" in str(report)


@pytest.mark.parametrize("layer,shape", [
    (QuantNoiseConv2D(8, 3, noise_rate=0.2, noise="pq", n_centroids=4), (None, 6, 6, 4)),
    (QuantNoiseEmbedding(20, 8, noise_rate=0.2, noise="scalar"), (None, 5)),
    (PQConv2D(8, 3, padding="same", n_centroids=4, int8_codebook=True), (None, 6, 6, 4)),
    (PQEmbedding(20, 8, n_centroids=8), (None, 5)),
], ids=["qn-conv", "qn-embedding", "pq-conv", "pq-embedding"])
def test_save_load_round_trip(layer, shape, tmp_path):
    inputs = keras.Input(shape[1:], dtype="int32" if len(shape) == 2 else "float32")
    model = keras.Model(inputs, layer(inputs))
    x = (np.random.default_rng(0).integers(0, 20, (3,) + shape[1:]) if len(shape) == 2
         else np.random.default_rng(0).normal(size=(3,) + shape[1:]).astype("float32"))
    for fmt in ("m.keras", "m.h5"):
        model.save(tmp_path / fmt)
        again = keras.models.load_model(tmp_path / fmt)
        np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize("make,match", [
    (lambda: QuantNoiseDense(4, block_size=5).build((None, 64)), "block_size"),
    (lambda: QuantNoiseDense(4, noise="dropout"), "noise"),
    (lambda: QuantNoiseDense(4, noise_rate=1.0), "noise_rate"),
    (lambda: PQDense(4, block_size=8, n_centroids=64).build((None, 16)), "n_centroids"),
], ids=["block-not-dividing", "bad-noise", "bad-rate", "k-too-large"])
def test_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_quantize_pq_clamps_k_with_warning_and_exports(digits):
    model = keras.Sequential([keras.Input((8, 8, 1)), L.Conv2D(8, 3, activation="relu"), L.Flatten(),
                              L.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(digits.x_train, digits.y_train, epochs=2, verbose=0)
    with pytest.warns(UserWarning, match="clamped"):
        pq, _ = quantize_pq(add_quant_noise(model), digits.x_train, digits.y_train, n_centroids=64,
                            finetune_epochs=0.5, verbose=0, loss=model.loss)
    dense = to_dense_model(pq)
    x = digits.x_test[:20]
    np.testing.assert_allclose(dense.predict(x, verbose=0), pq.predict(x, verbose=0), atol=1e-5)
    with pytest.raises(ValueError, match="stages"):
        quantize_pq(model, stages=[["nope"]], verbose=0)
