"""A picture of a graph set: a few graphs per class, drawn with networkx, as one RGB array."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch_geometric.data import Data

__all__ = ["draw_graphs", "log_graph_set"]


def draw_graphs(graphs: Sequence[Data], per_class: int = 4, seed: int = 0) -> np.ndarray:
    """Up to ``per_class`` graphs of each label, one row per label, nodes coloured by feature argmax.

    Args:
        graphs: graphs with ``x`` ``(N, F)``, ``edge_index`` ``(2, E)`` and ``y``.
        per_class: columns of the picture.
        seed: seed of the spring layout, so the same set draws the same picture.

    Returns:
        ``(H, W, 3)`` uint8.

    Raises:
        ValueError: no graphs, or ``per_class`` < 1.
    """
    if not graphs or per_class < 1:
        raise ValueError(
            f"draw_graphs needs graphs and per_class >= 1, got {len(graphs)} graphs, {per_class}."
        )
    import networkx as nx
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = sorted({int(g.y.reshape(-1)[0]) for g in graphs})
    fig = Figure(figsize=(1.6 * per_class, 1.6 * len(labels)), dpi=80)
    canvas = FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(len(labels), per_class, squeeze=False))
    for row, label in enumerate(labels):
        chosen = [g for g in graphs if int(g.y.reshape(-1)[0]) == label][:per_class]
        for col in range(per_class):
            ax = axes[row, col]
            ax.set_axis_off()
            if col >= len(chosen):
                continue
            g = chosen[col]
            nxg = nx.Graph()
            nxg.add_nodes_from(range(g.num_nodes))
            nxg.add_edges_from(g.edge_index.t().tolist())
            kinds = g.x.argmax(-1).tolist() if g.x.dim() == 2 and g.x.shape[1] > 1 else [0] * g.num_nodes
            pos = nx.spring_layout(nxg, seed=seed)
            nx.draw_networkx(
                nxg,
                pos,
                ax=ax,
                node_size=30,
                with_labels=False,
                node_color=kinds,
                cmap="tab10",
                vmin=0,
                vmax=9,
                width=0.8,
            )
            ax.set_title(f"class {label}", fontsize=7)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def log_graph_set(logger: object, graphs: Sequence[Data], step: int, key: str = "samples/graph_set") -> bool:
    """Log :func:`draw_graphs` of ``graphs`` through a logger with ``log_image`` (W&B); whether it did."""
    log_image = getattr(logger, "log_image", None)
    if not callable(log_image) or not graphs:
        return False
    log_image(key=key, images=[draw_graphs(graphs)], step=step)
    return True
