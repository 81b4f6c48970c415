import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from lightning_distill.graphs.visualize import draw_graphs


def _graph(label: int, n: int) -> Data:
    edges = torch.tensor([list(range(n - 1)), list(range(1, n))])
    return Data(x=torch.eye(3)[torch.arange(n) % 3], edge_index=edges, y=torch.tensor([label]))


def test_draw_graphs_is_one_rgb_picture_and_repeatable():
    graphs = [_graph(0, 4), _graph(1, 5), _graph(1, 3)]
    picture = draw_graphs(graphs, per_class=2)
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    assert picture.std() > 0  # something was drawn
    np.testing.assert_array_equal(picture, draw_graphs(graphs, per_class=2))


def test_draw_graphs_refuses_an_empty_set():
    with pytest.raises(ValueError, match="needs graphs"):
        draw_graphs([])
