"""EMA update time per optimizer step: EMATeacher against the usual ways of keeping an EMA.

A stack of ``Linear`` layers (about 25M fp32 parameters, on the CPU) is averaged by

- **EMATeacher**: its ``EMAUpdater.update``, one ``torch._foreach_lerp_`` over lists built once;
- **(a) Python loop**: ``p_ema.mul_(m).add_(p, alpha=1 - m)`` per parameter;
- **(b) AveragedModel**: ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``;
- **(c) Lightning EMAWeightAveraging**: ``lightning.pytorch.callbacks.EMAWeightAveraging``'s update
  (its ``AveragedModel.update_parameters`` with the per-tensor ``get_ema_avg_fn``);
- **(d) foreach copy**: ``torch._foreach_copy_`` of the same tensors, the memory-bandwidth floor.

The methods run in the same process, interleaved (the order rotates every round), and the median
of ``--repeats`` rounds is reported with the ratio to (d). Run:
``python benchmarks/ema_speed.py`` (writes ``benchmarks/results/ema_speed.md``).
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import lightning
import lightning.pytorch as pl
import torch
from _harness import bench_parser
from _report import cpu_model
from lightning.pytorch.callbacks import EMAWeightAveraging
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lightning_distill.utils.ema import EMAUpdater

RESULTS = Path(__file__).parent / "results" / "ema_speed.md"


def make_model(width: int, depth: int) -> nn.Sequential:
    return nn.Sequential(*(nn.Linear(width, width) for _ in range(depth)))


class Wrapper(pl.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net


def cpu_name() -> str:
    return cpu_model()


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3]) + " (1, 5, 15 min)"
    except OSError:
        return "unknown"


def build(width: int, depth: int, momentum: float) -> dict[str, Callable[[], None]]:
    torch.manual_seed(0)
    live = make_model(width, depth)
    live.requires_grad_(False)
    copies = [copy.deepcopy(live) for _ in range(3)]
    with torch.no_grad():  # the average differs from the live weights, as after some training
        for param in live.parameters():
            param.add_(torch.randn_like(param), alpha=1e-2)

    ours = EMAUpdater(live, copies[0])

    loop_pairs = list(zip(copies[1].parameters(), live.parameters()))

    def python_loop() -> None:
        with torch.no_grad():
            for p_ema, p in loop_pairs:
                p_ema.mul_(momentum).add_(p, alpha=1 - momentum)

    averaged = AveragedModel(copies[2], multi_avg_fn=get_ema_multi_avg_fn(momentum))
    averaged.update_parameters(live)  # its first update copies; later ones average

    wrapper = Wrapper(live)
    lightning_ema = EMAWeightAveraging(decay=momentum)
    lightning_ema.setup(None, wrapper, "fit")  # builds its AveragedModel of the LightningModule
    lightning_average = lightning_ema._average_model  # what on_train_batch_end updates
    lightning_average.update_parameters(wrapper)

    floor_dst = [p.detach().clone() for p in live.parameters()]
    floor_src = [p.detach() for p in live.parameters()]

    return {
        "EMATeacher (`_foreach_lerp_`)": lambda: ours.update(momentum),
        "(a) Python loop `mul_().add_()`": python_loop,
        "(b) `AveragedModel` + `get_ema_multi_avg_fn`": lambda: averaged.update_parameters(live),
        "(c) Lightning `EMAWeightAveraging`": lambda: lightning_average.update_parameters(wrapper),
        "(d) `_foreach_copy_` (bandwidth floor)": lambda: torch._foreach_copy_(floor_dst, floor_src),
    }


def build_parser():
    parser = bench_parser(__file__, __doc__, seeds=None, threads=None, readme=False)
    parser.add_argument("--width", type=int, default=1440)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--momentum", type=float, default=0.999)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)

    methods = build(args.width, args.depth, args.momentum)
    names = list(methods)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.warmup + args.repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            methods[name]()
            end_wall, end_cpu = time.perf_counter(), time.process_time()
            if round_index >= args.warmup:
                wall[name].append((end_wall - start_wall) * 1e3)
                cpu[name].append((end_cpu - start_cpu) * 1e3)

    params = sum(p.numel() for p in make_model(args.width, args.depth).parameters())
    floor_wall, floor_cpu = statistics.median(wall[names[-1]]), statistics.median(cpu[names[-1]])
    lines = [
        "# EMA update speed",
        "",
        f"Command: `{args.command}`  ",
        f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}  ",
        f"Versions: torch {torch.__version__}, lightning {lightning.__version__}, Python {platform.python_version()}  ",
        f"Model: {args.depth} x Linear({args.width}, {args.width}), {params / 1e6:.1f}M fp32 parameters "
        f"({2 * args.depth} tensors, {params * 4 / 2**20:.0f} MiB), momentum {args.momentum}  ",
        f"Median of {args.repeats} interleaved rounds after {args.warmup} warm-up rounds (interquartile range "
        "in brackets). Wall time counts waiting when other processes hold the cores; CPU time (all of this "
        "process's threads) does not, so it is the steadier comparison on a shared machine.  ",
        f"Load average while it ran: {_load()}",
        "",
        "| method | wall ms / update | ratio to (d) | CPU ms / update | ratio to (d) |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        q1, median, q3 = statistics.quantiles(wall[name], n=4)
        cpu_median = statistics.median(cpu[name])
        lines.append(
            f"| {name} | {median:.1f} [{q1:.1f}, {q3:.1f}] | {median / floor_wall:.2f} "
            f"| {cpu_median:.1f} | {cpu_median / floor_cpu:.2f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


if __name__ == "__main__":
    main()
