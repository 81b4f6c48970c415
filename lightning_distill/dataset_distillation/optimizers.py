"""The optimizers of the synthetic images, as the official code builds them.

Each is a module-level factory ``f(params) -> torch.optim.Optimizer``, the constructor default of
the recipe's ``optimizer`` argument, so that ``lightning-distill ... --print_config`` shows it by
name and ``--model.init_args.optimizer`` (a ``class_path`` with ``init_args``) replaces it.

* :func:`datadam_image_sgd`: DataDAM, SGD lr 1, momentum 0.5.
* :func:`cda_image_adam`: CDA / SRe2L recovery, Adam lr 0.25, betas (0.5, 0.9), eps 1e-8.
* :func:`ftd_image_sgd`: FTD (MTT), SGD lr 1000, momentum 0.5.
* :func:`hello_image_adam`: HeLlO's image update, Adam lr 0.01 (an assumption: HeLlO has no
  official code, and the paper, as far as we could read it, does not state the optimizer).

Plain torch; imports nothing from the package.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["cda_image_adam", "datadam_image_sgd", "ftd_image_sgd", "hello_image_adam"]


def datadam_image_sgd(params: Iterable[Any]) -> torch.optim.SGD:
    """DataDAM's optimizer of the synthetic images: SGD, lr 1, momentum 0.5.

    DataDistillation/DataDAM ``main_DataDAM.py``: ``optimizer_img = torch.optim.SGD([image_syn, ],
    lr=args.lr_img, momentum=0.5)`` with ``--lr_img`` default 1 ("1 for low IPCs 10 for >= 100").
    """
    return torch.optim.SGD(params, lr=1.0, momentum=0.5)


def cda_image_adam(params: Iterable[Any]) -> torch.optim.Adam:
    """CDA's (and SRe2L's) optimizer of the recovered images: Adam, lr 0.25, betas (0.5, 0.9), eps 1e-8.

    VILA-Lab/SRe2L ``CDA/recover_cda_in1k.py``: ``optim.Adam([inputs], lr=args.lr, betas=[0.5, 0.9],
    eps=1e-8)``; lr 0.25 is the ImageNet-1K command of ``CDA/README.md`` (the script's argparse
    default is 0.1; Tiny-ImageNet uses 0.4, ImageNet-21K 0.05). The recipe adds the cosine
    schedule (``lr_schedule: cosine``, the official ``lr_cosine_policy``).
    """
    return torch.optim.Adam(params, lr=0.25, betas=(0.5, 0.9), eps=1e-8)


def ftd_image_sgd(params: Iterable[Any]) -> torch.optim.SGD:
    """FTD's (and MTT's) optimizer of the synthetic images: SGD, lr 1000, momentum 0.5.

    AngusDujw/FTD-distillation ``distill/distill_FTD.py``: ``optimizer_img = torch.optim.SGD([image_syn],
    lr=args.lr_img, momentum=0.5)`` with ``--lr_img`` default 1000 (``run_distill.sh``: 100 for
    CIFAR-10, 1000 for CIFAR-100). The learned step size gets its own group (``FTD.lr_lr``) with
    the same momentum, as the official ``optimizer_lr``.
    """
    return torch.optim.SGD(params, lr=1000.0, momentum=0.5)


def hello_image_adam(params: Iterable[Any]) -> torch.optim.Adam:
    """HeLlO's optimizer of the image update: Adam, lr 0.01.

    Our choice, not the paper's: HeLlO (arXiv 2408.08201) has no official code, and the optimizer
    of its image update is not stated in what we could read.
    """
    return torch.optim.Adam(params, lr=0.01)
