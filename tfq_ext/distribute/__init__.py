"""AdaComp adaptive residual gradient compression for data-parallel training on tf.distribute.

``with_adacomp(optimizer)`` makes ``model.fit`` inside a ``MirroredStrategy`` or ``MultiWorkerMirroredStrategy``
scope exchange only sparse (index, sign) entries plus one scale per layer and replica through the strategy's
all-gather collective; ``AdaCompLogger`` logs the bytes exchanged and the compression per layer kind.

References:
    Chen et al., "AdaComp: Adaptive Residual Gradient Compression for Data-Parallel Distributed Training",
    AAAI 2018, arXiv 1712.02679.
"""

from tfq_ext.distribute.callbacks import AdaCompLogger
from tfq_ext.distribute.compressor import DEFAULT_BIN_SIZES, AdaComp, TopK, check_strategy
from tfq_ext.distribute.optimizer import with_adacomp

__all__ = ["DEFAULT_BIN_SIZES", "AdaComp", "AdaCompLogger", "TopK", "check_strategy", "with_adacomp"]
