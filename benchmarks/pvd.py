"""PVD at toy scale: steps and CPU time to reach a target test PSNR, converting vs training from scratch.

The paper's claim: converting a trained field into another architecture by progressive volume
distillation is 10-20x faster than training that architecture from scratch. Here, on the procedural
multi-view scene of ``recipes/pvd/config.yaml`` (32x32 px, 40 training and 8 held-out views), one hash-grid
teacher is trained once (cached; its test PSNR is ``T``) and, per seed and target architecture:

* PVD: the recipe (``recipes/pvd/config.yaml`` with the target as student: stages at 40/100 steps,
  random rays, the teacher's renders as the only targets), stopped once the mean held-out PSNR
  reaches ``T − gap``;
* from scratch: the same architecture, initialisation seed, optimizer, learning rate and rays per
  batch, trained on the training images by photometric MSE (``fit_field``), stopped at the same target.

Both are checked every ``--every`` steps on the 8 held-out views (the checks are not counted in the
CPU time). A run that does not reach the target within ``--max-steps`` counts as ``> max-steps`` and
is left out of the speed-up. CPU seconds are this process's, one thread.

Usage (from the repository root)::

    python benchmarks/pvd.py             # seeds 0 1 2, targets vm and mlp
    python benchmarks/pvd.py --quick     # smoke run: 1 seed, vm only, 40 steps, no README update

Writes ``benchmarks/results/pvd.md`` and the generated block of ``recipes/pvd/README.md``.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std  # noqa: E402
from jsonargparse import ArgumentParser  # noqa: E402

from lightning_distill.data.multiview import MultiViewDataModule  # noqa: E402
from lightning_distill.radiance import fields  # noqa: E402
from lightning_distill.radiance.training import fit_field, view_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "pvd" / "config.yaml"
#: target architecture -> (class, toy init args, Adam learning rate)
TARGETS = {
    "vm": ("TensorVMField", {"resolution": 48, "sigma_rank": 8, "color_rank": 16}, 0.02),
    "mlp": ("MLPField", {"num_freqs": 6, "depth": 4, "width": 64, "skip": 1}, 5e-3),
    "voxel": ("VoxelGridField", {"resolution": 32}, 0.1),
}
NAMES = {"vm": "TensoRF VM", "mlp": "MLP NeRF", "voxel": "voxel grid"}


class StopAtPSNR(pl.Callback):
    """Every ``every`` steps: the student's held-out PSNR; stop at ``target``. Keeps the training CPU time."""

    def __init__(self, data: MultiViewDataModule, target: float, every: int) -> None:
        self.data, self.target, self.every = data, target, every
        self.reached: int | None = None
        self.curve: list[tuple[int, float]] = []
        self.evaluating, self.start = 0.0, 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every:
            return
        tick = time.process_time()
        psnr = view_metrics(pl_module.student, self.data, "test", num_samples=pl_module.num_samples)["psnr"]
        pl_module.student.train()
        self.evaluating += time.process_time() - tick
        self.curve.append((step, psnr))
        if psnr >= self.target and self.reached is None:
            self.reached = step
            trainer.should_stop = True

    def train_seconds(self) -> float:
        return time.process_time() - self.start - self.evaluating


def build_teacher(config: dict, teacher_steps: int):
    """The benchmark's teacher (trained on first use with ``teacher_steps``, cached) and its test PSNR."""
    spec = copy.deepcopy(config["model"]["init_args"]["teacher"])
    spec["init_args"].update(steps=teacher_steps)
    parser = ArgumentParser()
    parser.add_argument("--teacher", type=torch.nn.Module)
    teacher = parser.instantiate(parser.parse_object({"teacher": spec})).teacher
    return spec, teacher


def pvd_run(config: dict, teacher_spec: dict, target: str, seed: int, goal: float, args) -> dict[str, float]:
    cls, init, lr = TARGETS[target]
    config = copy.deepcopy(config)
    model = config["model"]["init_args"]
    model["teacher"] = teacher_spec
    model["student"] = {"class_path": f"lightning_distill.radiance.fields.{cls}", "init_args": init}
    model["optimizer"]["init_args"]["lr"] = lr
    config["trainer"].pop("max_epochs", None)
    config["trainer"].update(max_steps=args.max_steps, callbacks=[])
    with tempfile.TemporaryDirectory() as tmp:
        cli = recipe_cli(config, seed, ["--trainer.num_sanity_val_steps=0"], workdir=Path(tmp))
        data = cli.datamodule
        data.setup("fit")
        stop = StopAtPSNR(data, goal, args.every)
        cli.trainer.callbacks.append(stop)
        cli.trainer.fit(cli.model, datamodule=data)
    print(f"  PVD {target} curve: {[(s, round(p, 2)) for s, p in stop.curve]}", flush=True)
    return {"steps": stop.reached or float("inf"), "cpu": stop.train_seconds(), "final": stop.curve[-1][1]}


