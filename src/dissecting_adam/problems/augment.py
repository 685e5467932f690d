"""DeepOBS's CIFAR augmentation (TensorFlow version) as batched tensor operations.

Per training image, in DeepOBS's order, on 0-255 float pixels:
``resize_image_with_crop_or_pad`` to 36x36 (2 zero pixels per side), random 32x32 crop,
random left-right flip, ``random_brightness(63/255)`` (added to 0-255 values, hence nearly a
no-op), ``random_saturation(0.5, 1.5)``, ``random_contrast(0.2, 1.8)``, then
``per_image_standardization``. Test images get the standardisation only.

The random parameters (a few numbers per image) are drawn on the CPU from a seeded
``torch.Generator`` and then moved to the images' device, so a seed gives the same
augmentation on every device; the pixel work is a handful of batched ops on the device.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

PAD = 2  # 32 -> 36, as tf.image.resize_image_with_crop_or_pad(image, 36, 36) pads
BRIGHTNESS_DELTA = 63.0 / 255.0
SATURATION = (0.5, 1.5)
CONTRAST = (0.2, 1.8)


class AugmentParams(NamedTuple):
    """Random draws for a batch of B images (all tensors of length B)."""

    top: torch.Tensor  # int64 in [0, 2 PAD]
    left: torch.Tensor  # int64 in [0, 2 PAD]
    flip: torch.Tensor  # bool
    brightness: torch.Tensor  # delta, added to 0-255 pixels
    saturation: torch.Tensor  # factor
    contrast: torch.Tensor  # factor


def draw_params(batch: int, generator: torch.Generator) -> AugmentParams:
    """Draw one batch of augmentation parameters on the CPU."""

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(batch, generator=generator)

    return AugmentParams(
        top=torch.randint(0, 2 * PAD + 1, (batch,), generator=generator),
        left=torch.randint(0, 2 * PAD + 1, (batch,), generator=generator),
        flip=torch.rand(batch, generator=generator) < 0.5,
        brightness=uniform(-BRIGHTNESS_DELTA, BRIGHTNESS_DELTA),
        saturation=uniform(*SATURATION),
        contrast=uniform(*CONTRAST),
    )


def crop_and_flip(x: torch.Tensor, top, left, flip) -> torch.Tensor:
    """Zero-pad by PAD, take a 32x32 window at (top, left), mirror it where ``flip``."""
    B, C, H, W = x.shape
    padded = F.pad(x, (PAD, PAD, PAD, PAD))  # (B, C, H + 2 PAD, W + 2 PAD)
    ar_h = torch.arange(H, device=x.device)
    ar_w = torch.arange(W, device=x.device)
    rows = top[:, None] + ar_h  # (B, H)
    cols = left[:, None] + torch.where(flip[:, None], W - 1 - ar_w, ar_w)  # (B, W)
    b = torch.arange(B, device=x.device)[:, None, None, None]
    c = torch.arange(C, device=x.device)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """TF's adjust_saturation without the HSV round trip.

    TF converts to HSV, sets s' = clip(s * factor, 0, 1) and converts back with the same hue
    and value v = max(r, g, b). Every channel then moves along the line to v:
    c' = v - (v - c) s' / s, which is what is computed here (s = 0: grey, unchanged).
    """
    v = x.amax(dim=1, keepdim=True)
    lo = x.amin(dim=1, keepdim=True)
    s = torch.where(v > 0, (v - lo) / v.clamp_min(1e-12), torch.zeros_like(v))
    s_new = (s * factor[:, None, None, None]).clamp(0.0, 1.0)
    ratio = torch.where(s > 0, s_new / s.clamp_min(1e-12), torch.ones_like(s))
    return v - (v - x) * ratio


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """TF's adjust_contrast: scale each channel's deviation from its spatial mean."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * factor[:, None, None, None] + mean


def standardize(x: torch.Tensor) -> torch.Tensor:
    """TF's per_image_standardization: zero mean, unit variance per image.

    The standard deviation is floored at 1/sqrt(number of values) so constant images stay
    finite.
    """
    n = x[0].numel()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, correction=0)
    return (x - mean) / std.clamp_min(n**-0.5)


def pack(params: AugmentParams) -> torch.Tensor:
    """All parameters as one (6, B) float32 tensor (small integers are exact in float32)."""
    return torch.stack([t.to(torch.float32) for t in params])


def unpack(packed: torch.Tensor) -> AugmentParams:
    top, left, flip, brightness, saturation, contrast = packed.unbind(0)
    return AugmentParams(top.long(), left.long(), flip.bool(), brightness, saturation, contrast)


def to_device(params: AugmentParams, device: torch.device) -> AugmentParams:
    """The parameters on ``device`` in one host-to-device copy instead of six."""
    if device.type == "cpu":
        return params
    return unpack(pack(params).to(device, non_blocking=True))


def augment(images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """uint8 (B, 3, 32, 32) training images to standardised float32, DeepOBS's pipeline."""
    p = to_device(params, images.device)
    x = crop_and_flip(images.float(), p.top, p.left, p.flip)
    x = x + p.brightness[:, None, None, None]
    x = adjust_saturation(x, p.saturation)
    x = adjust_contrast(x, p.contrast)
    return standardize(x)


def preprocess_test(images: torch.Tensor) -> torch.Tensor:
    """uint8 test (or train-eval) images to standardised float32, no augmentation."""
    return standardize(images.float())
