"""Degree-Quant on tensorflow-gnn: INT4 and INT8 GIN on a degree-skewed graph, exported to an INT8 TFLite file.

    python examples/degree_quant.py          (about a minute; needs the `gnn` extra)

The graph is generated (power-law in-degrees: a few hubs aggregate hundreds of neighbours), the task is node
classification. FP32, plain QAT and Degree-Quant train the same GIN for the same number of steps.
"""

import numpy as np

from tfq_ext import graph_data
from tfq_ext._keras import keras
from tfq_ext.degree_quant import GraphInterpreter, convert_graph_model, float_ops
from tfq_ext.degree_quant.models import build_gnn, node_dataset
from tflite_export.graph_ops import remaining_float_ops

graph = graph_data.power_law_graph(num_nodes=600, seed=0)
degree = np.bincount(graph.edges[1], minlength=graph.num_nodes)
print(f"graph: {graph.num_nodes} nodes, {graph.edges.shape[1]} edges, in-degree max {degree.max()}, "
      f"median {int(np.median(degree))}")
train_mask, test_mask = graph_data.train_test_masks(graph.num_nodes, 0.3, seed=0, labels=graph.labels)
train, test = node_dataset(graph, train_mask), node_dataset(graph, test_mask)

models = {}
for name, mode, bits in [("fp32", "float", 8), ("plain QAT int4", "qat", 4), ("Degree-Quant int4", "dq", 4),
                         ("Degree-Quant int8", "dq", 8)]:
    keras.utils.set_random_seed(0)
    # `mode` switches the same GIN between FP32, plain QAT (min/max ranges) and Degree-Quant (protective
    # masking from the in-degree CDF, percentile ranges). Defaults follow the paper: INT8 p in [0, 0.1] with
    # 0.1% percentiles, INT4 p in [0.1, 0.2] with 1%.
    model = build_gnn(train.element_spec[0], graph.num_classes, conv="gin", task="node", units=32, num_layers=2,
                      mode=mode, num_bits=bits)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  weighted_metrics=["accuracy"])
    model.fit(train, epochs=60, verbose=0)
    models[name] = model
    print(f"{name:>18}: test accuracy {model.evaluate(test, verbose=0)[1]:.3f}")

# INT8 export: the model is wrapped so its inputs are plain tensors (node features, edge sources, targets), and
# the aggregations the converter leaves in float become integer custom ops (TfqSegmentSum, TfqSegmentMean, ...).
flatbuffer = convert_graph_model(models["Degree-Quant int8"])
logits = GraphInterpreter(flatbuffer)(graph.features, graph.edges[0], graph.edges[1])  # registers the kernels
accuracy = float(np.mean(logits.argmax(-1)[test_mask] == graph.labels[test_mask]))
print(f"int8 TFLite file: {len(flatbuffer)} bytes, test accuracy {accuracy:.3f}")
print("ops by output dtype:", float_ops(flatbuffer))
print("float ops between input and output:", remaining_float_ops(flatbuffer) or "none")
