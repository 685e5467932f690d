"""The four networks: parameter counts, TF padding, initialisation and the L2 term."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dissecting_adam import problems
from dissecting_adam.problems.models.layers import (
    MaxPoolSame,
    decayed_weights,
    same_padding,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- models ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, count",
    [
        ("fmnist_2c2d", 3_274_634),
        ("cifar10_3c3d", 895_210),
        ("cifar100_wrn404", 8_972_340),  # WRN-40-4 with the dense layer's bias
        ("tolstoi_char_rnn", 284_499),  # as TF: one bias per LSTM gate
    ],
)
def test_parameter_counts(name, count):
    assert n_params(problems.load(name).build_model(0)) == count


def test_fmnist_pool_size_is_configurable_and_keeps_the_count():
    model = problems.load("fmnist_2c2d", pool_size=2).build_model(0)
    assert n_params(model) == 3_274_634
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def _weights(model, kind):
    return [m for m in model.modules() if isinstance(m, kind)]


def test_init_2c2d_truncated_normal():
    model = problems.load("fmnist_2c2d").build_model(0)
    w = torch.cat([m.weight.flatten() for m in _weights(model, (nn.Conv2d, nn.Linear))])
    assert w.abs().max() <= 0.1  # cut at 2 std
    # std of a normal(0, 0.05) truncated at +-2 std: 0.05 * 0.8796
    assert w.std().item() == pytest.approx(0.05 * 0.87962566, rel=0.01)
    for m in _weights(model, (nn.Conv2d, nn.Linear)):
        assert torch.all(m.bias == 0.05)


def test_init_3c3d_glorot():
    model = problems.load("cifar10_3c3d").build_model(0)
    for m in _weights(model, nn.Conv2d)[1:]:  # the first conv has too few weights
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(m.weight)
        std = math.sqrt(2 / (fan_in + fan_out))
        assert m.weight.std().item() == pytest.approx(std, rel=0.05)
        assert m.weight.abs().max() <= 2 * std / 0.87962566 + 1e-6
    for m in _weights(model, nn.Linear):
        fan_in, fan_out = m.in_features, m.out_features
        assert m.weight.abs().max() <= math.sqrt(6 / (fan_in + fan_out))
        assert m.weight.var().item() == pytest.approx(2 / (fan_in + fan_out), rel=0.05)
    assert all(torch.all(m.bias == 0) for m in _weights(model, (nn.Conv2d, nn.Linear)))


def test_init_wrn_glorot_uniform_and_batchnorm():
    model = problems.load("cifar100_wrn404").build_model(0)
    for m in _weights(model, (nn.Conv2d, nn.Linear)):
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(m.weight)
        assert m.weight.abs().max() <= math.sqrt(6 / (fan_in + fan_out))
    assert all(m.bias is None for m in _weights(model, nn.Conv2d))
    bns = _weights(model, nn.BatchNorm2d)
    assert len(bns) == 37  # 2 per unit (18 units) + the final one
    for bn in bns:
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
        assert (bn.momentum, bn.eps) == (0.1, 1e-5)  # TF decay 0.9
    assert torch.all(model.fc.bias == 0)


def test_init_char_rnn():
    model = problems.load("tolstoi_char_rnn").build_model(0)
    for lstm in (model.lstm1, model.lstm2):
        bound = math.sqrt(6 / (256 + 512))  # TF: one (256, 512) kernel for [x, h]
        assert lstm.weight_ih_l0.abs().max() <= bound
        assert lstm.weight_hh_l0.abs().max() <= bound
        b = lstm.bias_ih_l0
        assert torch.all(b[128:256] == 1.0) and torch.all(b[:128] == 0) and torch.all(b[256:] == 0)
        assert not lstm.bias_hh_l0.requires_grad and torch.all(lstm.bias_hh_l0 == 0)
    assert model.dense.bias.abs().max() <= math.sqrt(6 / 166)
    assert model.dense.bias.abs().max() > 0.1  # glorot-uniform, not zero, as TF's default


# --- L2 term -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, wd, decayed_elements",
    [
        ("cifar10_3c3d", 2e-3, 895_210 - (64 + 96 + 128 + 512 + 256 + 10)),
        ("cifar100_wrn404", 5e-4, 8_972_340 - 2 * 5_392 - 100),  # minus BatchNorm, fc bias
    ],
)
def test_l2_covers_exactly_the_conv_and_dense_kernels(name, wd, decayed_elements):
    p = problems.load(name)
    model = p.build_model(0)
    decayed = {id(w) for w in decayed_weights(model)}
    assert sum(w.numel() for w in decayed_weights(model)) == decayed_elements
    term = p.l2_term(model)
    expected = (
        0.5 * wd * sum(float(w.detach().double().square().sum()) for w in decayed_weights(model))
    )
    assert term.item() == pytest.approx(expected, rel=1e-5)
    term.backward()
    for prm_name, prm in model.named_parameters():
        if id(prm) in decayed:
            assert prm_name.endswith("weight")
            torch.testing.assert_close(prm.grad, wd * prm.detach())
        else:
            assert prm.grad is None, prm_name  # biases and BatchNorm untouched


@pytest.mark.parametrize("name", ["fmnist_2c2d", "tolstoi_char_rnn"])
def test_no_l2_without_weight_decay(name):
    p = problems.load(name)
    assert float(p.l2_term(p.build_model(0))) == 0.0


# --- TF "SAME" padding -------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, kernel, stride, pads",
    [
        (28, 3, 2, (0, 1)),
        (28, 2, 2, (0, 0)),
        (14, 3, 2, (0, 1)),
        (6, 3, 2, (0, 1)),
        (32, 3, 2, (0, 1)),
        (32, 1, 2, (0, 0)),
        (32, 3, 1, (1, 1)),
        (28, 5, 1, (2, 2)),
    ],
)
def test_same_padding_is_tfs(size, kernel, stride, pads):
    # TF: out = ceil(size / stride), total = max((out - 1) stride + kernel - size, 0),
    # the odd pixel at the end.
    assert same_padding(size, kernel, stride) == pads


def test_same_max_pool_sees_the_last_row_and_column():
    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 5, 5] = 1.0
    out = MaxPoolSame(3, 2)(x)  # windows start at 0, 2, 4; the last covers 4, 5 and padding
    assert out.shape == (1, 1, 3, 3) and out[0, 0, 2, 2] == 1.0 and out.sum() == 1.0
    y = torch.full((1, 1, 6, 6), -5.0)
    assert torch.all(MaxPoolSame(3, 2)(y) == -5.0)  # padding is -inf, not 0


def test_strided_wrn_convolution_pads_bottom_right_like_tf():
    model = problems.load("cifar100_wrn404").build_model(0)
    conv = model.body[7].conv1  # first unit of group 2: 3x3, stride 2
    x = torch.randn(1, conv.in_channels, 32, 32)
    expected = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (0, 1, 0, 1)), conv.weight, stride=2
    )
    torch.testing.assert_close(conv(x), expected)
    assert model.body[7].shortcut.stride == (2, 2)


def test_3c3d_feature_map_sizes():
    model = problems.load("cifar10_3c3d").build_model(0)
    sizes, x = [], torch.zeros(1, 3, 32, 32)
    for layer in model.features:
        x = layer(x)
        if x.dim() == 4:
            sizes.append(x.shape[-1])
    assert sizes == [28, 28, 14, 12, 12, 6, 6, 6, 3] and x.shape == (1, 3 * 3 * 128)
