"""The label channel of Label-Assisted Distillation against an independent pixel loop."""

from __future__ import annotations

import pytest
import torch

from lightning_distill.segmentation.label_coding import code_labels, fixed_label_values, random_label_values


def test_fixed_codes_are_the_official_ladder():
    # The official code: (arange(22) - 11) / 10 for 21 VOC classes plus the ignore code.
    torch.testing.assert_close(fixed_label_values(21), (torch.arange(22).float() - 11.0) / 10.0)


def test_coding_matches_a_pixel_loop_with_per_image_values_and_the_same_noise():
    torch.manual_seed(0)
    labels = torch.randint(0, 3, (2, 4, 5))
    labels[0, 0, 0] = -1  # ignored: takes the last code
    values = random_label_values(2, 3, torch.Generator().manual_seed(3))
    coded = code_labels(
        labels, values, noise_std=0.03, scale=100.0, generator=torch.Generator().manual_seed(7)
    )
    noise = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(7))
    expected = torch.empty(2, 1, 4, 5)
    for n in range(2):
        for i in range(4):
            for j in range(5):
                k = int(labels[n, i, j])
                code = values[n, 3] if k == -1 else values[n, k]
                expected[n, 0, i, j] = 100.0 * (code + 0.03 * noise[n, i, j])
    torch.testing.assert_close(coded, expected)


def test_pixels_of_one_class_share_a_code_up_to_the_noise():
    labels = torch.tensor([[[0, 0, 1, 1]]])
    coded = code_labels(labels, torch.tensor([0.5, -1.0, 0.0]), noise_std=0.03, scale=100.0)[0, 0, 0]
    assert abs(float(coded[0] - coded[1])) < 100 * 0.03 * 8 and abs(float(coded[0] - coded[2])) > 100


def test_bad_labels_and_values_are_rejected():
    with pytest.raises(ValueError, match="labels"):
        code_labels(torch.tensor([[[5]]]), fixed_label_values(3), noise_std=0.0)
    with pytest.raises(ValueError, match="values"):
        code_labels(torch.zeros(2, 2, 2, dtype=torch.long), torch.zeros(3, 4), noise_std=0.0)
    with pytest.raises(ValueError, match="labels"):
        code_labels(torch.zeros(2, 2), fixed_label_values(3), noise_std=0.0)
