"""LoRA guidance distillation on the exact-score bench: the one-pass student against the teacher's two-pass CFG
over a range of w, and the cost of LoRA against full fine-tuning and of one pass against two.

Quality: ``recipes/lora_guidance/config.yaml`` (a class-conditional ring of 8 Gaussians, Stable
Diffusion's schedule, the analytic teacher, whose guided prediction is exact, and a trained
conditional MLP as the student's base), built through :class:`lightning_distill.cli.DistillCLI` with
only the seed and ``finetune`` changed, ``max_steps`` iterations, validation off. Each student is
sampled with 50-step DDIM at one pass per step for w in {0.5, 1.5, 3.5, 5.5} (trained on w ~ U[0, 6]);
the baseline is the teacher's 50-step DDIM with two-pass CFG at the same w. Because DDIM is
deterministic, student and teacher start from the *same* noise and the mean distance between paired
samples is the distillation error alone ("paired error"); SWD to the teacher (other noise; its own row
is the noise floor), SWD to the data and the on-class share are also given.

Cost: trainable parameters, the memory of the training state (weights of teacher and student,
gradients, AdamW moments: measured from the live tensors after one optimizer step; activations are
not counted) and the wall-clock of a training step, for LoRA and full fine-tuning; sampling wall-clock
of one pass against two. Two models: the bench MLP, and a small diffusers ``UNet2DConditionModel``
(32/64 channels, 16 x 16 x 4 latents, cross-attention) whose LoRA sits on to_q/to_k/to_v/to_out
as on Stable Diffusion, with the teacher copied into the student as the paper does.

Usage (from the repository root)::

    python benchmarks/lora_guidance.py            # seeds 0 1 2
    python benchmarks/lora_guidance.py --quick    # 1 seed, 200 iterations, no README update

Writes ``benchmarks/results/lora_guidance.md`` and the block of ``recipes/lora_guidance/README.md``.
"""

from __future__ import annotations

import copy
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402
import yaml  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, mean_std  # noqa: E402

from lightning_distill.diffusion import NoiseSchedule, sample  # noqa: E402
from lightning_distill.diffusion.metrics import default_mode_threshold, mode_assignment, sliced_wasserstein  # noqa: E402
from lightning_distill.recipes.lora_guidance import LoRAGuidance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "lora_guidance" / "config.yaml"
GUIDANCE = (0.5, 1.5, 3.5, 5.5)
N_SAMPLES = 2000  # samples per model, seed (and w)
_REFERENCE_OFFSET, _TEACHER_OFFSET = 10_000, 20_000


def train(config: dict, seed: int, iterations: int | None, finetune: str) -> tuple[Any, float]:
    config = copy.deepcopy(config)
    config["trainer"]["callbacks"] = []
    config["model"]["init_args"]["finetune"] = finetune
    extra = ["--test_after_fit=false", "--trainer.num_sanity_val_steps=0"]
    if iterations is not None:
        extra.append(f"--trainer.max_steps={iterations}")
    with tempfile.TemporaryDirectory() as tmp:
        cli = recipe_cli(config, seed, extra, workdir=Path(tmp))
        seconds = timed_fit(cli)[0]
    return cli.model.eval(), seconds


def _draw(model: Any, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, model.reference_mixture.num_classes, (n,), generator=gen)
    return labels, torch.randn(n, model.reference_mixture.dim, generator=gen)


def quality(model: Any, w: float, n: int, seed: int) -> dict[str, float]:
    """Student (one pass) vs teacher (two passes) at ``w``, from the same noise, and against the data."""
    gmm = model.reference_mixture
    labels, noise = _draw(model, n, seed)
    with torch.no_grad():
        student = sample(_one_pass(model, w), model.schedule, noise, 50, labels).float()
        teacher = model.teacher_sample(noise, labels, w, 50).float()
        other = model.teacher_sample(
            torch.randn(n, gmm.dim, generator=torch.Generator().manual_seed(seed + _TEACHER_OFFSET)),
            labels,
            w,
            50,
        ).float()
    reference = gmm.sample(n, torch.Generator().manual_seed(seed + _REFERENCE_OFFSET), labels=labels)
    modes = mode_assignment(student, gmm, default_mode_threshold(gmm.dim))
    on_mode = modes < gmm.num_modes
    own = torch.zeros_like(on_mode)
    own[on_mode] = gmm.class_of_mode[modes[on_mode]] == labels[on_mode]
    return {
        "paired": float((student - teacher).norm(dim=1).mean()),
        "swd_teacher": float(sliced_wasserstein(student, other)),
        "swd_teacher_floor": float(sliced_wasserstein(teacher, other)),
        "swd_data": float(sliced_wasserstein(student, reference)),
        "swd_data_teacher": float(sliced_wasserstein(teacher, reference)),
        "on_class": float(own.float().mean()),
    }


