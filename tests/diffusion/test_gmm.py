"""The exact-score bench: closed-form noised scores, the perfect teacher and sampling from it."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler
from torch import distributions as dist
from torch.testing import assert_close

from lightning_distill.diffusion.gmm import AnalyticTeacher, GaussianMixture, make_mixture
from lightning_distill.diffusion.metrics import (
    mode_assignment,
    mode_coverage,
    mode_weight_tv,
    noise_floor,
    sliced_wasserstein,
)


# ----------------------------------------------------------------------------------------------
# Stand-in schedules (the protocol only: alpha_sigma, kind, num_train_timesteps, prediction_type)
# ----------------------------------------------------------------------------------------------
class VPSchedule:
    """DDPM's linear betas: alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), t an index in [0, T)."""

    kind = "vp"
    num_train_timesteps = 1000

    def __init__(self, prediction_type: str = "epsilon") -> None:
        self.prediction_type = prediction_type
        self.abar = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.double()

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        abar = self.abar.to(t.device)[t.long()]
        return abar.sqrt().float(), (1 - abar).sqrt().float()


class FlowSchedule:
    """Rectified flow: sigma = t / T, alpha = 1 - sigma, t a float in [0, T]."""

    kind = "flow"
    num_train_timesteps = 1000
    prediction_type = "flow"

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = t.float() / self.num_train_timesteps
        return 1 - sigma, sigma


def reference_mixture(gmm: GaussianMixture, alpha: float, sigma: float, modes=None) -> dist.Distribution:
    """The noised mixture built independently with torch.distributions (optionally a subset of modes)."""
    keep = torch.arange(gmm.num_modes) if modes is None else torch.as_tensor(modes)
    covs = alpha**2 * gmm.covs[keep] + sigma**2 * torch.eye(gmm.dim, dtype=torch.float64)
    return dist.MixtureSameFamily(
        dist.Categorical(probs=gmm.weights[keep]),
        dist.MultivariateNormal(alpha * gmm.means[keep], covariance_matrix=covs),
    )


def autograd_score(log_density, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_density(x).sum(), x)
    return grad


MIXTURES = {
    "ring": lambda: GaussianMixture.ring(k=8, radius=4.0, std=0.25),
    "diagonal": lambda: GaussianMixture(
        [[0.0, 1.0], [2.0, -1.0], [-2.0, 0.5]],
        stds=[[0.3, 0.6], [0.5, 0.2], [1.0, 0.4]],
        weights=[0.2, 0.5, 0.3],
    ),
    "blobs_full_cov": lambda: GaussianMixture.blobs(dim=5, k=4, seed=3),
    "line_1d": lambda: GaussianMixture.line_1d(),
}


@pytest.mark.parametrize("name", sorted(MIXTURES))
@pytest.mark.parametrize(("alpha", "sigma"), [(1.0, 0.0), (0.9, 0.3), (0.3, 0.95), (0.02, 1.0)])
def test_noised_score_matches_autograd_of_reference_mixture(name: str, alpha: float, sigma: float) -> None:
    gmm = MIXTURES[name]()
    gen = torch.Generator().manual_seed(0)
    x = (
        alpha * gmm.sample(64, gen, dtype=torch.float64)
        + sigma * torch.randn(64, gmm.dim, generator=gen).double()
    )
    x = torch.cat([x, 3 * torch.randn(8, gmm.dim, generator=gen, dtype=torch.float64)])  # also far from data
    reference = reference_mixture(gmm, alpha, sigma)
    assert_close(gmm.noised_log_prob(x, alpha, sigma), reference.log_prob(x))
    assert_close(gmm.noised_score(x, alpha, sigma), autograd_score(reference.log_prob, x))


