"""Pictures of distilled sets for the docs: random real digits next to DataDAM's synthetic ones.

Trains ``recipes/datadam/config.yaml`` (10 images per class, its full 1000 iterations, no
validation) once with seed 0 and writes ``benchmarks/results/dataset_datadam_vs_real.png``: one
column per class, the top rows random real training images (``random_real_subset``), the bottom
rows the synthetic set the fit ends with. About two minutes on one CPU thread.

    python benchmarks/dataset_pictures.py --threads 1
"""

from __future__ import annotations

import tempfile
import time

import torch
from _harness import bench_parser, recipe_cli, results_dir, timed_fit

from lightning_distill.dataset_distillation.baselines import random_real_subset

ROWS = 3  # images per class shown from each set


def build_parser():
    return bench_parser(__file__, __doc__, seeds=None, readme=False)


def _grid(images: torch.Tensor, labels: torch.Tensor, rows: int) -> torch.Tensor:
    """``(rows, K, H, W)``: the first ``rows`` images of each class, standardised per image."""
    classes = labels.unique().tolist()
    picked = torch.stack([images[labels == c][:rows, 0] for c in classes], dim=1)
    flat = picked.flatten(2)
    lo, hi = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    return ((flat - lo) / (hi - lo).clamp_min(1e-8)).view_as(picked)


def main(argv=None) -> None:
    args = build_parser().start(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        extra = ["--trainer.limit_val_batches=0", "--test_after_fit=false"]
        cli = recipe_cli("recipes/datadam/config.yaml", 0, extra, workdir=workdir)
        timed_fit(cli)
        synthetic = cli.model.synthetic
        fake, fake_labels = synthetic.images.detach().float(), synthetic.labels
        real, real_labels = random_real_subset(cli.datamodule, ipc=ROWS, seed=0)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    top, bottom = _grid(real, real_labels, ROWS), _grid(fake, fake_labels, ROWS)
    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 * ROWS, top.shape[1])
    for r in range(2 * ROWS):
        for c in range(top.shape[1]):
            ax = axes[r, c]
            ax.imshow(
                (top if r < ROWS else bottom)[r % ROWS, c].numpy(), cmap="gray", interpolation="nearest"
            )
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(str(c), fontsize=9)
        axes[0, 0].set_ylabel("real", fontsize=9)
        axes[ROWS, 0].set_ylabel("DataDAM", fontsize=9)
    fig.suptitle(
        "scikit-learn digits (8x8): random real images (top) vs DataDAM's set, 10 per class (bottom)",
        fontsize=9,
    )
    out = results_dir(args) / "dataset_datadam_vs_real.png"
    fig.savefig(out)
    print(f"wrote {out} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
