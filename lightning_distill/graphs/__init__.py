"""Graph toolkit: MUTAG offline, cross-validation data, GNN classifiers, computation trees, mining.

* :func:`load_mutag`, :class:`GraphCVDataModule` (``data.py``): MUTAG from the ``grakel`` wheel
  through torch_geometric's ``TUDataset``; one fold of stratified k-fold cross-validation.
* :class:`GraphClassifier` (``models.py``): GCN / GIN / GAT layers, sum or mean readout over all
  nodes or only the roots of computation trees.
* :func:`train_graph_classifier`, :func:`graph_accuracy`, :class:`GraphClassifierModule`
  (``train.py``): train a GNN on any list of graphs with Lightning and test it.
* :func:`computation_tree`, :func:`canonical_labels`, :func:`build_tree_index` (``trees.py``):
  computation trees of message-passing GNNs and their canonical labels.
* :func:`frequent_itemsets` (``mining.py``): FP-growth (mlxtend).
* :class:`GraphSet`, :func:`random_graph_subset` (``synthetic.py``): a training set of graphs as an
  artifact with its storage size; the random-subset baselines.
"""

from lightning_distill.graphs.data import (
    GraphCVDataModule,
    load_mutag,
    mutag_source_dir,
    prepare_mutag,
    stratified_folds,
)
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
    "GraphCVDataModule",
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
    "load_mutag",
    "mutag_source_dir",
    "prepare_mutag",
    "random_graph_subset",
    "stratified_folds",
    "train_graph_classifier",
    "tree_canonical_label",
]