def test_noised_score_matches_finite_differences_with_per_sample_noise_levels() -> None:
    gmm = GaussianMixture.blobs(dim=3, k=5, spread=1.5, std=0.4, seed=1)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, generator=gen, dtype=torch.float64) * 2
    alpha = torch.rand(16, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    sigma = (1 - alpha**2).sqrt()
    h = 1e-5
    fd = torch.stack(
        [
            (gmm.noised_log_prob(x + h * e, alpha, sigma) - gmm.noised_log_prob(x - h * e, alpha, sigma))
            / (2 * h)
            for e in torch.eye(3, dtype=torch.float64)
        ],
        dim=1,
    )
    assert_close(gmm.noised_score(x, alpha, sigma), fd, atol=1e-6, rtol=1e-6)


def test_small_noise_limit_is_the_data_score() -> None:
    gmm = GaussianMixture.ring(k=8, std=0.25)
    x = gmm.sample(32, torch.Generator().manual_seed(2), dtype=torch.float64)
    data_score = autograd_score(reference_mixture(gmm, 1.0, 0.0).log_prob, x)
    assert_close(gmm.noised_score(x, 1.0, 0.0), data_score)
    # Nearly no noise (sigma 1e-4 against std 0.25) changes the score by O(sigma^2 / std^2).
    assert_close(gmm.noised_score(x, math.sqrt(1 - 1e-8), 1e-4), data_score, atol=1e-5, rtol=1e-5)


def test_conditional_score_uses_only_the_modes_of_the_class() -> None:
    gmm = GaussianMixture.ring(k=8, num_classes=3)  # classes 0,1,2,0,1,2,0,1
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(24, 2, generator=gen, dtype=torch.float64) * 3
    labels = torch.arange(24) % 3
    score = gmm.noised_score(x, 0.8, 0.6, labels)
    for c in range(3):
        modes = [k for k in range(8) if k % 3 == c]
        reference = reference_mixture(gmm, 0.8, 0.6, modes)
        rows = labels == c
        assert_close(score[rows], autograd_score(reference.log_prob, x[rows]))
        assert_close(gmm.noised_log_prob(x[rows], 0.8, 0.6, labels[rows]), reference.log_prob(x[rows]))
    # -1 and num_classes both mean "unconditional".
    unconditional = gmm.noised_score(x, 0.8, 0.6)
    assert_close(gmm.noised_score(x, 0.8, 0.6, torch.full((24,), -1)), unconditional)
    assert_close(gmm.noised_score(x, 0.8, 0.6, torch.full((24,), 3)), unconditional)


def test_posterior_mean_of_one_gaussian_matches_the_linear_gaussian_formula() -> None:
    base = GaussianMixture.blobs(dim=4, k=1, seed=5)
    mu, cov = base.means[0], base.covs[0]
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    alpha, sigma = 0.6, 0.8
    gain = alpha * cov @ torch.linalg.inv(alpha**2 * cov + sigma**2 * torch.eye(4, dtype=torch.float64))
    expected = mu + (x - alpha * mu) @ gain.T
    assert_close(base.posterior_mean(x, alpha, sigma), expected)
    # Tweedie for the whole mixture: x_t = alpha E[x0 | x_t] - sigma^2 score.
    gmm = GaussianMixture.blobs(dim=4, k=6, seed=6)
    score, mean = gmm.score_and_posterior_mean(x, alpha, sigma)
    assert_close(alpha * mean - sigma**2 * score, x)
    # At alpha = 0 the posterior mean is the data mean, finite.
    assert_close(gmm.posterior_mean(x, 0.0, 1.0), (gmm.weights[:, None] * gmm.means).sum(0).expand(10, 4))


def test_samples_have_the_mixture_moments_and_respect_labels() -> None:
    gmm = GaussianMixture.blobs(dim=3, k=3, seed=7, num_classes=3)
    gen = torch.Generator().manual_seed(7)
    x, modes = gmm.sample(60000, gen, return_modes=True, dtype=torch.float64)
    assert_close(torch.bincount(modes, minlength=3).double() / 60000.0, gmm.weights, atol=0.01, rtol=0)
    for k in range(3):
        xs = x[modes == k]
        assert_close(xs.mean(0), gmm.means[k], atol=0.03, rtol=0)
        assert_close(torch.cov(xs.T), gmm.covs[k], atol=0.03, rtol=0)
    labels = torch.tensor([2, 0, 1, 2] * 5)
    _, modes = gmm.sample(20, gen, labels=labels, return_modes=True)
    assert torch.equal(gmm.class_of_mode[modes], labels)
    again = gmm.sample(5, torch.Generator().manual_seed(11))
    assert torch.equal(again, gmm.sample(5, torch.Generator().manual_seed(11)))


def test_noised_mixture_object_matches_closed_form() -> None:
    gmm = GaussianMixture.ring(k=4, std=0.3)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    assert_close(gmm.noised(0.7, 0.5).log_prob(x), gmm.noised_log_prob(x, 0.7, 0.5))
    assert_close(gmm.noised(0.7, 0.5).noised_score(x, 1.0, 0.0), gmm.noised_score(x, 0.7, 0.5))


# ----------------------------------------------------------------------------------------------
# AnalyticTeacher
# ----------------------------------------------------------------------------------------------
def test_teacher_parameterisations_describe_one_denoiser() -> None:
    gmm = GaussianMixture.ring(k=8, num_classes=8)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 2
    t = torch.randint(1, 1000, (16,), generator=torch.Generator().manual_seed(10))
    vp = VPSchedule()
    alpha, sigma = (v.double()[:, None] for v in vp.alpha_sigma(t))
    eps = AnalyticTeacher(gmm, vp)(x, t)
    assert_close(eps, -sigma * gmm.noised_score(x, alpha[:, 0], sigma[:, 0]))
    x0 = AnalyticTeacher(gmm, vp, prediction_type="sample")(x, t)
    v = AnalyticTeacher(gmm, vp, prediction_type="v_prediction")(x, t)
    assert_close((x - alpha * x0) / sigma, eps)  # sample -> eps
    assert_close(sigma * x + alpha * v, eps)  # v -> eps (alpha^2 + sigma^2 = 1)
    assert_close(alpha * x - sigma * v, x0)  # v -> x0
    flow = FlowSchedule()
    tf = t.double()
    a, s = (v.double()[:, None] for v in flow.alpha_sigma(tf))  # float32, as the teacher receives them
    u = AnalyticTeacher(gmm, flow)(x, tf)
    assert_close(x + a * u, -s * gmm.noised_score(x, a[:, 0], s[:, 0]))  # flow -> eps
    assert_close(x - s * u, gmm.posterior_mean(x, a[:, 0], s[:, 0]))  # flow -> x0
    # Any sample shape with D values per sample, a scalar timestep, float32 in and out.
    images = torch.randn(4, 1, 1, 2)
    out = AnalyticTeacher(gmm, vp)(images, torch.tensor(500))
    assert out.shape == images.shape and out.dtype == torch.float32


def test_cfg_on_the_teacher_is_the_score_of_the_guided_mixture() -> None:
    gmm = GaussianMixture.ring(k=8, num_classes=4)
    teacher = AnalyticTeacher(gmm, VPSchedule())
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(12, 2, generator=gen, dtype=torch.float64) * 2
    t = torch.full((12,), 600)
    labels = torch.arange(12) % 4
    w = 3.0
    eps_c = teacher(x, t, class_labels=labels)
    eps_u = teacher(x, t, class_labels=torch.full((12,), 4))  # the null class
    alpha, sigma = (float(v[0]) for v in VPSchedule().alpha_sigma(t))

    def guided_log_density(xs: torch.Tensor) -> torch.Tensor:
        uncond = reference_mixture(gmm, alpha, sigma).log_prob(xs)
        cond = torch.stack(
            [
                reference_mixture(gmm, alpha, sigma, [k for k in range(8) if k % 4 == int(c)]).log_prob(xi)
                for xi, c in zip(xs, labels)
            ]
        )
        return (1 - w) * uncond + w * cond

    expected = -sigma * autograd_score(guided_log_density, x)
    assert_close(eps_u + w * (eps_c - eps_u), expected, atol=1e-5, rtol=1e-5)  # alpha, sigma are float32
    assert_close(gmm.guided_score(x, alpha, sigma, labels, w), expected / -sigma, atol=1e-5, rtol=1e-5)


def ddim(model, schedule, x: torch.Tensor, timesteps: list, class_labels=None) -> torch.Tensor:
    """Plain deterministic DDIM written from the paper: x' = alpha' x0_hat + sigma' eps_hat; last step to x0."""
    for i, t in enumerate(timesteps):
        tt = torch.full((x.shape[0],), t)
        alpha, sigma = (v[:, None].double() for v in schedule.alpha_sigma(tt))
        out = model(x, tt, class_labels=class_labels).double()
        if schedule.prediction_type == "epsilon":
            eps = out
            x0 = (x - sigma * eps) / alpha
        else:  # flow velocity u = eps - x0
            x0 = x - sigma * out
            eps = x + alpha * out
        if i + 1 < len(timesteps):
            a_next, s_next = (
                v[:, None].double() for v in schedule.alpha_sigma(torch.full((x.shape[0],), timesteps[i + 1]))
            )
            x = a_next * x0 + s_next * eps
        else:
            x = x0
    return x


def test_ddim_on_the_analytic_teacher_reproduces_the_mixture() -> None:
    """The bench's strongest check: 50 DDIM steps of the perfect eps-model land on the data."""
    gmm = GaussianMixture.ring(k=8, radius=4.0, std=0.25)
    n = 2000
    floor = noise_floor(sliced_wasserstein, gmm, n, seeds=(0, 1, 2))
    gen = torch.Generator().manual_seed(100)
    data = gmm.sample(n, gen, dtype=torch.float64)
    timesteps = [999 - 20 * i for i in range(50)]  # "trailing" spacing: 999, 979, ..., 19
    samples = ddim(
        AnalyticTeacher(gmm, VPSchedule()), VPSchedule(), torch.randn(n, 2, generator=gen).double(), timesteps
    )
    swd = sliced_wasserstein(samples, data)
    assert swd < floor.mean() + 3 * floor.std(), (float(swd), floor.tolist())
    assert float(mode_coverage(samples, gmm, min_fraction=0.5)) == 1.0
    tv_floor = noise_floor(lambda x, _: mode_weight_tv(x, gmm), gmm, n)
    assert mode_weight_tv(samples, gmm) < tv_floor.mean() + 3 * tv_floor.std()
    # One step cannot: it returns E[x0 | x_T], close to the centre of the ring.
    one_step = ddim(
        AnalyticTeacher(gmm, VPSchedule()), VPSchedule(), torch.randn(n, 2, generator=gen).double(), [999]
    )
    assert sliced_wasserstein(one_step, data) > 10 * floor.mean()


def mode_spread(x: torch.Tensor, gmm: GaussianMixture) -> float:
    """RMS per-coordinate distance of the points to their nearest mode centre (on-mode points only)."""
    index = mode_assignment(x, gmm)
    residuals = torch.cat([x[index == k] - gmm.means[k] for k in range(gmm.num_modes)])
    return float(residuals.square().mean().sqrt())


def test_ddim_converges_to_the_data_spread_as_steps_grow() -> None:
    gmm = GaussianMixture.ring(k=8, radius=4.0, std=0.25)
    n = 4000
    data_spread = mode_spread(gmm.sample(n, torch.Generator().manual_seed(102), dtype=torch.float64), gmm)
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(103)).double()
    errors = {}
    for steps in (10, 50, 200):
        timesteps = [999 - round(1000 * i / steps) for i in range(steps)]
        samples = ddim(AnalyticTeacher(gmm, VPSchedule()), VPSchedule(), noise, timesteps)
        errors[steps] = abs(mode_spread(samples, gmm) / data_spread - 1)
    # Deterministic DDIM shrinks the modes a little (its last step returns E[x0 | x_t]); the bias
    # falls with the step count, and at 200 steps the spread is within 3% of the data's.
    assert errors[200] < errors[50] < errors[10], errors
    assert errors[200] < 0.03, errors


