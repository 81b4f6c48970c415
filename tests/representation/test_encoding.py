import pytest
import torch

from lightning_distill.models.vit import mae_vit, vit_backbone
from lightning_distill.representation import (
    decode,
    encode,
    pooled_features,
    random_masks,
    set_prediction_head,
    visible_tokens,
)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return mae_vit(
        image_size=16, patch_size=4, hidden_size=16, num_layers=2, num_heads=2, decoder_hidden_size=8
    )


def test_encode_drops_exactly_the_masked_patches(model):
    x = torch.randn(3, 1, 16, 16)
    mask = random_masks(3, 16, 0.75, generator=torch.Generator().manual_seed(0))
    out = encode(model, x, mask, hidden_states=True)
    torch.testing.assert_close(out.mask, mask)
    assert out.latent.shape == (3, 1 + 4, 16)
    assert len(out.hidden_states) == 3  # embeddings + 2 blocks
    emb = model.vit.embeddings
    expected = visible_tokens(emb.patch_embeddings(x) + emb.position_embeddings[:, 1:], mask)
    torch.testing.assert_close(out.hidden_states[0][:, 1:], expected)
    # block 1 output by hand equals hidden_states[1]
    manual = model.vit.layers[0](out.hidden_states[0])
    manual = manual[0] if isinstance(manual, tuple) else manual
    torch.testing.assert_close(out.hidden_states[1], manual)


def test_encode_without_mask_sees_every_patch_and_restores_config(model):
    before = model.config.mask_ratio
    out = encode(model, torch.randn(2, 1, 16, 16))
    assert out.latent.shape == (2, 17, 16) and out.mask.sum() == 0
    assert model.config.mask_ratio == before


def test_encode_rejects_uneven_or_misshaped_masks(model):
    x = torch.randn(2, 1, 16, 16)
    with pytest.raises(ValueError, match="same number"):
        uneven = torch.tensor([[1.0] * 12 + [0.0] * 4, [1.0] * 8 + [0.0] * 8])
        encode(model, x, uneven)
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        encode(model, x, torch.zeros(2, 9))


def test_decode_predicts_every_patch_and_head_can_be_swapped(model):
    x = torch.randn(2, 1, 16, 16)
    mask = random_masks(2, 16, 0.5)
    assert decode(model, encode(model, x, mask)).shape == (2, 16, 16)
    set_prediction_head(model, 36)
    assert decode(model, encode(model, x, mask)).shape == (2, 16, 36)


def test_pooled_features_of_vit_mae_and_vit_model(model):
    x = torch.randn(2, 1, 16, 16)
    assert pooled_features(model, x).shape == (2, 16)
    assert pooled_features(model, x, pool="cls").shape == (2, 16)
    vit = vit_backbone(image_size=16, patch_size=4, hidden_size=16, num_layers=1, num_heads=2)
    assert pooled_features(vit, x).shape == (2, 16)
    with pytest.raises(ValueError, match="pool"):
        pooled_features(model, x, pool="max")


def test_mae_vit_paper_sizes_and_local_folders(tmp_path, model):
    assert mae_vit(size="base", image_size=32, patch_size=16, decoder_hidden_size=8).config.hidden_size == 768
    model.save_pretrained(tmp_path / "mae")
    loaded = mae_vit(pretrained=str(tmp_path / "mae"))
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b)
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        mae_vit(pretrained=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="patch_size"):
        mae_vit(image_size=15, patch_size=4)
