"""DynamicCity at toy scale: HexPlane VAE vs a 3D-latent VAE, and the DiT at 50 steps vs its 4-step DMD student.

Per seed: (1) the HexPlane VAE and the plain 3D-latent VAE (same encoder and voxel head, latent
volume matched to about the HexPlane's compression ratio) are trained alike on the same 4D
occupancy sequences (CE + Lovász + β KL) and scored by reconstruction IoU / mIoU (torchmetrics
confusion matrix) on held-out sequences; (2) the DiT is trained on the HexPlane latents by the
``DynamicCity`` recipe and sampled with 50 DDIM steps; (3) it is distilled into a 4-step student by
``DynamicCityDMD`` (DMD2 without GAN). Generation quality is the Fréchet distance between Gaussian
fits of features of generated and training sequences; the features are the pooled penultimate
layer of a small 3D CNN trained here to tell a sequence from its time-reversed copy (so the features
see layout and motion) -- an occupancy-classifier Fréchet distance, not an FID. Also the total
variation between voxel class frequencies and the sampling time per sequence (latent + decoding).

Each seed's results are cached under ``$LIGHTNING_DISTILL_CACHE/benchmarks`` (``--fresh`` recomputes),
so seeds can run as separate processes (``--seeds 1 --no-readme``) and a last run tables them all.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import functools  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import lightning.pytorch as L  # noqa: E402
import torch  # noqa: E402
from _harness import ROOT, bench_parser, results_dir, sampling_ms, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from lightning_distill.data.occupancy import VAE_LOSS_WEIGHTS, OccupancyDataModule, _fit_vae  # noqa: E402
from lightning_distill.diffusion.frechet import frechet_distance_from_features  # noqa: E402
from lightning_distill.lidar_generation.dit import tiny_plane_dit  # noqa: E402
from lightning_distill.lidar_generation.hexplane import HexPlaneVAE, VolumeVAE  # noqa: E402
from lightning_distill.lidar_generation.occupancy import OccupancyIoU, class_frequency_distance  # noqa: E402
from lightning_distill.recipes.dynamiccity import DynamicCity, DynamicCityDMD  # noqa: E402

README = ROOT / "recipes" / "dynamiccity" / "README.md"
GRID = dict(num_classes=7, grid_size=(16, 16, 8), num_frames=4, latent_channels=4, width=8)
DIT = dict(in_channels=4, sample_size=16, patch_size=2, width=32, num_heads=2, num_layers=2)


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="20 VAE / 40 DiT / 20 DMD steps, 24 sequences, 16 samples")
    parser.add_argument("--vae-steps", type=int, default=250)
    parser.add_argument("--dit-steps", type=int, default=800)
    parser.add_argument("--dmd-iterations", type=int, default=400)
    parser.add_argument("--num-train", type=int, default=96)
    parser.add_argument("--num-test", type=int, default=32)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument(
        "--fresh", action="store_true", help="recompute seeds whose results are cached (default: reuse them)"
    )
    return parser


def seed_cache(args, seed: int) -> Path:
    """Where one seed's results are kept (so seeds can run as separate processes, then be tabled together)."""
    from lightning_distill.models.first_use_cache import default_cache_dir

    key = f"{args.vae_steps}-{args.dit_steps}-{args.dmd_iterations}-{args.num_train}-{args.num_test}-{args.samples}"
    return default_cache_dir() / "benchmarks" / f"dynamiccity-{key}-seed{seed}.json"


def cached_seed(seed: int, data, classifier, reference, args) -> dict[str, float]:
    path = seed_cache(args, seed)
    if path.exists() and not args.fresh:
        return json.loads(path.read_text())
    out = run_seed(seed, data, classifier, reference, args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out))
    return out


class SequenceClassifier(nn.Module):
    """A small 3D CNN on one-hot occupancy ``(B, T, X, Y, Z)``; :meth:`features` is its pooled penultimate layer."""

    def __init__(self, num_classes: int = 7, width: int = 16) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.Conv3d(num_classes * 4, width, 3, padding=1), nn.SiLU(),
            nn.Conv3d(width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv3d(2 * width, 2 * width, 3, stride=2, padding=1), nn.SiLU(),
        )  # fmt: skip
        self.head = nn.Linear(2 * width, 2)

    def features(self, occupancy: torch.Tensor) -> torch.Tensor:
        x = nn.functional.one_hot(occupancy, self.num_classes).float()  # (B, T, X, Y, Z, K)
        x = x.permute(0, 1, 5, 2, 3, 4).flatten(1, 2)  # frames and classes as channels
        return self.body(x).mean(dim=(2, 3, 4))

    def forward(self, occupancy: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(occupancy))


