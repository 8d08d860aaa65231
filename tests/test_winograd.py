"""Winograd F(2x2, 3x3) for the wide 3x3 training convs (a CPU route): PyTorch's results,
taken only where meant. (Where no route applies at all, e.g. NCHW, float64, no gradients or
autocast: test_cpu_kernels.py.)"""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from helpers import paired
from resnet_backbone import cpu
from resnet_backbone.cpu import conv as cpu_conv
from resnet_backbone.cpu.conv import uses_winograd
from resnet_backbone.cpu.winograd import WinogradConv3x3, conv3x3

CL = torch.channels_last


def conv2d(x, weight, bias, stride, padding, dilation, groups):
    """The CPU conv route for this geometry, or the plain conv where no route applies."""
    pair = torch.nn.modules.utils._pair
    geometry = SimpleNamespace(stride=pair(stride), padding=pair(padding),
                               dilation=pair(dilation), groups=groups)
    out = cpu_conv.conv2d(x, weight, bias, geometry)
    return out if out is not None else F.conv2d(x, weight, bias, stride, padding, dilation,
                                                groups)


def _rel_err(got, want):
    return ((got.double() - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize('n,c_in,c_out,h,w,bias,needs_x', [
    (1, 16, 16, 8, 12, True, True),
    (2, 8, 24, 7, 10, True, True),    # odd height: the last tile row is half outside
    (1, 12, 5, 9, 9, False, True),    # odd both ways, no bias, narrowing
    (2, 6, 6, 6, 11, True, False),    # no input gradient (a stage's first conv input)
    (1, 4, 4, 1, 1, True, True),      # one pixel: one tile, mostly padding
    (1, 32, 32, 2, 30, False, True),  # one tile row
])
def test_matches_conv2d_and_its_gradients_float64(n, c_in, c_out, h, w, bias, needs_x):
    x = torch.randn(n, c_in, h, w).contiguous(memory_format=CL).requires_grad_(needs_x)
    weight = torch.randn(c_out, c_in, 3, 3).contiguous(memory_format=CL).requires_grad_()
    b = torch.randn(c_out, requires_grad=True) if bias else None
    out = WinogradConv3x3.apply(x, weight, b)
    assert out.shape == (n, c_out, h, w) and out.is_contiguous(memory_format=CL)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref_in = [t.detach().double().requires_grad_(t.requires_grad) if t is not None else None
              for t in (x, weight, b)]
    ref = F.conv2d(*ref_in, 1, 1)
    ref.backward(grad.double())
    assert _rel_err(out, ref) < 1e-5
    for got, want in zip((x, weight, b), ref_in):
        if got is not None and got.requires_grad:
            assert got.grad.shape == got.shape
            assert _rel_err(got.grad, want.grad) < 1e-5
    assert (x.grad is None) != needs_x


def test_error_is_that_of_direct_convolution():
    """F(2x2, 3x3) uses only +-1 and 1/2: float32 error stays near oneDNN's own."""
    x = torch.randn(1, 256, 30, 38).contiguous(memory_format=CL)
    weight = (torch.randn(256, 256, 3, 3) * (2 / (9 * 256)) ** 0.5).contiguous(memory_format=CL)
    ref = F.conv2d(x.double(), weight.double(), None, 1, 1)
    direct = _rel_err(F.conv2d(x, weight, None, 1, 1), ref)
    ours = _rel_err(conv3x3(x, weight), ref)
    assert ours < 4 * direct + 1e-7, (ours, direct)


def _wide_conv_args(channels=256, size=(40, 40), batch=1):
    x = torch.randn(batch, channels, *size).contiguous(memory_format=CL).requires_grad_()
    weight = (torch.randn(channels, channels, 3, 3) * 0.02).contiguous(memory_format=CL)
    return x, weight.requires_grad_(), torch.randn(channels, requires_grad=True)


def test_conv2d_takes_it_for_a_wide_3x3_with_gradients():
    x, weight, bias = _wide_conv_args()
    assert uses_winograd(x, weight, (1, 1), (1, 1), (1, 1), 1)
    out = conv2d(x, weight, bias, 1, 1, 1, 1)
    assert type(out.grad_fn).__name__ == 'WinogradConv3x3Backward'
    ref = F.conv2d(x.double(), weight.double(), bias.double(), 1, 1)
    assert _rel_err(out, ref) < 1e-5


@pytest.mark.parametrize('case', ['stride2', 'padding0', 'dilation2', 'groups', 'kernel1',
                                  'narrow', 'small_map', 'route_off'])
def test_conv2d_leaves_other_convs_to_the_other_paths(case):
    x, weight, bias = _wide_conv_args()
    stride, padding, dilation, groups = 1, 1, 1, 1
    if case == 'stride2':
        stride = 2
    elif case == 'padding0':
        padding = 0
    elif case == 'dilation2':
        padding = dilation = 2
    elif case == 'groups':
        weight, groups = weight[:, :128].detach().requires_grad_(), 2
    elif case == 'kernel1':
        weight, padding = weight[:, :, :1, :1].detach().contiguous(memory_format=CL), 0
    elif case == 'narrow':
        x, weight, bias = _wide_conv_args(channels=128, size=(100, 152))
    elif case == 'small_map':  # 19 x 21 tiles, just under the threshold
        x, weight, bias = _wide_conv_args(size=(38, 42))
    ctx = cpu.paths_disabled('winograd') if case == 'route_off' else torch.enable_grad()
    pairs = [(v, v) for v in (stride, padding, dilation)]
    with ctx:
        assert not uses_winograd(x, weight, *pairs, groups)
        out = conv2d(x, weight, bias, stride, padding, dilation, groups)
    assert out.grad_fn is None or type(out.grad_fn).__name__ != 'WinogradConv3x3Backward'


@pytest.mark.parametrize('layer,channels,size,taken', [
    ('layer1', 64, (200, 304), False),
    ('layer2', 128, (100, 152), False),
    ('layer3', 256, (50, 76), True),
    ('layer3 at 512x512', 256, (32, 32), False),
    ('layer4', 512, (25, 38), False),
])
def test_thresholds_pick_layer3_of_r50_at_800x1216(layer, channels, size, taken):
    """The step timings behind the thresholds (docs/benchmarks.md) are for these shapes."""
    x = torch.empty(1, channels, *size).contiguous(memory_format=CL)
    weight = torch.empty(channels, channels, 3, 3, requires_grad=True)
    assert uses_winograd(x, weight, (1, 1), (1, 1), (1, 1), 1) == taken


def _count_nodes(outs, name):
    nodes, seen, count = [o.grad_fn for o in outs], set(), 0
    while nodes:
        fn = nodes.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        count += type(fn).__name__ == name
        nodes += [f for f, _ in fn.next_functions]
    return count


@pytest.mark.parametrize('depth,nodes', [(50, 5 + 2), (18, 3 + 3)])
def test_train_step_uses_it_with_mmdet_gradients(monkeypatch, depth, nodes):
    """Every stride-1 3x3 conv of layer3/4 (R-50: conv2 of blocks 3.1-3.5 and 4.1-4.2;
    R-18: all but the strided 3.0 and 4.0 conv1) by Winograd, with mmdet's gradients.
    The tile threshold is lowered so that small maps take the path."""
    monkeypatch.setattr(cpu_conv, 'WINOGRAD_MIN_TILES', 1)
    ref, ours = paired(dict(type='ResNet', depth=depth, frozen_stages=1, norm_eval=True))
    x = torch.randn(2, 3, 96, 128)
    for name, m in (('mmdet', ref), ('ours', ours)):
        m.train()
        outs = m(x)
        if name == 'ours':
            assert _count_nodes(outs, 'WinogradConv3x3Backward') == nodes
        sum((o * o).mean() for o in outs).backward()
    grads = dict(ours.named_parameters())
    for name, p in ref.named_parameters():
        if p.grad is not None:
            got = grads[name].grad
            assert (got - p.grad).norm() <= 1e-4 * p.grad.norm() + 1e-12, name
