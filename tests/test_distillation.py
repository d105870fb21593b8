"""tfq_ext.DistillationLoss and distillation_targets: numpy references, serialization, errors."""

import numpy as np
import pytest

from tfq_ext._keras import keras
from tfq_ext._training import DistillationLoss, distillation_targets


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _reference(labels, teacher_log_probs, student_logits, alpha, t):
    ce = -_log_softmax(student_logits)[np.arange(len(labels)), labels]
    pt = _log_softmax(teacher_log_probs / t)
    ps = _log_softmax(student_logits / t)
    kl = (np.exp(pt) * (pt - ps)).sum(axis=-1)
    return np.mean(alpha * ce + (1 - alpha) * t * t * kl)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 16)
    teacher = _log_softmax(rng.normal(size=(16, 5)) * 3)
    student = rng.normal(size=(16, 5)) * 2
    y_true = np.concatenate([labels[:, None], teacher], axis=1).astype("float32")
    return labels, teacher, student, y_true


@pytest.mark.parametrize("alpha,t", [(0.5, 2.0), (0.0, 1.0), (0.3, 4.0)])
def test_loss_matches_numpy_reference(batch, alpha, t):
    labels, teacher, student, y_true = batch
    got = float(DistillationLoss(alpha=alpha, temperature=t)(y_true, student.astype("float32")))
    np.testing.assert_allclose(got, _reference(labels, teacher, student, alpha, t), rtol=1e-5)


def test_probability_outputs_give_the_same_loss_as_their_logits(batch):
    _, _, student, y_true = batch
    probs = np.exp(_log_softmax(student)).astype("float32")
    a = float(DistillationLoss(from_logits=True)(y_true, student.astype("float32")))
    b = float(DistillationLoss(from_logits=False)(y_true, probs))
    np.testing.assert_allclose(a, b, rtol=1e-4)


def test_alpha_one_is_the_labels_cross_entropy(batch):
    labels, _, student, y_true = batch
    want = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, student))
    np.testing.assert_allclose(float(DistillationLoss(alpha=1.0)(y_true, student.astype("float32"))), want, rtol=1e-5)


def test_a_student_equal_to_its_teacher_pays_only_the_label_term(batch):
    labels, teacher, _, y_true = batch
    got = float(DistillationLoss(alpha=0.0, temperature=3.0)(y_true, teacher.astype("float32")))
    assert abs(got) < 1e-5


def test_config_round_trip():
    loss = DistillationLoss(from_logits=False, alpha=0.25, temperature=3.0)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, DistillationLoss)
    assert (again.from_logits, again.alpha, again.temperature) == (False, 0.25, 3.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(alpha=1.5), "alpha"), (dict(alpha=True), "alpha"), (dict(alpha="0.5"), "alpha"),
    (dict(temperature=0), "temperature"), (dict(temperature=-1.0), "temperature"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistillationLoss(**kwargs)


def test_targets_hold_the_label_then_the_teachers_log_probabilities():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(1).normal(size=(20, 6)).astype("float32")
    y = np.arange(20) % 3
    for activation, from_logits in ((None, True), ("softmax", False)):
        teacher = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation=activation)])
        targets = distillation_targets(teacher, x, y, from_logits=from_logits)
        assert targets.shape == (20, 4) and targets.dtype == np.float32
        np.testing.assert_array_equal(targets[:, 0], y)
        np.testing.assert_allclose(np.exp(targets[:, 1:]).sum(axis=1), 1.0, rtol=1e-5)
        probs = teacher.predict(x, verbose=0)
        if from_logits:
            probs = np.exp(_log_softmax(probs))
        np.testing.assert_allclose(np.exp(targets[:, 1:]), probs, rtol=1e-4, atol=1e-6)


def test_targets_refuse_mismatched_labels_and_non_classifier_teachers():
    x = np.zeros((4, 6), "float32")
    teacher = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="one label per example"):
        distillation_targets(teacher, x, np.zeros(3, int))
    seq = keras.Sequential([keras.Input((6,)), keras.layers.Reshape((3, 2))])
    with pytest.raises(ValueError, match=r"\(batch, classes\)"):
        distillation_targets(seq, x, np.zeros(4, int))