def _one_pass(model: Any, w: float) -> torch.nn.Module:
    from lightning_distill.diffusion.guidance_distillation import FixedGuidance

    return FixedGuidance(model.student, w)


# ------------------------------------------------------------------------------------------ cost
def sampling_ms(draw: Any, n: int, repeats: int = 3) -> float:
    """Median process-CPU milliseconds of ``draw(n, generator)`` without grad (one thread; wall-clock is shared)."""
    times = []
    for k in range(repeats):
        start = time.process_time()
        with torch.no_grad():
            draw(n, torch.Generator().manual_seed(k))
        times.append(1000 * (time.process_time() - start))
    return sorted(times)[len(times) // 2]


def _unet(channels: tuple[int, int] = (32, 64)):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
    )


def _state_bytes(recipe: LoRAGuidance, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every distinct tensor of the training state: weights, gradients, optimizer moments."""
    seen: dict[int, int] = {}
    for p in recipe.parameters():
        seen[p.data_ptr()] = p.numel() * p.element_size()
        if p.grad is not None:
            seen[p.grad.data_ptr()] = p.grad.numel() * p.grad.element_size()
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.numel() > 1:
                seen[value.data_ptr()] = value.numel() * value.element_size()
    return sum(seen.values())


def cost(build: Any, batch: Any, repeats: int) -> dict[str, float]:
    """Trainable parameters, training-state MB and ms per training step of one recipe."""
    recipe: LoRAGuidance = build()
    optimizer = torch.optim.AdamW(recipe.trainable_student_parameters(), lr=1e-4)
    x0, cond = batch
    times = []
    for k in range(repeats + 1):
        start = time.process_time()  # CPU time: the machine is shared, wall-clock is not the step's cost
        optimizer.zero_grad(set_to_none=True)
        recipe.guidance_loss(x0, cond, torch.Generator().manual_seed(k)).backward()
        optimizer.step()
        if k:  # the first step allocates the optimizer state
            times.append(1000 * (time.process_time() - start))
    return {
        "trainable": sum(p.numel() for p in recipe.trainable_student_parameters()),
        "state_mb": _state_bytes(recipe, optimizer) / 2**20,
        "step_ms": sorted(times)[len(times) // 2],
    }


def unet_costs(repeats: int) -> dict[str, dict[str, float]]:
    teacher = _unet()
    batch = (torch.randn(8, 4, 16, 16), torch.randn(8, 8, 32))
    out: dict[str, dict[str, float]] = {}
    for finetune in ("lora", "full"):
        out[finetune] = cost(
            lambda f=finetune: LoRAGuidance(
                copy.deepcopy(teacher), schedule=NoiseSchedule.ddpm(), finetune=f, noise_seed=0
            ),
            batch,
            repeats,
        )
    recipe = LoRAGuidance(copy.deepcopy(teacher), schedule=NoiseSchedule.ddpm(), noise_seed=0).eval()
    cond = batch[1]

    def one(n: int, gen: torch.Generator) -> Any:
        return sample(
            _one_pass(recipe, 6.5), recipe.schedule, torch.randn(n, 4, 16, 16, generator=gen), 10, cond
        )

    def two(n: int, gen: torch.Generator) -> Any:
        return recipe.teacher_sample(torch.randn(n, 4, 16, 16, generator=gen), cond, 6.5, 10)

    out["sampling"] = {"one": sampling_ms(one, 8, repeats=3), "two": sampling_ms(two, 8, repeats=3)}
    return out


# ------------------------------------------------------------------------------------------ report
def render(
    results: dict, costs: dict, seeds: list[int], n: int, command: str, seconds: float, iterations: int
) -> str:
    lines = [
        generated_header("benchmarks/lora_guidance.py", command, seconds),
        "",
        machine_line(),
        "",
        f"Seeds {', '.join(map(str, seeds))}; mean ± sample std over seeds; n = {n} samples per seed and w. Students: "
        f"{iterations} iterations (batch 256) of `recipes/lora_guidance/config.yaml`, trained on w ~ U[0, 6]; all samplers "
        "50-step DDIM. Paired error: mean distance between student and teacher samples from the same noise (the "
        "distillation error alone; 0 is perfect). SWD to teacher: against the teacher's samples from other noise "
        "(the teacher row is the noise floor).",
        "",
        "| w | sampler | NFE / step | paired error | SWD to teacher | SWD to data | on class |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for w in GUIDANCE:
        t = results["lora", w]
        lines.append(
            f"| {w:g} | teacher, two-pass CFG | 2 | 0 | {mean_std(t['swd_teacher_floor'], digits=3)} | "
            f"{mean_std(t['swd_data_teacher'], digits=3)} | - |"
        )
        for finetune, name in (("lora", "LoRA student (config)"), ("full", "full fine-tuning")):
            m = results[finetune, w]
            lines.append(
                f"| {w:g} | {name}, one pass | 1 | {mean_std(m['paired'], digits=3)} | {mean_std(m['swd_teacher'], digits=3)} | "
                f"{mean_std(m['swd_data'], digits=3)} | {mean_std(m['on_class'])} |"
            )
    lines += [
        "",
        "Cost (one seed; training state = weights of teacher and student + gradients + AdamW moments, from the live "
        "tensors after one step, activations not counted; step time is the median of the timed steps):",
        "",
        "| model | fine-tuning | trainable parameters | training state MB | CPU ms / training step |",
        "|---|---|---:|---:|---:|",
    ]
    for model_name, c in costs.items():
        for finetune in ("lora", "full"):
            v = c[finetune]
            lines.append(
                f"| {model_name} | {finetune} | {v['trainable']:,} | {v['state_mb']:.2f} | {v['step_ms']:.1f} |"
            )
    lines += [
        "",
        "Sampling time (process CPU time on one thread; MLP: 50 DDIM steps for n points at w = 3.5, the two-pass row runs the same network twice "
        "per step, since the analytic teacher is no network; UNet: 10 DDIM steps for 8 latents, the teacher's two passes):",
        "",
        "| model | sampler | CPU ms per sampling call |",
        "|---|---|---:|",
    ]
    for model_name, c in costs.items():
        s = c["sampling"]
        lines.append(f"| {model_name} | student, one pass | {s['one']:.1f} |")
        lines.append(f"| {model_name} | two-pass CFG (same network) | {s['two']:.1f} |")
    return "\n".join(lines) + "\n"


def build_parser():
    return bench_parser(__file__, __doc__, quick="1 seed, 200 iterations")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    config = yaml.safe_load(CONFIG.read_text())
    iterations = 200 if args.quick else config["trainer"]["max_steps"]
    total = time.perf_counter()
    keys = ("paired", "swd_teacher", "swd_teacher_floor", "swd_data", "swd_data_teacher", "on_class")
    results = {(f, w): {k: [] for k in keys} for f in ("lora", "full") for w in GUIDANCE}
    costs: dict[str, dict] = {}
    for seed in seeds:
        for finetune in ("lora", "full"):
            model, _ = train(config, seed, iterations if args.quick else None, finetune)
            for w in GUIDANCE:
                for key, value in quality(model, w, N_SAMPLES, seed).items():
                    results[finetune, w][key].append(value)
            print(
                f"seed {seed} | {finetune}: paired error at w = 3.5: {results[finetune, 3.5]['paired'][-1]:.3f}",
                flush=True,
            )
            if seed == seeds[0]:
                x0 = model.reference_mixture.sample(256, torch.Generator().manual_seed(0)).float()
                labels = torch.arange(256) % model.reference_mixture.num_classes
                costs.setdefault("bench MLP (64 x 3)", {})[finetune] = cost(
                    lambda m=model: copy.deepcopy(m).train(), (x0, labels), 5 if args.quick else 20
                )
                if finetune == "lora":
                    noise_n = N_SAMPLES

                    def one(n: int, gen: torch.Generator, m=model) -> Any:
                        labels, noise = _draw(m, n, int(gen.initial_seed()))
                        return sample(_one_pass(m, 3.5), m.schedule, noise, 50, labels)

                    def two(n: int, gen: torch.Generator, m=model) -> Any:
                        # two-pass CFG with a network of the student's size (the analytic teacher is no network)
                        labels, noise = _draw(m, n, int(gen.initial_seed()))
                        null = torch.full_like(labels, m.reference_mixture.num_classes)
                        return sample(_one_pass(m, 3.5), m.schedule, noise, 50, labels, null, 4.5)

                    costs["bench MLP (64 x 3)"]["sampling"] = {
                        "one": sampling_ms(one, noise_n, repeats=3),
                        "two": sampling_ms(two, noise_n, repeats=3),
                    }
    costs["UNet2DConditionModel (32/64 ch, 16 x 16 x 4)"] = unet_costs(2 if args.quick else 5)
    table = render(results, costs, seeds, N_SAMPLES, args.command, time.perf_counter() - total, iterations)
    (results_dir(args) / "lora_guidance.md").write_text(table)
    print(f"\n{table}", flush=True)
    update_readme(args, ROOT / "recipes" / "lora_guidance" / "README.md", table)


if __name__ == "__main__":
    main()
