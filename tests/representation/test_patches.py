import torch

from lightning_distill.data.patches import SKIMAGE_IMAGES, NaturalPatchesDataModule


def test_patches_are_labelled_by_source_picture_and_split_stratified():
    dm = NaturalPatchesDataModule(patches_per_image=20, size=16, batch_size=32)
    dm.setup()
    x, y = dm.train_images()
    assert x.shape[1:] == (1, 16, 16)
    assert sorted(y.unique().tolist()) == list(range(len(SKIMAGE_IMAGES)))
    assert torch.isfinite(x).all()


def test_training_augmentation_is_a_function_of_seed_epoch_and_index():
    dm = NaturalPatchesDataModule(patches_per_image=10, crop=16, shift=1)
    dm.setup()
    dataset = dm.train_dataloader().dataset
    torch.testing.assert_close(dataset[(3, 5)][0], dataset[(3, 5)][0])
    flips = sum(not torch.equal(dataset[(e, 0)][0], dataset.images[0]) for e in range(8))
    assert flips > 0
