"""Standard image corruptions for the robustness gate: the val images as a camera on a bad night sees them.

Four kinds at two severities, applied to the model's input (RGB float in 0..1, already resized to S x S), seeded
per image so that a rerun and the champion see exactly the same corrupted pixels:

| kind | severity 1 | severity 2 |
|---|---|---|
| `gaussian_noise` | sigma 0.04 | sigma 0.08 |
| `blur` | Gaussian, sigma 1.0 (kernel 5) | sigma 2.0 (kernel 9) |
| `brightness_contrast` | brightness x0.6, contrast x0.6 | brightness x0.4, contrast x0.4 |
| `jpeg` | quality 30 | quality 10 |

Levels follow the spirit of ImageNet-C's lower severities: visible, not destructive.
"""
from __future__ import annotations

import torch
from torch import Tensor

KINDS = ("gaussian_noise", "blur", "brightness_contrast", "jpeg")
SEVERITIES = (1, 2)
_NOISE = {1: 0.04, 2: 0.08}
_BLUR = {1: (5, 1.0), 2: (9, 2.0)}
_DIM = {1: 0.6, 2: 0.4}
_QUALITY = {1: 30, 2: 10}


def corrupt(img: Tensor, kind: str, severity: int, generator: torch.Generator) -> Tensor:
    """`img` [3, H, W] float in 0..1 with one corruption applied; the result stays in 0..1."""
    from torchvision.transforms.v2 import functional as F

    if kind == "gaussian_noise":
        noise = torch.randn(img.shape, generator=generator, dtype=img.dtype) * _NOISE[severity]
        out = img + noise
    elif kind == "blur":
        kernel, sigma = _BLUR[severity]
        out = F.gaussian_blur(img, [kernel, kernel], [sigma, sigma])
    elif kind == "brightness_contrast":
        out = F.adjust_contrast(F.adjust_brightness(img, _DIM[severity]), _DIM[severity])
    elif kind == "jpeg":
        from torchvision.io import decode_jpeg, encode_jpeg

        as_bytes = (img.clamp(0, 1) * 255).round().to(torch.uint8)
        out = decode_jpeg(encode_jpeg(as_bytes, quality=_QUALITY[severity])).to(img.dtype) / 255
    else:
        raise ValueError(f"unknown corruption {kind!r}; known: {', '.join(KINDS)}")
    return out.clamp(0, 1)


class Corrupted(torch.utils.data.Dataset):
    """A prediction dataset (`CanonicalDataset`) whose images come back corrupted; everything else (targets,
    `image_size`, `label_to_cat`) is the wrapped dataset's."""

    def __init__(self, base, kind: str, severity: int, seed: int = 0):
        if kind not in KINDS:
            raise ValueError(f"unknown corruption {kind!r}; known: {', '.join(KINDS)}")
        if severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
        self.base, self.kind, self.severity, self.seed = base, kind, severity, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        img, target = self.base[i]
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        return corrupt(img, self.kind, self.severity, generator), target

    def __getattr__(self, name):  # image_size, label_to_cat, ... of the wrapped dataset
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)
