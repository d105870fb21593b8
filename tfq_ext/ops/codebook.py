"""Codebook lookups with the centroid gradient of iPQ: the MEAN of the gradients of the blocks assigned to it.

``tf.gather``'s gradient sums over the blocks, so a centroid shared by many blocks would take a step that many
times larger than a rarely used one (fairseq's PQLinear does this; it is a bug). Here the summed gradient is
divided by the centroid's block count.

Forward: blocks = centroids[assignments]. Backward: dL/dc_k = mean over {i: a_i = k} of dL/db_i.

References: Stock et al. 2020, arXiv 1907.05686, Sec. 3.
"""

from __future__ import annotations

from tfq_ext._keras import tf

__all__ = ["gather_mean_grad"]


def gather_mean_grad(centroids: tf.Tensor, assignments: tf.Tensor) -> tf.Tensor:
    """``tf.gather(centroids, assignments)`` whose gradient w.r.t. ``centroids`` is averaged per centroid."""
    k = tf.shape(centroids)[0]
    assignments = tf.cast(assignments, tf.int32)

    @tf.custom_gradient
    def _gather(params):
        def grad(dy):
            sums = tf.math.unsorted_segment_sum(dy, assignments, k)
            counts = tf.math.unsorted_segment_sum(tf.ones_like(assignments, dy.dtype), assignments, k)
            return sums / tf.maximum(counts, 1.0)[:, None]

        return tf.gather(params, assignments), grad

    return _gather(centroids)
