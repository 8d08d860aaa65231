"""Plain functional pieces shared by the network, the seam (``ops``) and the CPU kernels."""
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .norms import FrozenBatchNorm2d


def is_channels_last(x):
    """True for a 4-D tensor stored channels_last (and not also plain contiguous)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        and not x.is_contiguous()


def add_relu(out, relu=True, add=None):
    """``out + add`` (in place, as MMDetection's blocks), then ReLU where asked."""
    if add is not None:
        out += add
    return F.relu(out, inplace=True) if relu else out


def bn_affine(norm):
    """(scale, shift) of a BN that uses its running statistics; None for any other norm."""
    if isinstance(norm, FrozenBatchNorm2d):
        return norm.scale_and_shift()
    if not (isinstance(norm, _BatchNorm) and not norm.training and norm.track_running_stats
            and norm.running_mean is not None):
        return None
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if not norm.affine:
        return scale, -norm.running_mean * scale
    scale = norm.weight * scale
    return scale, norm.bias - norm.running_mean * scale


def fold_conv_bn(conv, norm):
    """(weight, bias) of ``norm(conv(.))`` as one conv, differentiable; None where the conv
    is not a plain ``nn.Conv2d`` or the norm does not act as a fixed affine map."""
    if type(conv) is not nn.Conv2d or conv.padding_mode != 'zeros':
        return None
    if isinstance(norm, nn.Identity):
        return conv.weight, conv.bias
    affine = bn_affine(norm)
    if affine is None:
        return None
    scale, shift = affine
    bias = shift if conv.bias is None else conv.bias * scale + shift
    return conv.weight * scale.reshape(-1, 1, 1, 1), bias
