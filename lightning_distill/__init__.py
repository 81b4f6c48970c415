"""lightning_distill: distillation recipes as PyTorch Lightning modules built from shared parts."""

from lightning_distill.module import DistillationModule, teacher_source

__version__ = "0.1.0"

__all__ = ["DistillationModule", "__version__", "teacher_source"]
