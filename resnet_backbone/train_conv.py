"""Convolutions with gradients on CPU: faster where oneDNN's are slow or do more work.

The wide 3x3 stride-1 convs on large maps (R-50's layer3 at detection sizes)
run by Winograd's F(2x2, 3x3) (``winograd.py``), forward and backward: 2.25x
fewer multiplies, paid for with memory-bound tile transforms. R-50 train step
on the project's 2-core AMD EPYC, in-process A/B with and without it
(alternating, medians of 11-21 rounds):

    input        layer3 tiles   with     without
    800x1216     950            2200     2298 ms
    800x1216     950            2134     2247 ms
    640x640      400             962      985 ms
    512x512      256             655      655 ms
    2x320x320    200             564      566 ms

Timed alone, one conv went either way between runs (0.8-1.3x at 256
channels), so the thresholds below follow the whole steps; at 128 channels
(layer2) the transforms cost more than the GEMMs save (0.6-0.96x).

Two parts of oneDNN's channels_last float32 backward run below the speed of
the plain work they amount to there (R-50 at 800x1216):

* The weight gradient of the stride-2 3x3 convs that open ResNet stages is up
  to 2x slower than the GEMMs it amounts to (layer2.0 68 vs 43 ms, layer3.0
  73 vs 36 ms; ``tools/bench_conv_wgrad.py``). Here it is one GEMM per kernel
  tap:

      grad_W[:, :, i, j] = grad_out^T @ x_tap(i, j)

  where ``x_tap`` holds the input pixel each output position reads through
  tap ``(i, j)``. Splitting the padded input into its ``stride**2`` phases
  (one copy) makes every tap a contiguous slice of one phase, so no per-tap
  copy is made; the few padding rows and columns this adds meet zero
  gradients. The input gradient stays with oneDNN, which is fast there.
* The bias gradient (a folded BN's shift) computed inside oneDNN's weight
  gradient costs up to 5 ms more per conv than a separate channel sum of the
  output gradient, most where the conv widens (layer2's 128->512 conv3: 26.2
  vs 22.9 ms for its whole backward, medians of 11). So the bias gradient is
  that sum. Whole R-50 train step, in-process A/B (medians of 9-11 rounds):
  2314 vs 2317, 2368 vs 2408 and 2407 vs 2459 ms.

A conv followed by a ReLU or a block's residual sum runs them as oneDNN
post-ops: the output is written once, instead of a write and then a
read-modify-write each for the sum and the ReLU; the backward masks the
gradient with the saved output, as ReLU's own backward does. R-50 layer2 at
800x1216 (forward + backward, frozen_stages=1): 699 vs 717 ms, medians of 31
alternating rounds; the gradients are bitwise those of the separate ops.
"""
import torch
import torch.nn.functional as F

from .layout import fill_with_zero_border, is_channels_last
from .winograd import WinogradConv3x3, tile_grid

MIN_CHANNELS = 128  # below it the GEMMs were not reliably faster (3-channel stem: 100x slower)
WINOGRAD_MIN_CHANNELS = 256
WINOGRAD_MIN_TILES = 400  # 2x2 output tiles over the batch


def _cpu_float32_training(x, weight):
    """The setting all three parts apply in: a float32 channels_last CPU conv with gradients,
    eager (inductor chooses on its own) and outside autocast."""
    return (x.device.type == 'cpu' and x.dtype == weight.dtype == torch.float32
            and torch.is_grad_enabled() and is_channels_last(x)
            and not torch.is_autocast_enabled('cpu') and not torch.compiler.is_compiling())


def uses_gemm_weight_grad(x, weight, stride, dilation, groups):
    """Whether ``conv2d`` takes the GEMM weight-gradient path for these arguments."""
    return (weight.requires_grad and groups == 1 and max(stride) > 1
            and tuple(dilation) == (1, 1) and weight.shape[2] * weight.shape[3] > 1
            and weight.shape[1] >= MIN_CHANNELS and weight.shape[0] >= MIN_CHANNELS
            and _cpu_float32_training(x, weight))


