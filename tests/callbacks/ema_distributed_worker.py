"""Runs EMATeacher under DDP and FSDP2 on 2 CPU processes (gloo) and saves the averaged weights.

Used by ``test_ema_teacher.py``; run as a script so that Lightning can launch its processes:
``python ema_distributed_worker.py OUT_DIR ddp fsdp_auto fsdp_user``. Each run writes
``OUT_DIR/<run>_rank<r>.pt`` with the full (gathered) target weights, the teacher's output on a
fixed probe at every step, and the number of optimizer steps.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_distill.callbacks.ema_teacher import EMATeacher

STEPS = 4
DECAY = 0.8
LR = 0.2
PER_RANK_BATCH = 4


def make_data() -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(16, 4, generator=generator), torch.randn(16, 2, generator=generator))


def make_student() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))


class Regressor(pl.LightningModule):
    def __init__(self, shard: str | None = None) -> None:
        super().__init__()
        self.shard = shard
        self.student = make_student()
        self.teacher_outputs: list[torch.Tensor] = []

    def configure_model(self) -> None:
        if self.shard is None:
            return
        from torch.distributed.fsdp import FSDPModule, fully_shard

        if isinstance(self.student, FSDPModule):
            return  # configure_model must be idempotent
        mesh = self.device_mesh["data_parallel"]
        modules = [self.student]
        if self.shard == "user":  # the recipe makes and shards its own target
            self.ema_student = copy.deepcopy(self.student).requires_grad_(False)
            modules.append(self.ema_student)
        for module in modules:
            fully_shard(module[0], mesh=mesh)
            fully_shard(module, mesh=mesh)

    def training_step(self, batch, batch_idx):
        x, y = batch
        with torch.no_grad():  # the teacher's output on a fixed probe: it must see the current average
            self.teacher_outputs.append(self.ema_student(make_data().tensors[0][:3]))
        return nn.functional.mse_loss(self.student(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.student.parameters(), lr=LR)

    def train_dataloader(self) -> DataLoader:
        # Rank r sees samples r, r + 2, ...: the two ranks' batch k together are samples 8k .. 8k + 7.
        data = make_data()
        sampler = DistributedSampler(
            data, num_replicas=self.trainer.world_size, rank=self.global_rank, shuffle=False
        )
        return DataLoader(data, batch_size=PER_RANK_BATCH, sampler=sampler)


def run(name: str, out_dir: Path) -> None:
    shard = {"ddp": None, "fsdp_auto": "auto", "fsdp_user": "user"}[name]
    strategy = "ddp" if shard is None else ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    model = Regressor(shard)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_steps=STEPS,
        callbacks=[EMATeacher(decay=DECAY)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
    )
    trainer.fit(model)
    weights = {}
    for key, value in model.ema_student.state_dict().items():
        weights[key] = value.full_tensor() if hasattr(value, "full_tensor") else value
    sharded = any(hasattr(p, "full_tensor") for p in model.ema_student.parameters())
    torch.save(
        {
            "weights": weights,
            "teacher_outputs": model.teacher_outputs,
            "global_step": trainer.global_step,
            "sharded": sharded,
        },
        out_dir / f"{name}_rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    for run_name in sys.argv[2:]:
        run(run_name, out)
