"""The seam between the network and device-specific kernels.

The network calls these functions and nothing device-specific. Each is plain
PyTorch; where the CPU kernels (:mod:`resnet_backbone.cpu`) are switched on and
apply, they compute the same result faster.

BN folding is plain math and runs on every device: a BN that uses its running
statistics (eval mode, ``norm_eval``, frozen stages) is a per-channel affine
map, so ``bn(conv(x, W))`` is ``conv(x, W * s) + b``. That spares the BN pass
over the map and, in training, the map the BN would store for its backward;
gradients reach W, gamma and beta through ``W * s`` and ``b``. Switch:
:func:`set_fold_bn` or ``RESNET_BACKBONE_FOLD_BN=0``.
"""
import torch
import torch.nn.functional as F
from torch.nn.modules import module as _module

from . import cpu
from .cpu import conv as cpu_conv
from .cpu import layout as cpu_layout
from .errors import env_flag
from .functional import add_relu, fold_conv_bn, is_channels_last  # noqa: F401  (the seam's)

_fold_bn = env_flag('RESNET_BACKBONE_FOLD_BN')


def fold_bn_enabled():
    return _fold_bn


def set_fold_bn(flag):
    """Fold eval-mode BNs into their convs (True, the default) or not; returns the previous."""
    global _fold_bn
    if not isinstance(flag, bool):
        raise TypeError(f'set_fold_bn takes True or False, got {type(flag).__name__}: {flag!r}')
    previous, _fold_bn = _fold_bn, flag
    return previous


def _hooked(*modules):
    """Whether calling the modules runs hooks (pruning, feature taps) that a fused call
    would skip."""
    return bool(_module._global_forward_hooks or _module._global_forward_pre_hooks) or any(
        m._forward_hooks or m._forward_pre_hooks for m in modules)


def conv_norm(x, conv, norm, relu=False, add=None):
    """``relu(norm(conv(x)) + add)``, each part where asked; the norm folded where it can be
    (modules with forward hooks are called as they are)."""
    if _hooked(conv, norm):
        return add_relu(norm(conv(x)), relu, add)
    params = fold_conv_bn(conv, norm) if _fold_bn else None
    if cpu.enabled():
        out = cpu_conv.conv_norm(x, conv, norm, params, relu, add)
        if out is not None:
            return out
    if params is None:
        out = norm(conv(x))
    else:
        out = F.conv2d(x, params[0], params[1], conv.stride, conv.padding, conv.dilation,
                       conv.groups)
    return add_relu(out, relu, add)


def prefers_channels_last(device):
    """Whether the network should run channels_last on ``device`` (CPU kernels on)."""
    return torch.device(device).type == 'cpu' and cpu.path_on('channels_last')


def to_nchw(x):
    """``x.contiguous()``: the caller's NCHW layout for a map the network ran channels_last."""
    if cpu.path_on('nchw_copy'):
        out = cpu_layout.to_nchw(x)
        if out is not None:
            return out
    return x.contiguous()
