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
from .strided_conv import conv2d


def _foldable_conv(conv):
    return type(conv) is nn.Conv2d and conv.padding_mode == 'zeros'


def conv_norm(x, conv, norm):
    """``norm(conv(x))``, computed as one biased conv when the norm allows it.

    Folding on the fly pays on CPU, where BN is a separate memory-bound pass.
    On CUDA an eval BN is one cuDNN kernel, cheaper than the few small kernels
    that refold the weight each call, so there the BN runs as it is. On CPU
    the conv itself goes through ``strided_conv.conv2d`` (a faster weight
    gradient for the stride-2 3x3 convs).
    """
    if not (_foldable_conv(conv) and x.device.type == 'cpu'):
        return norm(conv(x))
    weight, bias = conv.weight, conv.bias
    affine = eval_bn_scale_and_shift(norm)
    if affine is not None:
        scale, shift = affine
        weight = weight * scale.reshape(-1, 1, 1, 1)
        bias = shift if bias is None else bias * scale + shift
    out = conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return out if affine is not None else norm(out)


@torch.no_grad()
def fold_conv_bn(conv, norm):
    """Return a new ``nn.Conv2d`` equal to ``norm(conv(.))`` for an eval-mode BN."""
    affine = eval_bn_scale_and_shift(norm)
    if affine is None or not _foldable_conv(conv):
        return None
    scale, shift = affine
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=True,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    fused.bias.copy_(shift if conv.bias is None else conv.bias * scale + shift)
    return fused
