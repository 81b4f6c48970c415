"""DGR (GloReDi) at toy scale: PSNR/SSIM of sparse-view CT at 18/36/72 views for FBP, the student alone and DGR.

Data: ``SparseViewCTDataModule`` (64x64 random-ellipse phantoms, noiseless parallel-beam sinograms from
the torch projector); the student input is the FBP of ``V`` views, the DGR teacher path sees the FBP
of ``2V`` views (the official ``teacher_angle_scale``). Three rows per view count, same network
(``recipes/dgr_ct/config.yaml``'s ``CTEncoderDecoder`` with its global skip), same initialisation,
same batches and the same number of student updates (a DGR batch makes two optimizer steps, so DGR
runs twice the trainer steps):

* FBP: scikit-image's ``iradon`` (Ram-Lak) on the same sinograms — the baseline of the paper's tables.
* student alone: the sparse-view path trained with pixel + focal frequency losses only (the recipe with
  ``finetune_epoch: -1``: no teacher path, no latent terms).
* DGR: the full recipe (teacher turn, EMA decoder, cosine and band-pass contrastive terms).

Scores on the 32 test slices (31 random-ellipse phantoms and Shepp–Logan): PSNR and SSIM of the
reconstruction clamped to [0, 1] (torchmetrics, data range 1); ms / slice on one CPU thread
(median of 5, batch of 32). ``teacher path`` reports DGR's dense-view path on its own input.

Usage (from the repository root)::

    python benchmarks/dgr_ct.py            # seeds 0 1 2, views 18 36 72
    python benchmarks/dgr_ct.py --quick    # smoke run: 1 seed, 18 views, 20 steps, no README update

Writes ``benchmarks/results/dgr_ct.md`` and the generated block of ``recipes/dgr_ct/README.md``.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import torch  # noqa: E402
import yaml  # noqa: E402
from _harness import bench_parser, recipe_cli, results_dir, timed_fit, update_readme  # noqa: E402
from _report import generated_header, machine_line, markdown_table, mean_std, paired  # noqa: E402

from lightning_distill.data.ct import SparseViewCTDataModule  # noqa: E402
from lightning_distill.radiance.ct import radon_forward, skimage_fbp, view_angles  # noqa: E402
from lightning_distill.radiance.dgr import ct_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "dgr_ct" / "config.yaml"
FBP, ALONE, DGR_ROW, TEACHER = (
    "FBP (skimage iradon)",
    "student alone (pixel + focal)",
    "DGR",
    "DGR teacher path (2V views)",
)


def ms_per_slice(fn, x: torch.Tensor) -> float:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        with torch.no_grad():
            fn(x)
        times.append(1000 * (time.perf_counter() - start) / x.shape[0])
    return statistics.median(times)


def train(variant: str, views: int, seed: int, steps: int, num_train: int):
    config = copy.deepcopy(yaml.safe_load(CONFIG.read_text()))
    config["trainer"].pop("max_epochs", None)
    # Lightning counts every optimizer step: a DGR batch steps the teacher encoder and the student, so it
    # needs twice the steps for the student to get the same number of updates (batches) as alone
    config["trainer"]["max_steps"] = steps if variant == "alone" else 2 * steps
    config["trainer"]["callbacks"] = []
    init = config["model"]["init_args"]
    init["finetune_epoch"] = -1 if variant == "alone" else None
    config["data"]["init_args"].update(views=views, num_train=num_train)
    extra = ["--test_after_fit=false", "--trainer.num_sanity_val_steps=0"]
    with tempfile.TemporaryDirectory() as tmp:
        cli = recipe_cli(config, seed, extra, workdir=Path(tmp))
        _, cpu = timed_fit(cli)
    return cli.model.eval(), cli.datamodule, cpu


def run_one(variant: str, views: int, seed: int, steps: int, num_train: int) -> dict[str, float]:
    """Train one network and score it on the test slices (runs in a worker process with ``--jobs``)."""
    torch.set_num_threads(1)
    model, data, cpu = train(variant, views, seed, steps, num_train)
    sparse, dense, target = data.splits["test"].tensors
    out = {"cpu": cpu}
    with torch.no_grad():
        out.update(ct_metrics(model.student(sparse), target))
        out["ms"] = ms_per_slice(model.student, sparse)
        if variant == "dgr":
            out.update(
                {f"teacher_{k}": v for k, v in ct_metrics(model.teacher_forward(dense)[0], target).items()}
            )
    return {k: float(v) for k, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    args = build_parser().start(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    views_list = [18] if args.quick else args.views
    steps = 20 if args.quick else args.steps
    total = time.perf_counter()
    rows: dict[tuple[int, str], dict[str, list[float]]] = {}

    def add(v: int, name: str, key: str, value: float) -> None:
        rows.setdefault((v, name), {}).setdefault(key, []).append(value)

    jobs = [(variant, views, seed) for views in views_list for seed in seeds for variant in ("alone", "dgr")]
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [
            pool.submit(run_one, variant, views, seed, steps, args.num_train) for variant, views, seed in jobs
        ]
        results = [f.result() for f in futures]
    for (variant, views, seed), result in zip(jobs, results):
        name = ALONE if variant == "alone" else DGR_ROW
        for key in ("psnr", "ssim", "ms", "cpu"):
            add(views, name, key, result[key])
        if variant == "dgr":
            add(views, TEACHER, "psnr", result["teacher_psnr"])
            add(views, TEACHER, "ssim", result["teacher_ssim"])
        print(f"{views} views, seed {seed}, {name}: PSNR {result['psnr']:.2f}", flush=True)
    torch.set_num_threads(1)
    for views in views_list:
        data = SparseViewCTDataModule(size=64, views=views, num_train=1, num_val=1, num_test=32)
        target = data.phantoms("test")
        angles = view_angles(views)
        sino = radon_forward(target, angles)
        recon = skimage_fbp(sino, angles)
        for k, v in ct_metrics(recon, target).items():
            add(views, FBP, k, float(v))
        add(views, FBP, "ms", ms_per_slice(lambda s, a=angles: skimage_fbp(s, a), sino))
    body = render(rows, views_list, seeds, steps, args, time.perf_counter() - total)
    (results_dir(args) / "dgr_ct.md").write_text(body)
    print(f"\n{body}", flush=True)
    update_readme(args, ROOT / "recipes" / "dgr_ct" / "README.md", body)


def render(rows, views_list, seeds, steps, args, seconds: float) -> str:
    headers = ["views", "method", "PSNR (dB)", "SSIM", "ms / slice", "train CPU s"]
    table = []
    for views in views_list:
        for name in (FBP, ALONE, DGR_ROW, TEACHER):
            r = rows.get((views, name))
            if r is None:
                continue
            table.append(
                [
                    views,
                    name,
                    mean_std(r["psnr"]),
                    mean_std(r["ssim"], digits=4),
                    mean_std(r["ms"], digits=2) if "ms" in r else "-",
                    mean_std(r["cpu"], digits=0) if "cpu" in r else "-",
                ]
            )
    diffs = []
    for views in views_list:
        a, b = rows[(views, DGR_ROW)], rows[(views, ALONE)]
        diffs.append(
            f"{views} views: PSNR {paired(a['psnr'], b['psnr'])} dB, SSIM {paired(a['ssim'], b['ssim'], digits=4)}"
        )
    return (
        "\n".join(
            [
                generated_header("benchmarks/dgr_ct.py", args.command, seconds),
                "",
                machine_line(),
                "",
                f"Seeds {', '.join(map(str, seeds))}; mean ± sample std over seeds (FBP is deterministic). "
                f"64x64 phantoms, {args.num_train} training slices, 32 test slices (the last is Shepp–Logan); "
                f"every student trained for {steps} batches (DGR: {2 * steps} optimizer steps, a teacher and a student "
                "update per batch), batch 8, Adam 5e-4 (the official rate), from the same initialisation and "
                "batches per seed. PSNR/SSIM of the output clamped to [0, 1] against the phantom, data range 1.",
                "",
                markdown_table(headers, table, align="rlrrrr"),
                "",
                "DGR − student alone, paired over seeds: " + "; ".join(diffs) + ".",
            ]
        )
        + "\n"
    )


def build_parser():
    parser = bench_parser(__file__, __doc__, quick="1 seed, 18 views, 20 steps")
    parser.add_argument(
        "--views", type=int, nargs="+", default=[18, 36, 72], help="view counts (default 18 36 72)"
    )
    parser.add_argument(
        "--steps", type=int, default=300, help="training steps of every network (default 300)"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="trainings run at once, one thread each (default 1)"
    )
    parser.add_argument("--num-train", type=int, default=128, help="training slices (default 128)")
    return parser


if __name__ == "__main__":
    main()
