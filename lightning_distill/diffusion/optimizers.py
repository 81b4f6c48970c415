"""The optimizers the diffusion papers' official code uses, as named defaults a config can print and override.

Each is a ``params -> Optimizer`` factory (what LightningCLI's ``OptimizerCallable`` expects), so a
recipe's default shows by name in ``lightning-distill fit ... --print_config`` and
``--model.init_args.optimizer`` replaces it.

* :func:`dmd2_adamw`: DMD2's AdamW (generator and fake score alike);
* :func:`swiftbrush_student_adam`, :func:`swiftbrush_lora_adam`: SwiftBrush's two Adams.

Recipes whose paper publishes no code or no optimizer (Phased DMD, Flash-DMD, Decoupled DMD, MSD)
keep torch's ``AdamW`` and say so in their READMEs.

May import: torch only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["dmd2_adamw", "swiftbrush_lora_adam", "swiftbrush_student_adam"]


def dmd2_adamw(params: Iterable[Any]) -> torch.optim.AdamW:
    """DMD2's optimizer: AdamW, lr 5e-7, betas (0.9, 0.999), weight decay 0.01.

    tianweiy/DMD2 ``main/train_sd.py`` (lines 191-202) builds both optimizers (generator and guidance, i.e. fake
    score) as ``AdamW(lr, betas=(0.9, 0.999), weight_decay=0.01)``; the learning rate is 5e-7 in
    the SD1.5 run with the GAN term (``experiments/sdv1.5/..._lr5e-7_..._gan1e-3_..._resume_fixdata.sh``,
    whose update ratio and GAN weights are the recipe's defaults) and in the SDXL runs, for both
    networks (``--generator_lr`` = ``--guidance_lr``). SD1.5 without the GAN uses 1e-5, ImageNet 2e-6.
    """
    return torch.optim.AdamW(params, lr=5e-7, betas=(0.9, 0.999), weight_decay=0.01)


def swiftbrush_student_adam(params: Iterable[Any]) -> torch.optim.Adam:
    """SwiftBrush's student optimizer: Adam, lr 1e-6, betas (0.9, 0.999), eps 1e-8, no weight decay.

    VinAIResearch/SwiftBrush ``train_swiftbrush.py`` (lines 584-590, ``optimizer_class(unet.parameters(),
    ...)`` with the ``--adam_*`` defaults of lines 251-254) and the training command of its README
    (``--learning_rate 1.e-06``).
    """
    return torch.optim.Adam(params, lr=1e-6, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)


def swiftbrush_lora_adam(params: Iterable[Any]) -> torch.optim.Adam:
    """SwiftBrush's LoRA (fake score) optimizer: Adam, lr 1e-3, betas (0.9, 0.999), eps 1e-8, no weight decay.

    VinAIResearch/SwiftBrush ``train_swiftbrush.py`` (lines 592-598,
    ``optimizer_lora_class(teacher_lora.parameters(), ...)``) and the training command of its README
    (``--learning_rate_lora 1.e-03``).
    """
    return torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