def train_classifier(train: torch.Tensor, steps: int) -> SequenceClassifier:
    """Forward vs time-reversed sequences (a pretext task whose features see layout and motion)."""
    torch.manual_seed(1234)
    model = SequenceClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = train[torch.randint(0, len(train), (16,), generator=g)]
        x = torch.cat([batch, batch.flip(1)])
        y = torch.cat([torch.zeros(16), torch.ones(16)]).long()
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def reconstruction(vae: nn.Module, test: torch.Tensor) -> dict[str, float]:
    metric = OccupancyIoU(7)
    with torch.no_grad():
        for chunk in test.split(16):
            metric.update(vae.decode(vae.encode(chunk)[0]).argmax(1), chunk)
    return {k: 100 * float(v) for k, v in metric.compute().items()}


def train_vae(cls, data: OccupancyDataModule, seed: int, steps: int, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    vae = cls(**GRID, **kwargs)
    _fit_vae(vae, data, steps=steps, lr=3e-3, weights=VAE_LOSS_WEIGHTS, max_grad_norm=1.0)
    return vae.eval()


def quiet_trainer(steps: int) -> L.Trainer:
    return L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                     num_sanity_val_steps=0)  # fmt: skip


def generation_scores(
    occupancy: torch.Tensor, reference: dict, classifier: SequenceClassifier
) -> dict[str, float]:
    with torch.no_grad():
        feats = torch.cat([classifier.features(c) for c in occupancy.split(32)])
    return {
        "fd": float(frechet_distance_from_features(reference["features"], feats)),
        "tv": 100 * float(class_frequency_distance(occupancy, reference["occupancy"])),
    }


