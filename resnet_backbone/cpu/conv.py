"""CPU convolutions: oneDNN post-ops, a GEMM weight gradient and Winograd.

Routes (each named in ``resnet_backbone.cpu.PATHS``; their A/B timings are in
docs/benchmarks.md):

* ``train_post_ops``: with gradients, the residual sum and the ReLU run inside
  oneDNN's convolution as post-ops (the output is written once); the backward
  masks the gradient with the saved output, as ReLU's own backward does.
* ``gemm_weight_grad``: the weight gradient of the strided 3x3 convs that open
  the stages, one GEMM per kernel tap (oneDNN's is slower there).
* ``winograd``: wide 3x3 stride-1 convs on large maps by Winograd's
  F(2x2, 3x3), forward and backward (``winograd.py``).
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..functional import add_relu, is_channels_last
from . import path_on
from .layout import fill_with_zero_border
from .winograd import WinogradConv3x3, tile_grid

MIN_CHANNELS = 128  # GEMM weight gradient: below it oneDNN's was as fast
WINOGRAD_MIN_CHANNELS = 256  # at 128 channels the transforms cost more than they save
WINOGRAD_MIN_TILES = 400  # 2x2 output tiles over the batch


def applies(x, weight):
    """The setting of every route: float32 channels_last CPU maps, eager, outside autocast."""
    return (x.device.type == 'cpu' and x.dtype == weight.dtype == torch.float32
            and is_channels_last(x) and not torch.is_autocast_enabled('cpu')
            and not torch.compiler.is_compiling() and torch.backends.mkldnn.is_available())


def _needs_grad(*tensors):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _addable(add):
    return add is None or (add.dtype == torch.float32 and is_channels_last(add))


def conv_norm(x, conv, norm, params, relu, add, add_is_dead=False):
    """``relu(norm(conv(x)) + add)`` by a CPU route, or None where none applies.

    ``params``: the conv's weight and bias with the norm folded in, or None
    where the norm cannot be folded (then it runs on the conv's output).
    ``add_is_dead``: nothing reads ``add`` afterwards; without gradients the
    result is then written into it (route ``reuse``) instead of a fresh map.
    """
    if type(conv) is not nn.Conv2d or isinstance(conv.padding, str) \
            or not applies(x, conv.weight):
        return None
    if params is None:
        out = conv2d(x, conv.weight, conv.bias, conv)
        return None if out is None else add_relu(norm(out), relu, add)
    if add_is_dead and not _needs_grad(x, *params, add) and _addable(add) \
            and params[0].is_contiguous(memory_format=torch.channels_last) \
            and add.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
        return convolution_with_post_ops(x, *params, conv.stride, conv.padding, conv.dilation,
                                         conv.groups, relu, add, add_in_place=True)
    return conv2d(x, *params, conv, relu, add)


def conv2d(x, weight, bias, conv, relu=False, add=None):
    """``relu(F.conv2d(x, weight, bias, <conv's geometry>) + add)`` with gradients, by a
    CPU route; None where none applies (the caller then runs the plain ops)."""
    if not _needs_grad(x, weight, bias, add):
        return None
    geometry = (conv.stride, conv.padding, conv.dilation, conv.groups)
    if uses_winograd(x, weight, *geometry):
        return add_relu(WinogradConv3x3.apply(x, weight, bias), relu, add)
    gemm = uses_gemm_weight_grad(x, weight, *geometry)
    post_ops = (relu or add is not None) and path_on('train_post_ops') and _addable(add)
    if not (gemm or post_ops):
        return None
    out = _CPUConv2d.apply(x, weight, bias, add if post_ops else None, post_ops and relu,
                           *geometry, gemm)
    return out if post_ops else add_relu(out, relu, add)


def uses_gemm_weight_grad(x, weight, stride, padding, dilation, groups):
    """Whether the weight gradient of this conv is taken by ``weight_grad``."""
    return (path_on('gemm_weight_grad') and weight.requires_grad and groups == 1
            and max(stride) > 1 and tuple(dilation) == (1, 1)
            and weight.shape[2] * weight.shape[3] > 1
            and min(weight.shape[:2]) >= MIN_CHANNELS)


def uses_winograd(x, weight, stride, padding, dilation, groups):
    """Whether this conv runs by Winograd's F(2x2, 3x3)."""
    rows, cols = tile_grid(*x.shape[2:])
    return (path_on('winograd') and tuple(weight.shape[2:]) == (3, 3)
            and tuple(stride) == (1, 1) and tuple(padding) == (1, 1)
            and tuple(dilation) == (1, 1) and groups == 1
            and min(weight.shape[:2]) >= WINOGRAD_MIN_CHANNELS
            and x.shape[0] * rows * cols >= WINOGRAD_MIN_TILES)


def convolution_with_post_ops(x, weight, bias, stride, padding, dilation, groups, relu=False,
                              add=None, add_in_place=False):
    """oneDNN convolution with the bias, ``+ add`` and the ReLU as post-ops (``_CPUConv2d``'s
    forward; no autograd of its own). ``add_in_place``: the result is written into ``add``."""
    geometry = (list(padding), list(stride), list(dilation), groups)
    if add is None:
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *geometry,
                                                       'relu' if relu else 'none', [], '')
    # the binary form takes no unary op as None (not 'none')
    unary, algorithm = ('relu', '') if relu else (None, None)
    if add_in_place:
        return torch.ops.mkldnn._convolution_pointwise_.binary(
            add, x, weight, bias, *geometry, 'add', 1.0, unary, [], algorithm)
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, add, weight, bias, *geometry, 'add', 1.0, unary, [], algorithm)


class _CPUConv2d(torch.autograd.Function):
    """``F.conv2d`` that adds ``add`` and applies the ReLU inside oneDNN's convolution
    (given them) and, with ``gemm``, takes the weight gradient from ``weight_grad``."""

    @staticmethod
    def forward(ctx, x, weight, bias, add, relu, stride, padding, dilation, groups, gemm):
        ctx.geometry = stride, padding, dilation, groups
        ctx.gemm, ctx.relu = gemm, relu
        if add is None and not relu:
            ctx.save_for_backward(x, weight)
            return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        out = convolution_with_post_ops(x, weight, bias, stride, padding, dilation, groups,
                                        relu, add)
        ctx.save_for_backward(x, weight, out if relu else None)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, *out = ctx.saved_tensors
        if ctx.relu:
            grad = torch.ops.aten.threshold_backward(grad, out[0], 0)
        stride, padding, dilation, groups = ctx.geometry
        need_x, need_w, need_b, need_add = ctx.needs_input_grad[:4]
        onednn_w = need_w and not ctx.gemm
        grad_x = grad_w = grad_b = None
        if need_x or onednn_w:
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                grad, x, weight, None, list(stride), list(padding), list(dilation), False,
                [0, 0], groups, [need_x, onednn_w, False])
        if need_w and ctx.gemm:
            grad_w = weight_grad(grad, x, weight.shape, stride, padding)
        if need_b:
            grad_b = grad.sum((0, 2, 3))
        return (grad_x, grad_w, grad_b, grad if need_add else None) + (None,) * 6


