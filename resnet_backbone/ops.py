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

A stage's no-grad forward runs inside :func:`reusing_maps`: there a map that
``conv_norm`` made and that comes back as a residual ``add`` is dead after the
sum, and the CPU kernels write the sum into it instead of a fresh map.
"""
import contextlib
import threading
import weakref

import torch
import torch.nn.functional as F
from torch.nn.modules import module as _module

from . import cpu
from .cpu import conv as cpu_conv
from .cpu import layout as cpu_layout
from .errors import env_flag
from .functional import add_relu, fold_conv_bn, is_channels_last  # noqa: F401  (the seam's)

_fold_bn = env_flag('RESNET_BACKBONE_FOLD_BN')
_scope = threading.local()  # .made: weak references to the maps conv_norm made in reusing_maps


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
    (modules with forward hooks are called as they are). Inside :func:`reusing_maps`, an
    ``add`` that this function made may be overwritten with the result."""
    made = getattr(_scope, 'made', None)
    add_is_dead = made is not None and add is not None and any(ref() is add for ref in made)
    out = _conv_norm(x, conv, norm, relu, add, add_is_dead)
    if made is not None and out is not add:
        made.append(weakref.ref(out))
    return out


def _conv_norm(x, conv, norm, relu, add, add_is_dead):
    if _hooked(conv, norm):
        return add_relu(norm(conv(x)), relu, add)
    params = fold_conv_bn(conv, norm) if _fold_bn else None
    if cpu.enabled():
        out = cpu_conv.conv_norm(x, conv, norm, params, relu, add, add_is_dead)
        if out is not None:
            return out
    if params is None:
        out = norm(conv(x))
    else:
        out = F.conv2d(x, params[0], params[1], conv.stride, conv.padding, conv.dilation,
                       conv.groups)
    return add_relu(out, relu, add)


@contextlib.contextmanager
def reusing_maps(module):
    """The scope of ``module``'s no-grad forward (a stage) in which the maps ``conv_norm``
    makes are the network's own: each is read by the blocks and, where it comes back as a
    residual ``add``, dead after that sum, so the sum may be written into it. Large fresh
    maps cost page faults on CPU (docs/cpu_kernels.md). Inactive with gradients, under
    torch.compile, with the route off, where a forward hook in ``module`` could keep a
    map, and inside another stage's scope."""
    if torch.compiler.is_compiling():
        yield
        return
    active = not torch.is_grad_enabled() and cpu.path_on('reuse') and _fold_bn \
        and not _hooked(*module.modules())
    outer = getattr(_scope, 'made', None)
    # nested (a stage run inside another's scope): no reuse inside, nor of the outer maps
    _scope.made = [] if active and outer is None else None
    try:
        yield
    finally:
        _scope.made = outer


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