def test_flow_euler_and_conditional_sampling_on_the_teacher() -> None:
    gmm = GaussianMixture.grid(size=3, spacing=2.0, std=0.15, num_classes=3)
    n = 1500
    gen = torch.Generator().manual_seed(101)
    labels = torch.arange(n) % 3
    data = gmm.sample(n, gen, labels=labels, dtype=torch.float64)
    teacher = AnalyticTeacher(gmm, FlowSchedule())
    timesteps = [1000.0 * (1 - i / 50) for i in range(50)]  # sigma 1, 0.98, ..., 0.02, then to 0
    samples = ddim(teacher, FlowSchedule(), torch.randn(n, 2, generator=gen).double(), timesteps, labels)
    floor = noise_floor(sliced_wasserstein, gmm, n, labels=labels)
    assert sliced_wasserstein(samples, data) < floor.mean() + 3 * floor.std()
    nearest = gmm.mahalanobis(samples).argmin(1)
    assert torch.equal(gmm.class_of_mode[nearest], labels)  # every sample lands on a mode of its class


# ----------------------------------------------------------------------------------------------
# Presets and validation
# ----------------------------------------------------------------------------------------------
def test_presets_and_make_mixture() -> None:
    assert GaussianMixture.grid().num_modes == 25
    assert_close(
        GaussianMixture.ring(k=4, radius=2.0).means,
        torch.tensor([[2.0, 0], [0, 2.0], [-2.0, 0], [0, -2.0]], dtype=torch.float64),
        atol=1e-12,
        rtol=0,
    )
    line = make_mixture("line_1d")
    assert line.dim == 1 and line.means[:, 0].tolist() == [-1.0, 0.0, 1.0, 2.0]
    blobs = make_mixture("blobs", num_classes=2, options={"dim": 8, "k": 6})
    assert (blobs.dim, blobs.num_modes, blobs.num_classes) == (8, 6, 2)
    assert torch.equal(blobs.means, make_mixture("blobs", num_classes=2, options={"dim": 8, "k": 6}).means)
    with pytest.raises(ValueError, match="unknown \\['radius_'\\]"):
        make_mixture("ring", options={"radius_": 3.0})
    with pytest.raises(ValueError, match="`preset` must be one of"):
        make_mixture("spiral")


