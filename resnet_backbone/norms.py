"""Normalisation layers: a parameter-free FrozenBN and the norm builder.

State-dict keys follow mmcv's ``build_norm_layer`` naming (``bn1``, ``gn2``…),
so checkpoints of MMDetection and torchvision load strictly.
"""
import torch
from mmcv.cnn import build_norm_layer
from mmengine.registry import MODELS as MMENGINE_MODELS
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine parameters are fixed buffers.

    It has no trainable parameters, so optimisers, DDP and weight decay never
    see it. Keys are those of ``nn.BatchNorm2d`` (``num_batches_tracked`` is
    accepted on load and ignored).
    """

    _abbr_ = 'bn'

    def __init__(self, num_features, eps=1e-5, **unused):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer('weight', torch.ones(num_features))
        self.register_buffer('bias', torch.zeros(num_features))
        self.register_buffer('running_mean', torch.zeros(num_features))
        self.register_buffer('running_var', torch.ones(num_features))

    def scale_and_shift(self):
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        return scale, self.bias - self.running_mean * scale

    def forward(self, x):
        scale, shift = self.scale_and_shift()
        shape = (1, -1, 1, 1)
        return torch.addcmul(shift.to(x.dtype).view(shape), x, scale.to(x.dtype).view(shape))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + 'num_batches_tracked', None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def convert_frozen_batchnorm(cls, module):
        """Return ``module`` with every BatchNorm inside replaced by FrozenBN."""
        if isinstance(module, _BatchNorm):
            frozen = cls(module.num_features, module.eps)
            if module.affine:
                frozen.weight.copy_(module.weight.detach())
                frozen.bias.copy_(module.bias.detach())
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
            return frozen.to(device=frozen.weight.device if module.running_mean is None
                             else module.running_mean.device)
        for name, child in module.named_children():
            new_child = cls.convert_frozen_batchnorm(child)
            if new_child is not child:
                setattr(module, name, new_child)
        return module

    def extra_repr(self):
        return f'{self.num_features}, eps={self.eps}'


if 'FrozenBN' not in MMENGINE_MODELS.module_dict:
    MMENGINE_MODELS.register_module('FrozenBN', module=FrozenBatchNorm2d)

NORM_TYPES = ('BN', 'BN2d', 'SyncBN', 'GN', 'FrozenBN', 'IN', 'LN')


def build_norm(norm_cfg, num_features, postfix=''):
    """Build a norm layer; returns ``(name, layer)`` like mmcv's builder.

    SyncBN without a process group falls back to BN with a warning.
    """
    from .runtime.syncbn import syncbn_fallback
    return build_norm_layer(syncbn_fallback(norm_cfg), num_features, postfix=postfix)


def is_batch_norm(module):
    return isinstance(module, (_BatchNorm, FrozenBatchNorm2d))


def eval_bn_scale_and_shift(norm):
    """Per-channel (scale, shift) of a BN that uses its running statistics.

    Returns None when ``norm`` normalises with batch statistics (training BN)
    or is not a batch norm at all.
    """
    if isinstance(norm, FrozenBatchNorm2d):
        return norm.scale_and_shift()
    if isinstance(norm, _BatchNorm) and not norm.training and norm.track_running_stats \
            and norm.running_mean is not None:
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.affine:
            scale = norm.weight * scale
            shift = norm.bias - norm.running_mean * scale
        else:
            shift = -norm.running_mean * scale
        return scale, shift
    return None