def run_seed(seed: int, data: OccupancyDataModule, classifier, reference, args) -> dict[str, float]:
    out: dict[str, float] = {}
    test = data.sequences("test")
    # 1. The two VAEs.
    hexplane = train_vae(HexPlaneVAE, data, seed, args.vae_steps, multiple=2)
    volume = train_vae(VolumeVAE, data, seed, args.vae_steps, latent_size=(4, 4, 3))
    for name, vae in (("hex", hexplane), ("vol", volume)):
        scores = reconstruction(vae, test)
        out[f"{name}_iou"], out[f"{name}_miou"], out[f"{name}_ratio"] = (
            scores["iou"],
            scores["miou"],
            vae.compression_ratio,
        )
    # 2. The DiT on the HexPlane latents (the recipe), 50-step DDIM.
    torch.manual_seed(seed)
    dit = DynamicCity(student=tiny_plane_dit(**DIT), teacher=hexplane, noise_seed=seed,
                      optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))  # fmt: skip
    start = time.process_time()
    quiet_trainer(args.dit_steps).fit(dit, data.train_dataloader())
    out["dit_cpu_s"] = time.process_time() - start
    g = torch.Generator().manual_seed(10_000 + seed)
    out.update(
        {
            f"teacher_{k}": v
            for k, v in generation_scores(dit.generate(args.samples, g), reference, classifier).items()
        }
    )
    # 3. DMD distillation of the DiT into a 4-step student (the latents of the training sequences).
    latents = torch.cat([hexplane.encode_latent(c) for c in data.sequences("train").split(32)]).detach()
    torch.manual_seed(seed)
    student = DynamicCityDMD(student=tiny_plane_dit(**DIT), teacher=dit.student.eval(), noise_seed=seed,
                             optimizer=functools.partial(torch.optim.AdamW, lr=1e-4, weight_decay=0.01))  # fmt: skip
    loader = DataLoader(
        TensorDataset(latents), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    start = time.process_time()
    quiet_trainer(args.dmd_iterations).fit(student, loader)
    out["dmd_cpu_s"] = time.process_time() - start
    mask = hexplane.latent_mask()

    def draw_student(n, gen):
        return hexplane.decode_latent(student.sample(n, gen) * mask).argmax(1)

    g = torch.Generator().manual_seed(10_000 + seed)
    out.update(
        {
            f"student_{k}": v
            for k, v in generation_scores(draw_student(args.samples, g), reference, classifier).items()
        }
    )
    # 4. Sampling time per sequence (latent sampling + VAE decoding, batch of 8).
    out["teacher_ms"] = sampling_ms(dit.generate, 8, repeats=3) / 8
    out["student_ms"] = sampling_ms(draw_student, 8, repeats=3) / 8
    return out


def shared_parts(args):
    """The sequences, the feature classifier, the reference features and the held-out floor scores."""
    data = OccupancyDataModule(
        num_train=args.num_train, num_val=0, num_test=args.num_test, batch_size=8, seed=0
    )
    train, test = data.sequences("train"), data.sequences("test")
    classifier = train_classifier(train, steps=40 if args.quick else 300)
    with torch.no_grad():
        reference = {"features": classifier.features(train), "occupancy": train}
        floor = generation_scores(test, reference, classifier)
    return data, classifier, reference, floor


def main(argv=None) -> None:
    args = build_parser().start(argv)
    if args.quick:
        args.vae_steps, args.dit_steps, args.dmd_iterations = 20, 40, 20
        args.num_train, args.num_test, args.samples = 24, 8, 16
    wall = time.perf_counter()
    floor_path = seed_cache(args, 0).with_name(f"dynamiccity-floor-{args.num_train}-{args.num_test}.json")
    if args.fresh or not floor_path.exists() or not all(seed_cache(args, s).exists() for s in args.seeds):
        data, classifier, reference, floor = shared_parts(args)
        floor_path.parent.mkdir(parents=True, exist_ok=True)
        floor_path.write_text(json.dumps(floor))
        runs = [cached_seed(s, data, classifier, reference, args) for s in args.seeds]
    else:  # every seed and the floor are cached: table them without rebuilding anything
        floor = json.loads(floor_path.read_text())
        runs = [json.loads(seed_cache(args, s).read_text()) for s in args.seeds]
    col = lambda key: [r[key] for r in runs]  # noqa: E731
    vae_table = markdown_table(
        ["latent", "compression ratio", "IoU (%)", "mIoU (%)"],
        [
            [
                "HexPlane (six planes, padded rollout)",
                f"{runs[0]['hex_ratio']:.1f}",
                mean_std(col("hex_iou"), digits=1),
                mean_std(col("hex_miou"), digits=1),
            ],
            [
                "3D latent volume per frame (4 x 4 x 3)",
                f"{runs[0]['vol_ratio']:.1f}",
                mean_std(col("vol_iou"), digits=1),
                mean_std(col("vol_miou"), digits=1),
            ],
        ],  # fmt: skip
        align="lrrr",
    )
    gen_table = markdown_table(
        [
            "sampler",
            "steps",
            "Fréchet distance (classifier features)",
            "class-frequency TV (%)",
            "ms / sequence",
        ],
        [
            [
                "DiT teacher, DDIM",
                "50",
                mean_std(col("teacher_fd"), digits=3),
                mean_std(col("teacher_tv"), digits=2),
                mean_std(col("teacher_ms"), digits=1),
            ],
            [
                "DMD student (extension)",
                "4",
                mean_std(col("student_fd"), digits=3),
                mean_std(col("student_tv"), digits=2),
                mean_std(col("student_ms"), digits=1),
            ],
            ["held-out data (floor)", "-", f"{floor['fd']:.3f}", f"{floor['tv']:.2f}", "-"],
        ],  # fmt: skip
        align="llrrr",
    )
    seconds = time.perf_counter() - wall
    body = "\n\n".join([
        generated_header(build_parser().script, args.command, seconds),
        machine_line(),
        f"Seeds {args.seeds}; {args.num_train} training and {args.num_test} held-out sequences of 4 frames of "
        f"16 x 16 x 8 voxels (7 classes with empty); VAEs {args.vae_steps} steps of batch 8; DiT {args.dit_steps} "
        f"steps of batch 8; DMD {args.dmd_iterations} iterations of batch 16 (student every 5th); "
        f"{args.samples} samples per sampler and seed; DiT training {mean_std(col('dit_cpu_s'), digits=0)} CPU s, "
        f"DMD {mean_std(col('dmd_cpu_s'), digits=0)} CPU s.",
        "**VAE reconstruction** (held-out sequences, mean ± std over seeds):",
        vae_table,
        "**Generation** (Fréchet distance to the training sequences in the features of a 3D CNN trained here "
        "to tell forward from time-reversed sequences; the floor is the held-out data's own distance):",
        gen_table,
    ])  # fmt: skip
    name = "dynamiccity.md"
    out = results_dir(args) / name
    out.write_text(body + "\n")
    print(body)
    update_readme(args, README, body)


if __name__ == "__main__":
    main()