def test_bad_inputs_raise_with_the_argument_named() -> None:
    with pytest.raises(ValueError, match="exactly one of `covs`"):
        GaussianMixture([[0.0, 0.0]])
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture([[0.0, 0.0]], covs=[[[1.0, 0.0], [0.0, -1.0]]])
    with pytest.raises(ValueError, match="own no mode"):
        GaussianMixture([[0.0], [1.0]], stds=0.1, class_of_mode=[0, 2])
    with pytest.raises(ValueError, match="`weights` must be > 0"):
        GaussianMixture([[0.0], [1.0]], stds=0.1, weights=[1.0, 0.0])
    gmm = GaussianMixture.ring(num_classes=4)
    with pytest.raises(ValueError, match="`labels` must be in"):
        gmm.noised_score(torch.zeros(2, 2), 1.0, 0.5, torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="shape \\(B, D\\) with D = 2"):
        gmm.noised_score(torch.zeros(2, 3), 1.0, 0.5)
    with pytest.raises(ValueError, match="never both 0"):
        gmm.noised_score(torch.zeros(2, 2), 0.0, 0.0)
    with pytest.raises(ValueError, match="no classes"):
        GaussianMixture.ring().noised_score(torch.zeros(1, 2), 1.0, 0.5, torch.tensor([3]))
    with pytest.raises(ValueError, match="`prediction_type` must be one of"):
        AnalyticTeacher(gmm, VPSchedule(), prediction_type="x0")
    with pytest.raises(ValueError, match="`num_classes` must equal"):
        AnalyticTeacher(gmm, VPSchedule(), num_classes=10)


