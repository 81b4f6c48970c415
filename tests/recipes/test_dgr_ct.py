"""DGR (GloReDi) recipe: the two turns, what each updates, what is detached, the EMA decoder, bad input."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch

from lightning_distill.data.ct import SparseViewCTDataModule
from lightning_distill.losses.radiance import focal_frequency_loss, latent_cosine_loss, smooth_l1_pixel_loss
from lightning_distill.radiance.networks import CTEncoderDecoder, VAEEncoderDecoder
from lightning_distill.recipes.dgr_ct import DGR
from tests.conftest import quiet_trainer_kwargs


def make(**kwargs) -> DGR:
    torch.manual_seed(0)
    net = CTEncoderDecoder(channels=4, num_down=2, encoder_blocks=1, decoder_blocks=1)
    return DGR(student=net, **({"memory_length": 4} | kwargs))


def data(**kwargs) -> SparseViewCTDataModule:
    return SparseViewCTDataModule(
        **(dict(size=16, views=6, num_train=8, num_val=4, num_test=4, batch_size=4) | kwargs)
    )


def batch(b: int = 2, size: int = 16):
    g = torch.Generator().manual_seed(1)
    return tuple(torch.rand(b, 1, size, size, generator=g) for _ in range(3))


def test_the_teacher_path_starts_as_the_student_and_the_ema_decoder_copies_at_decay_0():
    recipe = make()
    for a, b in zip(recipe.teacher_encoder.parameters(), recipe.student.encoder.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()  # equal, not shared
    with torch.no_grad():
        for p in recipe.student.decoder.parameters():
            p.add_(1.0)
    recipe.update_teacher_decoder()
    for a, b in zip(recipe.teacher_decoder.parameters(), recipe.student.decoder.parameters()):
        assert torch.equal(a, b)
    half = make(ema_decay=0.5)
    before = [p.clone() for p in half.teacher_decoder.parameters()]
    with torch.no_grad():
        for p in half.student.decoder.parameters():
            p.add_(2.0)
    half.update_teacher_decoder()
    for a, b0, s in zip(half.teacher_decoder.parameters(), before, half.student.decoder.parameters()):
        torch.testing.assert_close(a, 0.5 * b0 + 0.5 * s)


def test_terms_are_the_loss_functions_on_the_right_inputs():
    recipe = make()
    sparse, dense, target = batch()
    pred, z_s = recipe.student_forward(sparse)
    torch.testing.assert_close(pred, recipe.student(sparse))
    terms = recipe.image_terms(pred, target)
    torch.testing.assert_close(terms["pixel"], smooth_l1_pixel_loss(pred, target))
    torch.testing.assert_close(terms["freq"], focal_frequency_loss(pred, target))
    t_pred, z_t = recipe.teacher_forward(dense)
    torch.testing.assert_close(t_pred, recipe.teacher_decoder(recipe.teacher_encoder(dense)))
    torch.testing.assert_close(recipe.cosine_loss(z_s, z_t), latent_cosine_loss(z_s, z_t, channel_ratio=0.5))


class _Grads(L.Callback):
    """Records, per turn, which parts received a gradient (checked before each optimizer step)."""

    def __init__(self):
        self.seen, self.last = [], {}

    @staticmethod
    def _parts(module):
        return {
            "student_encoder": module.student.encoder,
            "student_decoder": module.student.decoder,
            "teacher_encoder": module.teacher_encoder,
        }

    def on_fit_start(self, trainer, pl_module):
        for opt in trainer.optimizers:
            opt.register_step_pre_hook(self._hook(pl_module))

    def _hook(self, module):
        def hook(opt, args, kwargs):
            def grads(m):
                return sum(float(p.grad.abs().sum()) for p in m.parameters() if p.grad is not None)

            # a part "got" a gradient in this turn when its gradient is non-zero and not the one
            # left over from the previous turn (each turn zeroes only its own optimizer's gradients)
            now = {n: grads(m) for n, m in self._parts(module).items()}
            turn = {n: bool(v > 0 and v != self.last.get(n)) for n, v in now.items()}
            turn["teacher_decoder"] = any(p.grad is not None for p in module.teacher_decoder.parameters())
            self.seen.append(turn)
            self.last = now

        return hook


def test_each_turn_updates_exactly_its_parts_and_the_teacher_decoder_never_learns():
    recipe = make(memory_length=2)
    grads = _Grads()
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=4, limit_val_batches=0, callbacks=[grads]))
    trainer.fit(recipe, datamodule=data())
    teacher_turn, student_turn = grads.seen[0], grads.seen[1]
    assert teacher_turn == {
        "student_encoder": False, "student_decoder": False, "teacher_encoder": True, "teacher_decoder": False,
    }  # fmt: skip
    # the student turn: the teacher latent is detached (no gradient into the teacher encoder)
    assert student_turn == {
        "student_encoder": True, "student_decoder": True, "teacher_encoder": False, "teacher_decoder": False,
    }  # fmt: skip
    logged = trainer.callback_metrics
    assert {
        "train/loss_teacher",
        "train/loss_student",
        "train/cos",
        "train/scl",
        "train/teacher_pixel",
    } <= set(logged)
    assert float(logged["train/scl"]) > 0  # the 2-entry bank was full after the first student turn
    assert not any(p.requires_grad for p in recipe.teacher_decoder.parameters())
    assert not recipe.teacher_decoder.training


def test_latent_terms_detach_the_teacher_latent():
    recipe = make(memory_length=1)
    sparse, dense, _ = batch()
    recipe.contrastive_loss(*[recipe.student_forward(sparse)[1].detach()] * 2)  # fills the 1-entry bank
    _, z_s = recipe.student_forward(sparse)
    _, z_t = recipe.teacher_forward(dense)  # with gradient on purpose
    (recipe.cosine_loss(z_s, z_t) + recipe.contrastive_loss(z_s, z_t)).backward()
    assert all(p.grad is None for p in recipe.teacher_encoder.parameters())
    assert any(p.grad is not None for p in recipe.student.encoder.parameters())


def test_student_total_is_the_weighted_sum_of_its_terms():
    weights = {"cos": 3.0, "scl": 0.5, "freq": 2.0}
    recipe = make(loss_weights=weights, memory_length=2)
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=3, limit_val_batches=0, log_every_n_steps=1))
    trainer.fit(recipe, datamodule=data())
    m = trainer.callback_metrics
    total = m["train/pixel"] + 2.0 * m["train/freq"] + 3.0 * m["train/cos"] + 0.5 * m["train/scl"]
    torch.testing.assert_close(m["train/loss_student"], total, rtol=1e-5, atol=1e-6)


def test_finetune_stage_trains_only_the_student_and_validation_logs_psnr_ssim():
    recipe = make(finetune_epoch=-1)
    grads = _Grads()
    trainer = L.Trainer(**quiet_trainer_kwargs(max_epochs=1, limit_train_batches=2, callbacks=[grads]))
    teacher_before = [p.clone() for p in recipe.teacher_encoder.parameters()]
    trainer.fit(recipe, datamodule=data())
    assert len(grads.seen) == 2 and not any(s["teacher_encoder"] for s in grads.seen)
    for a, b in zip(recipe.teacher_encoder.parameters(), teacher_before):
        assert torch.equal(a, b)
    assert {"val/psnr", "val/ssim", "val/teacher_psnr", "val/fbp_psnr"} <= set(trainer.callback_metrics)
    assert "train/cos" not in trainer.callback_metrics


def test_bad_arguments_and_batches_are_rejected_with_the_key_named():
    with pytest.raises(ValueError, match="ema_decay"):
        make(ema_decay=1.0)
    with pytest.raises(ValueError, match="channel_ratio"):
        make(channel_ratio=0.0)
    with pytest.raises(ValueError, match="contrastive_band"):
        make(contrastive_band=(0.6, 0.1))
    with pytest.raises(ValueError, match="temperature"):
        make(temperature=0.0)
    with pytest.raises(ValueError, match="memory_length"):
        make(memory_length=0)
    with pytest.raises(ValueError, match="student"):
        DGR(student=torch.nn.Conv2d(1, 1, 3))
    recipe = make()
    with pytest.raises(ValueError, match="sparse_fbp"):
        recipe.evaluate(recipe.student, batch()[:2])


def test_diffusers_autoencoder_runs_the_same_training_step():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
        norm_num_groups=4, layers_per_block=1,
    )  # fmt: skip
    recipe = DGR(student=VAEEncoderDecoder(vae), memory_length=2)
    grads = _Grads()
    trainer = L.Trainer(**quiet_trainer_kwargs(max_steps=2, limit_val_batches=0, callbacks=[grads]))
    trainer.fit(recipe, datamodule=data())
    assert grads.seen[0]["teacher_encoder"] and not grads.seen[0]["student_encoder"]
    assert grads.seen[1]["student_encoder"] and grads.seen[1]["student_decoder"]
    assert torch.isfinite(trainer.callback_metrics["train/loss_student"])


def test_global_skip_network_starts_as_the_identity_and_both_paths_add_their_input():
    torch.manual_seed(0)
    net = CTEncoderDecoder(channels=4, num_down=1, encoder_blocks=1, out_activation="none", global_skip=True)
    recipe = DGR(student=net, memory_length=2)
    sparse, dense, _ = batch()
    pred, _ = recipe.student_forward(sparse)
    torch.testing.assert_close(pred, sparse)  # the last layer starts at zero: the output is the FBP input
    torch.testing.assert_close(pred, recipe.student(sparse))
    torch.testing.assert_close(recipe.teacher_forward(dense)[0], dense)


def test_the_memory_bank_takes_every_ranks_embeddings_through_gather():
    from lightning_distill.radiance.dgr import LatentMemoryBank, band_contrastive_loss, band_embeddings

    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    own = band_embeddings(s)
    other = torch.randn_like(own)  # "rank 1"'s embeddings
    memory = LatentMemoryBank(8)
    band_contrastive_loss(s, t, memory, gather=lambda e: torch.cat([e, other]))
    assert int(memory.filled) == 4
    torch.testing.assert_close(memory.bank[:4], torch.cat([own, other]))