def uses_winograd(x, weight, stride, padding, dilation, groups):
    """Whether ``conv2d`` computes this conv by Winograd's F(2x2, 3x3)."""
    rows, cols = tile_grid(*x.shape[2:])
    return (tuple(weight.shape[2:]) == (3, 3) and tuple(stride) == (1, 1)
            and tuple(padding) == (1, 1) and tuple(dilation) == (1, 1) and groups == 1
            and min(weight.shape[:2]) >= WINOGRAD_MIN_CHANNELS
            and x.shape[0] * rows * cols >= WINOGRAD_MIN_TILES
            and _cpu_float32_training(x, weight))


def sums_bias_grad_apart(x, weight, bias):
    """Whether ``conv2d`` computes the bias gradient as a separate channel sum."""
    return (bias is not None and bias.requires_grad and bias.dtype == torch.float32
            and _cpu_float32_training(x, weight))


def uses_fused_epilogue(x, weight, padding, relu, add):
    """Whether ``conv2d`` adds ``add`` and applies the ReLU inside oneDNN's convolution."""
    return ((relu or add is not None) and isinstance(padding[0], int)
            and _cpu_float32_training(x, weight)  # first: it is False under torch.compile
            and torch.backends.mkldnn.is_available()
            and (add is None or (add.dtype == torch.float32 and is_channels_last(add))))


def conv2d(x, weight, bias, stride, padding, dilation, groups, relu=False, add=None):
    """``relu(F.conv2d(...) + add)`` (each part where asked), with the faster parts
    above where they apply."""
    stride, padding, dilation = (_pair(v) for v in (stride, padding, dilation))
    if isinstance(padding[0], int):
        if uses_winograd(x, weight, stride, padding, dilation, groups):
            return add_relu(WinogradConv3x3.apply(x, weight, bias), relu, add)
        gemm = uses_gemm_weight_grad(x, weight, stride, dilation, groups)
        fused = uses_fused_epilogue(x, weight, padding, relu, add)
        if gemm or fused or sums_bias_grad_apart(x, weight, bias):
            out = _CPUConv2d.apply(x, weight, bias, add if fused else None, fused and relu,
                                   stride, padding, dilation, groups, gemm)
            return out if fused else add_relu(out, relu, add)
    return add_relu(F.conv2d(x, weight, bias, stride, padding, dilation, groups), relu, add)


def add_relu(out, relu=True, add=None):
    """``out (+ add)`` in place, then ReLU in place if ``relu``."""
    if add is not None:
        out += add  # in place, as MMDetection: no new full-size map
    return F.relu(out, inplace=True) if relu else out


def _pair(v):
    return v if isinstance(v, str) else tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def conv_output_size(size, kernel, stride=1, padding=0, dilation=1):
    """Length of a conv's (or floor-mode pool's) output along one axis."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def convolution_with_post_ops(x, weight, bias, stride, padding, dilation, groups, relu=False,
                              add=None, add_in_place=False):
    """oneDNN convolution with the bias, ``+ add`` and the ReLU as post-ops (no autograd):
    one write of the output instead of a write, a read-modify-write for the sum and
    one for the ReLU. ``add_in_place``: the result is written into ``add``."""
    geometry = (list(padding), list(stride), list(dilation), groups)
    if add is None:
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *geometry,
                                                       'relu' if relu else 'none', [], '')
    op = torch.ops.mkldnn._convolution_pointwise_ if add_in_place \
        else torch.ops.mkldnn._convolution_pointwise
    # the binary form takes no unary op as None (not 'none')
    unary, algorithm = ('relu', '') if relu else (None, None)
    return op.binary(*((add, x) if add_in_place else (x, add)), weight, bias, *geometry,
                     'add', 1.0, unary, [], algorithm)


class _CPUConv2d(torch.autograd.Function):
    """``F.conv2d`` whose backward sums the bias gradient apart and, with ``gemm``,
    takes the weight gradient from ``weight_grad``; given ``add`` or ``relu``, the
    forward adds ``add`` and applies the ReLU inside the convolution."""

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
    """Weight gradient of a dilation-1, groups-1 conv, as one GEMM per kernel tap."""
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