def test_teacher_moves_with_its_owner_and_has_no_parameters() -> None:
    teacher = AnalyticTeacher(GaussianMixture.ring(), VPSchedule())
    assert list(teacher.parameters()) == []
    assert "gmm.means" in teacher.state_dict()
    assert teacher.gmm.means.dtype == torch.float64


def test_a_config_builds_the_teacher_and_the_data_from_one_preset() -> None:
    from jsonargparse import ArgumentParser
    from lightning.pytorch import LightningDataModule
    from torch import nn

    config = {
        "teacher": {
            "class_path": "lightning_distill.diffusion.gmm.AnalyticTeacher",
            "init_args": {
                "gmm": {
                    "class_path": "lightning_distill.diffusion.gmm.make_mixture",
                    "init_args": {"preset": "ring", "num_classes": 8, "options": {"std": 0.2}},
                },
                "schedule": {
                    "class_path": "lightning_distill.diffusion.NoiseSchedule",
                    "init_args": {"scheduler": {"class_path": "diffusers.DDPMScheduler"}},
                },
            },
        },
        "data": {
            "class_path": "lightning_distill.data.gmm.GMMDataModule",
            "init_args": {"preset": "ring", "num_classes": 8, "options": {"std": 0.2}, "conditional": True},
        },
    }
    parser = ArgumentParser()
    parser.add_argument("--teacher", type=nn.Module)
    parser.add_argument("--data", type=LightningDataModule)
    built = parser.instantiate(parser.parse_object(config))
    assert isinstance(built.teacher, AnalyticTeacher) and built.teacher.prediction_type == "epsilon"
    assert_close(built.teacher.gmm.means, built.data.mixture.means)
    assert_close(built.teacher.gmm.eigvals, torch.full((8, 2), 0.04, dtype=torch.float64))
