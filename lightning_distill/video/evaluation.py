"""`VideoMetrics`: the moving-glyph evaluation a config lists as a callback (toy bench only).

At the end of validation and test it draws ``num_samples`` student videos for the labels of the
datamodule's held-out videos (:meth:`sample` of the recipe, noise seeded ``evaluation_seed``) and logs
``<stage>/{frame_fcd, motion_error, temporal_consistency, appearance_fcd}``
(:func:`~lightning_distill.video.metrics.video_metrics`); once per run the same for the teacher's
sampler from the same labels (``<stage>/teacher_*``) and for the held-out data itself (``<stage>/data_*``,
the floor). It saves a GIF grid of the samples under the trainer's log directory and logs it as a
W&B video when the logger is a ``WandbLogger``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from lightning_distill.video.metrics import video_metrics
from lightning_distill.video.pictures import log_video, save_gif

__all__ = ["VideoMetrics"]


class VideoMetrics(Callback):
    """Per-frame FCD, motion error, temporal consistency (and appearance FCD) of the student's videos.

    Args:
        classifier: the frame feature network (``None``: the digits classifier at the frame size, trained
            on first use: :func:`~lightning_distill.models.digits.digits_classifier`).
        num_samples: videos per evaluation (at most the held-out split's size).
        teacher: also score the teacher's sampler once per run.
        gif: save a GIF grid of the samples.

    Raises:
        ValueError: ``num_samples`` < 2.
    """

    def __init__(
        self,
        classifier: nn.Module | None = None,
        num_samples: int = 64,
        teacher: bool = True,
        gif: bool = True,
    ) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
            raise ValueError(f"`num_samples` must be an integer >= 2, got {num_samples!r}.")
        self.classifier, self.num_samples, self.teacher, self.gif = classifier, num_samples, teacher, gif
        self._reference_logged: set[str] = set()

    def _classifier(self, size: int) -> nn.Module:
        if self.classifier is None:
            from lightning_distill.models.digits import digits_classifier

            with torch.enable_grad():  # trained on first use, inside the no-grad evaluation
                self.classifier = digits_classifier(size=size)
        return self.classifier.eval()

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> dict[str, float]:
        data_module = trainer.datamodule
        data = data_module.make("val" if stage == "val" else "test")
        n = min(self.num_samples, data.videos.shape[0])
        labels = data.labels[:n].to(module.device)
        real = data.videos[:n]
        stills = data_module.image_set(n) if hasattr(data_module, "image_set") else None
        kwargs: dict[str, Any] = {
            "stills": stills,
            "speed": data_module.speed,
            "glyph_size": data_module.glyph_size,
        }
        classifier = self._classifier(real.shape[-1])
        module.record_sample_shape(real)
        generator = torch.Generator(device=module.device).manual_seed(module.evaluation_seed)
        fake = module.sample(n, generator, labels)
        results = video_metrics(real, fake, labels, classifier, **kwargs)
        if stage not in self._reference_logged:
            self._reference_logged.add(stage)
            other = data_module.make("train").videos[:n]
            floor = video_metrics(other, real, labels.cpu(), classifier, **kwargs)
            results |= {f"data_{k}": v for k, v in floor.items()}
            if self.teacher:
                noise_gen = torch.Generator(device=module.device).manual_seed(module.evaluation_seed)
                noise = module.initial_noise(n, noise_gen)
                teacher = module.teacher_samples(noise, labels)
                results |= {
                    f"teacher_{k}": v
                    for k, v in video_metrics(real, teacher, labels, classifier, **kwargs).items()
                }
        if self.gif and trainer.logger is not None and trainer.log_dir is not None and trainer.is_global_zero:
            save_gif(fake[:16], Path(trainer.log_dir) / f"{stage}_samples_step{trainer.global_step}.gif")
            log_video(trainer.logger, f"{stage}/samples", fake[:16], step=trainer.global_step)
        for name, value in results.items():
            module.log(f"{stage}/{name}", value, sync_dist=False)
        return results

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.evaluate(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.evaluate(trainer, pl_module, "test")
