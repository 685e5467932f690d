"""The fused kernels walk raw memory: parameters laid out alike with their gradients and
state (channels_last included, as the image models' kernels are on CUDA) are updated in one
group, exactly as the multi-tensor path does; anything else on its own."""

from __future__ import annotations

import pytest
import torch

from dissecting_adam.optim import _engine
from dissecting_adam.optim._internal import flat_alike, partition

CL = torch.channels_last


def _conv_weight(fmt=torch.contiguous_format, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(8, 3, 5, 5, generator=gen).to(memory_format=fmt)


def test_channels_last_is_flat_alike_and_a_mixed_layout_is_not():
    p = _conv_weight(CL)
    assert not p.is_contiguous()
    assert flat_alike(p, _conv_weight(CL, 1), torch.zeros_like(p), None)
    assert not flat_alike(p, _conv_weight(seed=1))  # gradient in the other layout
    gappy = torch.randn(8, 6)[:, ::2]  # a view with gaps
    assert not flat_alike(gappy, torch.zeros_like(gappy))


def test_partition_groups_channels_last_tensors_for_the_fused_kernels():
    ps = [_conv_weight(CL, 0), torch.randn(5), _conv_weight(seed=2)[:, :, ::2]]
    gs = [_conv_weight(CL, 3), torch.randn(5), torch.randn(8, 3, 3, 5)]
    loose, groups = partition(ps, gs, None, None, [0, 0, 0], fused=True)
    assert loose == [2] and list(groups.values()) == [[0, 1]]


@pytest.mark.parametrize("method", _engine.METHODS)
def test_fused_update_of_channels_last_parameters_equals_the_multi_tensor_path(method):
    paths = {}
    for fused in (False, True):
        p = [_conv_weight(CL, 0), torch.randn(8, generator=torch.Generator().manual_seed(9))]
        m = [torch.zeros_like(x) for x in p]
        v = [torch.zeros_like(x) for x in p]
        for t in range(5):
            g = [
                _conv_weight(CL, 10 + t),
                torch.randn(8, generator=torch.Generator().manual_seed(t)),
            ]
            _engine.update(method, p, g, m, v, [t, t], lr=0.01, beta=0.9,
                           foreach=None if fused else True, fused=fused)  # fmt: skip
        assert p[0].stride() == _conv_weight(CL).stride()  # the layout was kept
        paths[fused] = p
    for a, b in zip(paths[False], paths[True], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
