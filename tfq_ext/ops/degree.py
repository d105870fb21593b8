"""Degree-based protection for Degree-Quant: in-degree CDF per graph and the protection probability.

Each training step, node v takes the full-precision path with probability
``p(v) = p_min + (p_max - p_min) * CDF(in_degree(v))``, the CDF taken over the nodes of v's own graph
(graph component). Nodes with the same in-degree get the same probability, and the node with the highest
in-degree of its graph gets ``p_max``.

Math only, on plain tensors (no tf-gnn): the caller provides in-degrees and the component of every node.

References: Tailor, Fernandez-Marques, Lane, "Degree-Quant", ICLR 2021, arXiv 2008.05000.
"""

from __future__ import annotations

from tfq_ext._keras import tf

__all__ = ["degree_cdf", "protection_probability", "sample_protection"]


def degree_cdf(degree: tf.Tensor, component_ids: tf.Tensor) -> tf.Tensor:
    """Fraction of the nodes of the same component whose degree is <= each node's degree.

    A sort on the key ``(component, degree)`` and two binary searches: O(N log N), no N x N comparison, so a
    single graph with a million nodes works as well as a batch of molecules.

    Args:
        degree: ``[N]`` non-negative degrees (any numeric dtype; rounded to integers).
        component_ids: ``[N]`` component index of every node, non-decreasing (tf-gnn's merged batches are).

    Returns:
        ``[N]`` float32 in (0, 1].
    """
    degree = tf.cast(tf.round(tf.cast(degree, tf.float64)), tf.int64)
    component_ids = tf.cast(component_ids, tf.int64)
    stride = tf.reduce_max(tf.concat([degree, tf.zeros([1], tf.int64)], 0)) + 1
    key = component_ids * stride + degree
    sorted_key = tf.sort(key)[tf.newaxis]
    # Nodes of earlier components sort before this component's first key; subtract them.
    count_le = tf.searchsorted(sorted_key, key[tf.newaxis], side="right", out_type=tf.int64)[0]
    start = tf.searchsorted(sorted_key, (component_ids * stride)[tf.newaxis], side="left", out_type=tf.int64)[0]
    size = tf.math.bincount(tf.cast(component_ids, tf.int32), dtype=tf.int64)
    size = tf.gather(size, component_ids)
    return tf.cast(count_le - start, tf.float32) / tf.cast(tf.maximum(size, 1), tf.float32)


def protection_probability(degree: tf.Tensor, component_ids: tf.Tensor, p_min: float, p_max: float) -> tf.Tensor:
    """``p_min + (p_max - p_min) * CDF(degree)`` per node (see :func:`degree_cdf`)."""
    return p_min + (p_max - p_min) * degree_cdf(degree, component_ids)


def sample_protection(probability: tf.Tensor, seed=None) -> tf.Tensor:
    """Boolean ``[N]`` mask, True where a node is protected (takes the full-precision path) this step."""
    return tf.random.uniform(tf.shape(probability), seed=seed) < probability