def _first_inside(pad, phase, stride):
    """First phase index u with ``stride*u + phase - pad >= 0``, and that input index."""
    u = max(0, -(-(pad - phase) // stride))
    return u, stride * u + phase - pad


def weight_grad(grad, x, weight_shape, stride, padding):
    """Weight gradient of a dilation-1, groups-1 conv, as one GEMM per kernel tap:
    ``grad_W[:, :, i, j] = grad_out^T @ x_tap(i, j)``. The padded input split into its
    ``stride**2`` phases (one copy) makes every tap a contiguous slice of one phase."""
    out_ch, in_ch, kh, kw = weight_shape
    n, _, ho, wo = grad.shape
    (sh, sw), (ph, pw) = stride, padding
    # phase (a, b) holds padded-input pixel (sh*u + a, sw*v + b) at [u, v]; tap (i, j) of
    # output (y, x) reads phase (i % sh, j % sw) at (y + i // sh, x + j // sw)
    hq, wq = ho + (kh - 1) // sh + 1, wo + (kw - 1) // sw
    phases = x.new_empty(sh, sw, n, hq, wq, in_ch)
    x_nhwc = x.permute(0, 2, 3, 1)
    for a in range(sh):
        u0, r0 = _first_inside(ph, a, sh)
        for b in range(sw):
            v0, c0 = _first_inside(pw, b, sw)
            src = x_nhwc[:, r0::sh, c0::sw]
            rows, cols = min(src.shape[1], hq - u0), min(src.shape[2], wq - v0)
            fill_with_zero_border(phases[a, b], src[:, :rows, :cols], u0, v0)
    # gradient on the same (hq, wq) grid, zero where no output exists
    grad_grid = grad.new_empty(n, hq, wq, out_ch)
    fill_with_zero_border(grad_grid, grad.permute(0, 2, 3, 1), 0, 0)
    positions = n * hq * wq
    grad_rows = grad_grid.view(positions, out_ch)
    out = grad.new_empty(out_ch, kh, kw, in_ch)  # channels_last weight layout
    for i in range(kh):
        for j in range(kw):
            flat = phases[i % sh, j % sw].view(positions, in_ch)
            shift = (i // sh) * wq + j // sw
            torch.mm(grad_rows[:positions - shift].t(), flat[shift:], out=out[:, i, j])
    return out.permute(0, 3, 1, 2)