def scratch_run(data: MultiViewDataModule, target: str, seed: int, goal: float, args) -> dict[str, float]:
    cls, init, lr = TARGETS[target]
    torch.manual_seed(seed)
    field = getattr(fields, cls)(**init)
    result = fit_field(field, data, steps=args.max_steps, lr=lr, rays_per_batch=512, num_samples=32, seed=seed,
                       until_psnr=goal, eval_every=args.every)  # fmt: skip
    print(f"  scratch {target} curve: {[(s, round(p, 2)) for s, p in result['curve']]}", flush=True)
    reached = result["steps"] if result["curve"] and result["curve"][-1][1] >= goal else float("inf")
    return {"steps": reached, "cpu": result["train_seconds"], "final": result["curve"][-1][1]}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    if args.quick:
        args.seeds, args.targets, args.max_steps = args.seeds[:1], ["vm"], 40
    total = time.perf_counter()
    config = yaml.safe_load(CONFIG.read_text())
    teacher_spec, teacher = build_teacher(config, args.teacher_steps)
    data = MultiViewDataModule(**config["data"]["init_args"])
    data.setup("fit")
    teacher_psnr = view_metrics(teacher, data, "test", num_samples=32)["psnr"]
    goal = teacher_psnr - args.gap
    print(f"teacher PSNR {teacher_psnr:.2f} dB, target {goal:.2f} dB", flush=True)
    rows: dict[tuple[str, str], dict[str, list[float]]] = {}
    for target in args.targets:
        for seed in args.seeds:
            for how in ("PVD", "scratch"):
                if how == "PVD":
                    result = pvd_run(config, teacher_spec, target, seed, goal, args)
                else:
                    result = scratch_run(data, target, seed, goal, args)
                print(f"{target} seed {seed} {how}: {result}", flush=True)
                for key, value in result.items():
                    rows.setdefault((target, how), {}).setdefault(key, []).append(value)
    body = render(rows, args, teacher_psnr, goal, time.perf_counter() - total)
    (results_dir(args) / "pvd.md").write_text(body)
    print(f"\n{body}", flush=True)
    update_readme(args, ROOT / "recipes" / "pvd" / "README.md", body)


def _steps(values: list[float], cap: int) -> str:
    done = [v for v in values if v != float("inf")]
    missed = len(values) - len(done)
    text = mean_std(done, digits=0) if done else "-"
    return text + (f" ({missed} of {len(values)} > {cap})" if missed else "")


def render(rows, args, teacher_psnr: float, goal: float, seconds: float) -> str:
    headers = ["target", "method", "steps to target", "train CPU s to target", "last checked PSNR (dB)",
               "speed-up (steps)", "speed-up (CPU)"]  # fmt: skip
    table = []
    for target in args.targets:
        pvd, scratch = rows[(target, "PVD")], rows[(target, "scratch")]
        pairs = [(a, b, c, d) for a, b, c, d in zip(pvd["steps"], scratch["steps"], pvd["cpu"], scratch["cpu"])
                 if a != float("inf") and b != float("inf")]  # fmt: skip
        step_up = mean_std([b / a for a, b, _, _ in pairs]) + "x" if pairs else "-"
        cpu_up = mean_std([d / c for _, _, c, d in pairs]) + "x" if pairs else "-"
        for how, r, up in (
            ("PVD (hash → target)", pvd, (step_up, cpu_up)),
            ("from scratch", scratch, ("", "")),
        ):
            cpu = [c for c, s in zip(r["cpu"], r["steps"]) if s != float("inf")]
            table.append([NAMES[target], how, _steps(r["steps"], args.max_steps), mean_std(cpu, digits=1) if cpu else "-",
                          mean_std(r["final"]), *up])  # fmt: skip
    return "\n".join([
        generated_header("benchmarks/pvd.py", args.command, seconds), "", machine_line(), "",
        f"Seeds {', '.join(map(str, args.seeds))}; mean ± sample std over seeds. Teacher: a hash grid (8 levels, "
        f"2^14 table) trained once for {args.teacher_steps} steps of 512 rays, held-out PSNR {teacher_psnr:.2f} dB; target "
        f"{goal:.2f} dB (teacher − {args.gap:g} dB), checked every {args.every} steps on the 8 held-out views, "
        f"at most {args.max_steps} steps. Same student architecture, initialisation seed, Adam learning rate and "
        "512 rays × 32 samples per step in both rows; speed-ups are scratch / PVD per seed over seeds that reached "
        "the target in both.", "",
        markdown_table(headers, table, align="llrrrrr"),
    ]) + "\n"  # fmt: skip


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, vm only, 40 steps")
    parser.add_argument("--targets", nargs="+", default=["vm", "mlp"], choices=sorted(TARGETS),
                        help="target architectures (default vm mlp)")  # fmt: skip
    parser.add_argument("--max-steps", type=int, default=300, help="step cap of every run (default 300)")
    parser.add_argument("--every", type=int, default=20, help="steps between PSNR checks (default 20)")
    parser.add_argument("--gap", type=float, default=0.5, help="target = teacher PSNR − gap (default 0.5 dB)")
    parser.add_argument("--teacher-steps", type=int, default=300,
                        help="teacher training steps (default 300: the config's teacher, shared cache)")  # fmt: skip
    return parser


if __name__ == "__main__":
    main()
