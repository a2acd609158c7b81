"""pipeline.training.corruptions: seeded, in range, stronger at severity 2, and a dataset wrapper that keeps
targets and the wrapped dataset's attributes."""
from __future__ import annotations

import pytest
import torch

from pipeline.training.corruptions import KINDS, Corrupted, corrupt


class Images(torch.utils.data.Dataset):
    image_size = 32
    label_to_cat = {1: 7}

    def __len__(self):
        return 3

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(100 + i)
        return torch.rand(3, 32, 32, generator=g), {"image_id": i}


@pytest.mark.parametrize("kind", KINDS)
def test_each_corruption_changes_the_image_within_range_more_at_severity_2(kind):
    img = Images()[0][0]
    diffs = []
    for severity in (1, 2):
        out = corrupt(img, kind, severity, torch.Generator().manual_seed(0))
        assert out.shape == img.shape and out.dtype == img.dtype and 0 <= out.min() and out.max() <= 1
        diffs.append(float((out - img).abs().mean()))
    assert 0 < diffs[0] < diffs[1]


def test_the_wrapper_is_seeded_per_image_and_keeps_targets_and_attributes():
    data = Corrupted(Images(), "gaussian_noise", 1, seed=3)
    assert len(data) == 3 and data.image_size == 32 and data.label_to_cat == {1: 7}
    img, target = data[1]
    assert target == {"image_id": 1} and torch.equal(img, Corrupted(Images(), "gaussian_noise", 1, seed=3)[1][0])
    assert not torch.equal(img, Corrupted(Images(), "gaussian_noise", 1, seed=4)[1][0])
    assert not torch.equal(data[0][0], data[1][0])
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        Corrupted(Images(), "fog", 1)
    with pytest.raises(ValueError, match="severity must be one of"):
        Corrupted(Images(), "blur", 3)
