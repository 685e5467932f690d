"""CIFAR augmentation: DeepOBS's TF pipeline as batched tensor ops, checked op by op."""

from __future__ import annotations

import colorsys

import pytest
import torch

from dissecting_adam.problems import augment as A


def images(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, 32, 32), generator=g, dtype=torch.uint8)


def neutral(b, **changes):
    """Parameters that leave an image unchanged except for the given ones."""
    p = A.AugmentParams(
        top=torch.full((b,), A.PAD),
        left=torch.full((b,), A.PAD),
        flip=torch.zeros(b, dtype=torch.bool),
        brightness=torch.zeros(b),
        saturation=torch.ones(b),
        contrast=torch.ones(b),
    )
    return p._replace(**changes)


def test_params_lie_in_deepobs_ranges():
    p = A.draw_params(4000, torch.Generator().manual_seed(0))
    assert A.PAD == 2  # tf.image.resize_image_with_crop_or_pad(image, 36, 36)
    assert set(p.top.tolist()) == set(range(5)) and set(p.left.tolist()) == set(range(5))
    assert 0.45 < p.flip.float().mean() < 0.55
    assert p.brightness.abs().max() <= 63 / 255
    assert 0.5 <= p.saturation.min() and p.saturation.max() <= 1.5
    assert 0.2 <= p.contrast.min() and p.contrast.max() <= 1.8


def test_params_survive_packing_for_the_device_copy():
    p = A.draw_params(50, torch.Generator().manual_seed(0))
    q = A.unpack(A.pack(p))
    for a, b in zip(p, q, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_output_shape_dtype_and_standardisation():
    x = images(16)
    out = A.augment(x, A.draw_params(16, torch.Generator().manual_seed(1)))
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32
    flat = out.flatten(1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(1, correction=0), torch.ones(16), atol=1e-4, rtol=0)


def test_neutral_params_only_standardise():
    x = images()
    torch.testing.assert_close(A.augment(x, neutral(6)), A.preprocess_test(x))


def test_flip_mirrors_left_right():
    x = images()
    flip = torch.tensor([True, False, True, False, True, False])
    out = A.augment(x, neutral(6, flip=flip))
    ref = A.preprocess_test(x)
    torch.testing.assert_close(out[flip], ref[flip].flip(-1))
    torch.testing.assert_close(out[~flip], ref[~flip])


def test_crop_takes_a_window_of_the_zero_padded_image():
    x = images(2)
    top, left = torch.tensor([0, 4]), torch.tensor([3, 1])
    out = A.crop_and_flip(x.float(), top, left, torch.zeros(2, dtype=torch.bool))
    padded = torch.nn.functional.pad(x.float(), (2, 2, 2, 2))
    for i in range(2):
        t, l = int(top[i]), int(left[i])
        torch.testing.assert_close(out[i], padded[i, :, t : t + 32, l : l + 32])
    assert torch.all(out[0, :, :2, :] == 0)  # top = 0: two rows of padding


def test_brightness_adds_a_delta_on_the_0_255_scale():
    x = images(2).float()
    out = A.crop_and_flip(x, torch.full((2,), 2), torch.full((2,), 2), torch.zeros(2, dtype=bool))
    torch.testing.assert_close(out, x)  # centred crop, no flip: the image itself
    # Brightness shifts every pixel by delta, which standardisation then removes. (Pixels
    # >= 1, so that no channel turns negative, which TF's saturation step would clip.)
    x = images(2).clamp_min(1)
    p = neutral(2, brightness=torch.tensor([0.2, -0.2]))
    torch.testing.assert_close(A.augment(x, p), A.preprocess_test(x), atol=1e-5, rtol=0)


def _tf_saturation_reference(rgb, factor):
    """TF's AdjustSaturation kernel, pixel by pixel: to HSV, s * factor clipped, back."""
    h, s, v = colorsys.rgb_to_hsv(*rgb)
    return colorsys.hsv_to_rgb(h, min(max(s * factor, 0.0), 1.0), v)


@pytest.mark.parametrize("factor", [0.5, 0.9, 1.0, 1.3, 1.5])
def test_saturation_matches_the_hsv_round_trip(factor):
    g = torch.Generator().manual_seed(2)
    x = 1 + 254 * torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64)
    x[0, :, 0, 0] = 77.0  # a grey pixel
    out = A.adjust_saturation(x, torch.full((2,), factor, dtype=torch.float64))
    pixels = x.permute(0, 2, 3, 1).reshape(-1, 3).tolist()
    ref = torch.tensor([_tf_saturation_reference(p, factor) for p in pixels], dtype=x.dtype)
    torch.testing.assert_close(out.permute(0, 2, 3, 1).reshape(-1, 3), ref)


def test_contrast_scales_deviations_from_each_channel_mean():
    x = images(3).float()
    f = torch.tensor([0.2, 1.0, 1.8])
    out = A.adjust_contrast(x, f)
    mean = x.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(out.mean(dim=(2, 3), keepdim=True), mean)
    torch.testing.assert_close(out - mean, (x - mean) * f[:, None, None, None])


def test_standardisation_floors_the_std_of_constant_images():
    x = torch.full((1, 3, 32, 32), 9.0)
    assert torch.equal(A.standardize(x), torch.zeros_like(x))


def test_same_generator_state_same_augmentation():
    x = images(8)
    a = A.augment(x, A.draw_params(8, torch.Generator().manual_seed(5)))
    b = A.augment(x, A.draw_params(8, torch.Generator().manual_seed(5)))
    c = A.augment(x, A.draw_params(8, torch.Generator().manual_seed(6)))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.cuda
def test_cuda_augmentation_matches_cpu():
    x = images(8)
    p = A.draw_params(8, torch.Generator().manual_seed(5))
    torch.testing.assert_close(A.augment(x.cuda(), p).cpu(), A.augment(x, p), atol=1e-4, rtol=0)
