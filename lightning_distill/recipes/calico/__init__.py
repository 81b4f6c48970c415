"""CALICO (Sun et al., ICLR 2024, arXiv 2306.00349): two stages, two recipes.

* :class:`CALICOPRC` (:mod:`.prc`): stage 1, point-region contrast on LiDAR alone, and
  :func:`prc_teacher`, which builds the frozen stage-1 backbone (checkpoint, cache or trained now).
* :class:`CALICORAD` (:mod:`.rad`): stage 2, region-aware distillation of that backbone into a BEV
  backbone.

Neither recipe subclasses the other: the steps both stages share are parts of
:mod:`lightning_distill.lidar.region_contrast`; the losses are :mod:`lightning_distill.losses.contrastive`.
"""

from lightning_distill.recipes.calico.prc import CALICOPRC, prc_teacher
from lightning_distill.recipes.calico.rad import CALICORAD

__all__ = ["CALICOPRC", "CALICORAD", "prc_teacher"]
