"""Graph toolkit: GNN classifiers, computation trees, frequent-pattern mining, graph sets.

* :class:`GraphClassifier` (``models.py``): GCN / GIN / GAT layers, sum or mean readout over all
  nodes or only the roots of computation trees.
* :func:`train_graph_classifier`, :func:`graph_accuracy`, :class:`GraphClassifierModule`
  (``train.py``): train a GNN on any list of graphs with Lightning and test it.
* :func:`computation_tree`, :func:`canonical_labels`, :func:`build_tree_index` (``trees.py``):
  computation trees of message-passing GNNs and their canonical labels.
* :func:`frequent_itemsets` (``mining.py``): FP-growth (mlxtend).
* :class:`GraphSet`, :func:`random_graph_subset` (``synthetic.py``): a training set of graphs as an
  artifact with its storage size; the random-subset baselines.

The data (MUTAG offline, :class:`~lightning_distill.data.graphs.GraphCVDataModule`) lives in
:mod:`lightning_distill.data.graphs`. What this package may import: README.md.
"""

from lightning_distill.graphs.mining import FrequentSet, frequent_itemsets
from lightning_distill.graphs.models import GraphClassifier
from lightning_distill.graphs.synthetic import GraphSet, random_graph_subset
from lightning_distill.graphs.train import (
    GraphClassifierModule,
    graph_accuracy,
    graph_logits,
    train_graph_classifier,
)
from lightning_distill.graphs.trees import (
    LabelVocabulary,
    TreeIndex,
    build_tree_index,
    canonical_labels,
    computation_tree,
    tree_canonical_label,
)

__all__ = [
    "FrequentSet",
    "GraphClassifier",
    "GraphClassifierModule",
    "GraphSet",
    "LabelVocabulary",
    "TreeIndex",
    "build_tree_index",
    "canonical_labels",
    "computation_tree",
    "frequent_itemsets",
    "graph_accuracy",
    "graph_logits",
    "random_graph_subset",
    "train_graph_classifier",
    "tree_canonical_label",
]
