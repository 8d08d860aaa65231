"""CPU training convs (GEMM weight gradient, bias gradient apart): PyTorch's gradients,
taken only where meant."""
import pytest
import torch
import torch.nn.functional as F

from helpers import paired
from resnet_backbone.layout import fill_with_zero_border
from resnet_backbone.train_conv import (conv2d, sums_bias_grad_apart, uses_fused_epilogue,
                                        uses_gemm_weight_grad, weight_grad)

CL = torch.channels_last


@pytest.mark.parametrize('n,c_in,c_out,h,w,k,stride,pad', [
    (1, 8, 4, 16, 16, 3, 2, 1),     # ResNet's stride-2 3x3
    (2, 5, 3, 17, 13, 3, 2, 1),     # odd sizes: the last phase row/column is short
    (1, 4, 6, 15, 11, 3, 3, 1),     # stride 3: nine phases
    (2, 3, 5, 12, 18, 5, 2, 2),     # 5x5, taps two phase rows apart
    (1, 6, 2, 9, 10, 3, 2, 0),      # no padding
    (1, 4, 4, 8, 8, 1, 2, 0),       # 1x1 strided (caffe-style downsample)
    (1, 3, 4, 21, 14, 7, 2, 3),     # the stem's 7x7
])
def test_weight_grad_matches_autograd_float64(n, c_in, c_out, h, w, k, stride, pad):
    x = torch.randn(n, c_in, h, w, dtype=torch.float64).contiguous(memory_format=CL)
    weight = torch.randn(c_out, c_in, k, k, dtype=torch.float64, requires_grad=True)
    out = F.conv2d(x, weight, None, stride, pad)
    grad = torch.randn_like(out)
    out.backward(grad)
    ours = weight_grad(grad, x, weight.shape, (stride, stride), (pad, pad))
    assert ours.shape == weight.shape
    torch.testing.assert_close(ours, weight.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('top,left,rows,cols', [(0, 0, 5, 6), (1, 1, 4, 5), (0, 1, 5, 4),
                                                (1, 0, 3, 6), (2, 2, 3, 3)])
def test_fill_with_zero_border_leaves_nothing_of_the_old_buffer(top, left, rows, cols):
    """The weight-gradient buffers are new_empty: every element but ``src`` must be 0."""
    dst = torch.full((2, 5, 6, 3), float('nan'))
    src = torch.randn(2, rows, cols, 3)
    fill_with_zero_border(dst, src, top, left)
    want = torch.zeros(2, 5, 6, 3)
    want[:, top:top + rows, left:left + cols] = src
    assert torch.equal(dst, want)


def _stage_conv_args(channels=128, size=(24, 20)):
    x = torch.randn(2, channels, *size).contiguous(memory_format=CL).requires_grad_()
    weight = (torch.randn(channels, channels, 3, 3) * 0.05).contiguous(memory_format=CL)
    return x, weight.requires_grad_(), torch.randn(channels, requires_grad=True)


def _check_grads_float64(out, inputs, call):
    """Gradients of ``conv2d`` against autograd through ``F.conv2d`` in float64."""
    grad = torch.randn_like(out)
    out.backward(grad)
    ref_inputs = [t.detach().double().requires_grad_(t.requires_grad) if t is not None else None
                  for t in inputs]
    ref = call(*ref_inputs)
    ref.backward(grad.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(inputs, ref_inputs):
        if got is not None and got.requires_grad:
            torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-4, atol=1e-4)


def test_conv2d_takes_gemm_path_with_pytorch_gradients():
    x, weight, bias = _stage_conv_args()
    assert uses_gemm_weight_grad(x, weight, (2, 2), (1, 1), 1)
    out = conv2d(x, weight, bias, 2, 1, 1, 1)
    assert type(out.grad_fn).__name__ == '_CPUConv2dBackward' and out.grad_fn.gemm
    _check_grads_float64(out, (x, weight, bias), lambda *t: F.conv2d(*t, 2, 1))


@pytest.mark.parametrize('stride,k,needs_x', [(1, 1, True), (1, 3, True), (2, 1, False),
                                             (1, 3, False)])
def test_conv2d_sums_bias_grad_apart_with_pytorch_gradients(stride, k, needs_x):
    x, weight, bias = _stage_conv_args(channels=32)
    x = x.detach().requires_grad_(needs_x)
    weight = weight[:, :, :k, :k].detach().contiguous(memory_format=CL).requires_grad_()
    pad = k // 2
    assert sums_bias_grad_apart(x, weight, bias)
    assert not uses_gemm_weight_grad(x, weight, (stride, stride), (1, 1), 1)
    out = conv2d(x, weight, bias, stride, pad, 1, 1)
    assert type(out.grad_fn).__name__ == '_CPUConv2dBackward' and not out.grad_fn.gemm
    _check_grads_float64(out, (x, weight, bias), lambda *t: F.conv2d(*t, stride, pad))


@pytest.mark.parametrize('stride,k,relu,with_add', [
    (1, 1, True, True),    # a block's last conv: + shortcut, ReLU
    (1, 1, True, False),   # conv1
    (2, 3, True, False),   # a stage's strided conv2 (GEMM weight gradient too)
    (1, 1, False, True),   # a sum without ReLU
])
def test_conv2d_sum_and_relu_inside_the_conv_with_pytorch_gradients(stride, k, relu, with_add):
    """With gradients the sum and the ReLU run as oneDNN post-ops; values and the
    gradients of x, weight, bias and the added map equal the separate ops'."""
    x, weight, bias = _stage_conv_args()
    weight = weight[:, :, :k, :k].detach().contiguous(memory_format=CL).requires_grad_()
    pad = k // 2
    out_size = (x.shape[2] + 2 * pad - k) // stride + 1, (x.shape[3] + 2 * pad - k) // stride + 1
    add = torch.randn(2, 128, *out_size).contiguous(memory_format=CL).requires_grad_() \
        if with_add else None
    assert uses_fused_epilogue(x, weight, (pad, pad), relu, add)
    out = conv2d(x, weight, bias, stride, pad, 1, 1, relu=relu, add=add)
    assert type(out.grad_fn).__name__ == '_CPUConv2dBackward' and out.grad_fn.relu == relu

    def separate(x, weight, bias, add=None):
        y = F.conv2d(x, weight, bias, stride, pad)
        y = y + add if add is not None else y
        return F.relu(y) if relu else y
    with torch.no_grad():
        assert (out - separate(x, weight, bias, add)).abs().max() < 1e-5
    _check_grads_float64(out, (x, weight, bias, add), separate)


@pytest.mark.parametrize('case', ['nchw_add', 'no_grad', 'float64', 'nothing_to_fuse'])
def test_conv2d_sum_and_relu_stay_separate_elsewhere(case):
    x, weight, bias = _stage_conv_args(channels=32)
    add = torch.randn(2, 32, 24, 20).contiguous(memory_format=CL)
    relu = True
    if case == 'nchw_add':
        add = add.contiguous()
    elif case == 'float64':
        x, weight, bias, add = (t.detach().double().requires_grad_() for t in
                                (x, weight, bias, add))
    elif case == 'nothing_to_fuse':
        add, relu = None, False
    ctx = torch.no_grad() if case == 'no_grad' else torch.enable_grad()
    with ctx:
        assert not uses_fused_epilogue(x, weight, (1, 1), relu, add)
        out = conv2d(x, weight, bias, 1, 1, 1, 1, relu=relu, add=add)
        ref = F.conv2d(x, weight, bias, 1, 1, 1, 1)
        ref = F.relu(ref + add) if relu else ref
    assert not getattr(out.grad_fn, 'relu', False)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize('case', ['nchw', 'stride1', 'few_channels', 'groups', 'float64',
                                  'no_grad', 'autocast', 'frozen_weight'])
def test_conv2d_keeps_gemm_weight_grad_to_strided_convs(case):
    x, weight, bias = _stage_conv_args()
    stride, groups = 2, 1
    if case == 'nchw':
        x = x.detach().contiguous().requires_grad_()
    elif case == 'stride1':
        stride = 1
    elif case == 'few_channels':
        x, weight, bias = _stage_conv_args(channels=64)
    elif case == 'groups':
        weight, groups = weight[:, :64].detach().requires_grad_(), 2
    elif case == 'float64':
        x, weight, bias = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    elif case == 'frozen_weight':
        weight = weight.detach()
    ctx = torch.autocast('cpu', dtype=torch.bfloat16) if case == 'autocast' else \
        torch.no_grad() if case == 'no_grad' else torch.enable_grad()
    with ctx:
        assert not uses_gemm_weight_grad(x, weight, (stride, stride), (1, 1), groups)
        out = conv2d(x, weight, bias, stride, 1, 1, groups)
        ref = F.conv2d(x, weight, bias, stride, 1, 1, groups)
    assert not getattr(out.grad_fn, 'gemm', False)
    apart = case in ('stride1', 'few_channels', 'frozen_weight', 'groups')
    assert (type(out.grad_fn).__name__ == '_CPUConv2dBackward') == apart
    assert torch.equal(out, ref)
    if out.requires_grad and case != 'autocast':  # bfloat16: no float64 check
        _check_grads_float64(out, (x, weight, bias),
                             lambda *t: F.conv2d(*t, stride, 1, 1, groups))


@pytest.mark.parametrize('case', ['nchw', 'no_bias', 'frozen_bias', 'float64', 'no_grad',
                                  'autocast'])
def test_conv2d_leaves_bias_grad_to_pytorch_elsewhere(case):
    x, weight, bias = _stage_conv_args(channels=32)
    if case == 'nchw':
        x = x.detach().contiguous().requires_grad_()
    elif case == 'no_bias':
        bias = None
    elif case == 'frozen_bias':
        bias = bias.detach()
    elif case == 'float64':
        x, weight, bias = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    ctx = torch.autocast('cpu', dtype=torch.bfloat16) if case == 'autocast' else \
        torch.no_grad() if case == 'no_grad' else torch.enable_grad()
    with ctx:
        assert not sums_bias_grad_apart(x, weight, bias)
        out = conv2d(x, weight, bias, 1, 1, 1, 1)
        ref = F.conv2d(x, weight, bias, 1, 1, 1, 1)
    assert out.grad_fn is None or type(out.grad_fn).__name__ == 'ConvolutionBackward0'
    assert torch.equal(out, ref)


def test_resnet50_train_step_uses_it_with_mmdet_gradients():
    """Full-width R-50 in float32 (where the path applies): mmdet's parameter gradients."""
    ref, ours = paired(dict(type='ResNet', depth=50, frozen_stages=1, norm_eval=True))
    x = torch.randn(2, 3, 96, 128)
    taken = []
    for name, m in (('mmdet', ref), ('ours', ours)):
        m.train()
        outs = m(x)
        if name == 'ours':
            node, seen = [o.grad_fn for o in outs if o.grad_fn is not None], set()
            while node:
                fn = node.pop()
                if fn is None or fn in seen:
                    continue
                seen.add(fn)
                taken += [fn] if getattr(fn, 'gemm', False) else []
                node += [f for f, _ in fn.next_functions]
        sum((o * o).mean() for o in outs).backward()
    assert len(taken) == 3  # layer2.0, layer3.0 and layer4.0 conv2
    # Where float32 rounding moves a pre-activation across zero, that position's
    # gradient changes by its whole value (a ReLU mask flip; here one of layer4.0's
    # 2x2048x3x4 outputs, at 1.4e-7 in float64): the parameters behind it then differ
    # by up to ~5e-4 norm-wise, all parameters together by ~6e-5. A wrong term would
    # be O(1).
    grads = dict(ours.named_parameters())
    num = den = 0.0
    for name, p in ref.named_parameters():
        if p.grad is not None:
            got = grads[name].grad
            assert (got - p.grad).norm() <= 2e-3 * p.grad.norm() + 1e-12, name
            num += (got - p.grad).square().sum().item()
            den += p.grad.square().sum().item()
    assert (num / den) ** 0.5 <= 1e-4


def test_bench_conv_wgrad_tool_tiny():
    """tools/bench_conv_wgrad.py runs and reports every conv with the path taken."""
    import os.path as osp
    import sys
    sys.path.insert(0, osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools'))
    import bench_conv_wgrad
    rows = bench_conv_wgrad.main(['--size', '64x96', '--repeats', '1'])
    assert [r[0] for r in rows] == [c[0] for c in bench_conv_wgrad.CONVS]
    assert all(r[1] > 0 and r[2] > 0 for r in rows)
    assert [r[3] for r in rows] == ['GEMM'] * 3 + ['oneDNN'] + ['GEMM'] * 2
