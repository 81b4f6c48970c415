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


def test_log_graph_set_logs_one_picture_only_through_a_logger_that_takes_images():
    from lightning_distill.graphs.visualize import log_graph_set

    class Recorder:
        def __init__(self):
            self.calls = []

        def log_image(self, key, images, step):
            self.calls.append((key, len(images), step))

    recorder = Recorder()
    assert log_graph_set(recorder, [_graph(0, 4)], step=3)
    assert recorder.calls == [("samples/graph_set", 1, 3)]
    assert not log_graph_set(object(), [_graph(0, 4)], step=3)  # e.g. a CSV logger
