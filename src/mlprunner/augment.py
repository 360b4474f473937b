"""Data augmentation by small random affine transforms of whole training batches, on the device.

A flat batch (B, C*H*W) is viewed as (B, C, H, W); one random affine matrix per image
(shift, optional rotation and scale) is drawn with torch's global RNG in a single call, and
`affine_grid`/`grid_sample` resample the batch at once: no per-sample Python. Because the
randomness comes from the global RNG (saved in every checkpoint), a resumed run draws the
same transforms as an uninterrupted one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class RandomAffine:
    """Callable augment hook for `Trainer(augment=...)`: flat normalised batch in, same shape out."""

    def __init__(
        self, image_shape, max_shift: float = 2.0, max_rotate: float = 0.0, max_scale: float = 0.0, mean=None, std=None
    ):
        self.c, self.h, self.w = (int(v) for v in image_shape)
        self.max_shift = float(max_shift)
        self.max_rotate = math.radians(float(max_rotate))
        self.max_scale = float(max_scale)
        # Pixels moved in from outside the image take the value of a black (0) pixel after
        # normalisation, so a shifted MNIST digit keeps a clean background.
        if mean is not None and std is not None:
            fill = [-float(m) / float(s) for m, s in zip(mean, std)]
        else:
            fill = [0.0] * self.c
        self.fill = torch.tensor(fill, dtype=torch.float32).view(1, self.c, 1, 1)
        self._fill_cache = {}

    def _fill(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.device, x.dtype)
        if key not in self._fill_cache:
            self._fill_cache[key] = self.fill.to(device=x.device, dtype=x.dtype)
        return self._fill_cache[key]

    def theta(self, b: int, device, dtype=torch.float32) -> torch.Tensor:
        """(B, 2, 3) affine matrices in affine_grid's normalised coordinates."""
        u = torch.rand(b, 4, device=device, dtype=dtype).mul_(2).sub_(1)  # uniform in [-1, 1)
        angle = u[:, 0] * self.max_rotate
        scale = 1 + u[:, 1] * self.max_scale
        # A shift of s pixels is 2*s/W in normalised coordinates (align_corners=False).
        tx = u[:, 2] * (2 * self.max_shift / self.w)
        ty = u[:, 3] * (2 * self.max_shift / self.h)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        return torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        img = x.view(b, self.c, self.h, self.w)
        fill = self._fill(img)
        theta = self.theta(b, x.device, torch.float32).to(x.dtype)
        grid = F.affine_grid(theta, [b, self.c, self.h, self.w], align_corners=False)
        out = F.grid_sample(img - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.add_(fill).reshape(b, -1)

    def __repr__(self) -> str:
        return (
            f"RandomAffine(shift<={self.max_shift:g}px, rotate<={math.degrees(self.max_rotate):g}deg, "
            f"scale<={self.max_scale:g})"
        )


def build_augment(dataset_cfg, data) -> RandomAffine | None:
    """The augment hook described by `dataset.augment`, or None when disabled/absent.

    Its values, and that the dataset is made of images, were checked by config.validate."""
    aug = dataset_cfg.get("augment") if hasattr(dataset_cfg, "get") else None
    if aug is None or not aug.get("enabled", False):
        return None
    return RandomAffine(
        data.image_shape,
        aug.get("max_shift", 0.0),
        aug.get("max_rotate", 0.0),
        aug.get("max_scale", 0.0),
        data.mean,
        data.std,
    )
