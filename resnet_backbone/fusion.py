"""Conv + BatchNorm folding, on the fly and permanent (``fuse``).

A BN that normalises with running statistics (eval mode, ``norm_eval`` or
frozen stages) is a per-channel affine map, so ``bn(conv(x, W))`` equals
``conv(x, W * s) + b``. Folding saves one full pass over the activation in
the forward and in the backward, and the gradients of W, gamma and beta still
flow through ``W * s`` and ``b``.
"""
import torch
from torch import nn

from .norms import eval_bn_scale_and_shift
from .train_conv import add_relu, conv2d, conv_output_size, convolution_with_post_ops


def foldable_conv(conv):
    return type(conv) is nn.Conv2d and conv.padding_mode == 'zeros'


def conv_norm(x, conv, norm, relu=False, add=None, add_in_place=False):
    """``norm(conv(x))``, then ``+ add`` and ReLU where asked.

    The norm is folded into the conv when it allows it and, in training, when
    the weight is not the larger side (``_norm_on_output_is_cheaper``). The sum
    lands in the conv output, or, when nothing needs gradients and
    ``add_in_place`` says ``add`` is the caller's scratch map, in ``add``.
    Where nothing needs gradients (frozen stages, inference), the bias, the
    sum and the ReLU run inside oneDNN's convolution (``pointwise_conv``).

    Folding on the fly pays on CPU, where BN is a separate memory-bound pass.
    On CUDA an eval BN is one cuDNN kernel, cheaper than the few small kernels
    that refold the weight each call, so there the BN runs as it is. On CPU
    the conv itself goes through ``train_conv.conv2d`` (a faster backward:
    the strided 3x3 convs' weight gradient, the bias gradient; the sum and the
    ReLU as post-ops with gradients too).
    """
    if not (foldable_conv(conv) and x.device.type == 'cpu'):
        return add_relu(norm(conv(x)), relu, add)
    folded = None if _norm_on_output_is_cheaper(x, conv) else folded_weight_and_bias(conv, norm)
    if folded is None:  # a BN on batch statistics, GN..., or the weight is the larger
        out = conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                     conv.groups)
        return add_relu(norm(out), relu, add)
    weight, bias = folded
    if pointwise_conv_applies(x, weight, bias, conv, add):
        return pointwise_conv(x, weight, bias, conv, relu, add, add_in_place)
    return conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups,
                  relu=relu, add=add)


def _norm_on_output_is_cheaper(x, conv):
    """Whether a conv in training should keep its weight and leave the norm to its output.

    Folding passes over the weight in the forward (``W * s``) and twice in the
    backward (the gradients of W and s); a norm on the output passes over the
    map instead. Where the weight is the larger (R-50's layer4 at 800x1216, its
    layer3 and layer4 at 2x320x320), the norm runs on the output, as in
    MMDetection. R-50 train step, in-process A/B (medians of 7 and 11
    alternating rounds): 2431 vs 2481 ms at 800x1216, 616 vs 635 ms at 2x320x320.
    """
    if not (conv.training and conv.weight.requires_grad and torch.is_grad_enabled()) \
            or isinstance(conv.padding, str):
        return False
    rows, cols = map(conv_output_size, x.shape[2:], conv.kernel_size, conv.stride,
                     conv.padding, conv.dilation)
    return conv.weight.numel() > x.shape[0] * conv.out_channels * rows * cols


def folded_weight_and_bias(conv, norm):
    """The weight and bias of ``norm(conv(.))`` as one conv (differentiable), or None
    where ``norm`` does not act as a fixed affine map (batch statistics, GN...)."""
    weight, bias = conv.weight, conv.bias
    if isinstance(norm, nn.Identity):
        return weight, bias
    affine = eval_bn_scale_and_shift(norm)
    if affine is None:
        return None
    scale, shift = affine
    return (weight * scale.reshape(-1, 1, 1, 1),
            shift if bias is None else bias * scale + shift)


def pointwise_conv_applies(x, weight, bias, conv, add):
    if torch.compiler.is_compiling() or not torch.backends.mkldnn.is_available():
        return False  # inductor fuses on its own
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
        or (add is not None and add.requires_grad))
    return (not needs_grad and x.dtype == weight.dtype == torch.float32
            and (add is None or add.dtype == x.dtype) and not isinstance(conv.padding, str)
            and all(t.is_contiguous(memory_format=torch.channels_last)
                    for t in (x, weight) + (() if add is None else (add,)))
            and not torch.is_autocast_enabled('cpu'))


def pointwise_conv(x, weight, bias, conv, relu, add, add_in_place):
    """oneDNN convolution with the bias, the sum and the ReLU as post-ops (no grad).

    The separate ``+=`` and ReLU each pass over the whole output; the largest
    maps (R-50 C2, 62 MB at 800x1216) are also new allocations the kernel must
    map in, which writing into ``add`` spares.
    """
    return convolution_with_post_ops(x, weight, bias, conv.stride, conv.padding, conv.dilation,
                                     conv.groups, relu, add, add_in_place)


@torch.no_grad()
def fold_conv_bn(conv, norm):
    """Return a new ``nn.Conv2d`` equal to ``norm(conv(.))`` for an eval-mode BN."""
    affine = eval_bn_scale_and_shift(norm)
    if affine is None or not foldable_conv(conv):
        return None
    scale, shift = affine
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=True,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    fused.bias.copy_(shift if conv.bias is None else conv.bias * scale + shift)
    return fused
