import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfq_ext._keras  # noqa: E402,F401  (chooses tf_keras before anything imports TensorFlow)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's bundled 8x8 digits as float32 images in [0, 1], split 1500 / 297."""
    from tfq_ext.data import load_digits

    return load_digits()


@pytest.fixture(autouse=True)
def _seed():
    import tensorflow as tf

    np.random.seed(0)
    tf.random.set_seed(0)
    yield
