"""Normalisation layers: a parameter-free FrozenBN (registered as ``FrozenBN`` by
:mod:`resnet_backbone.registry`) and the norm builder.

State-dict keys follow mmcv's ``build_norm_layer`` naming (``bn1``, ``gn2``…),
so checkpoints of MMDetection and torchvision load strictly.
"""
import warnings

import torch
from mmcv.cnn import build_norm_layer
from torch import nn


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

    def extra_repr(self):
        return f'{self.num_features}, eps={self.eps}'


def build_norm(norm_cfg, num_features, postfix=''):
    """Build a norm layer; returns ``(name, layer)`` like mmcv's builder.

    ``type='MMSyncBN'`` is built as torch's ``'SyncBN'`` where mmcv has no compiled
    ops (its kernels are not in the torchvision stand-in; same parameters and
    statistics). Torch's SyncBatchNorm computes plain BN outside a process group.
    ``type='FrozenBN'`` is always this module's class: under the ``mmdet`` scope the
    registry would give MMDetection's own ``FrozenBN`` (same keys and numbers, but not
    folded into its conv).
    """
    norm_cfg = mmsyncbn_as_syncbn(norm_cfg)
    if isinstance(norm_cfg, dict) and norm_cfg.get('type') == 'FrozenBN':
        norm_cfg = dict(norm_cfg, type=FrozenBatchNorm2d)
    return build_norm_layer(norm_cfg, num_features, postfix=postfix)


def mmsyncbn_as_syncbn(norm_cfg):
    """``norm_cfg``, with ``type='MMSyncBN'`` turned into ``'SyncBN'`` without compiled mmcv."""
    if not isinstance(norm_cfg, dict) or norm_cfg.get('type') != 'MMSyncBN':
        return norm_cfg
    from .mmcv_ext import mmcv_ext_kind
    if mmcv_ext_kind() == 'compiled':
        return norm_cfg
    global _warned_mmsyncbn
    if not _warned_mmsyncbn:
        _warned_mmsyncbn = True
        warnings.warn("norm_cfg type='MMSyncBN' needs mmcv's compiled ops, and this mmcv runs "
                      "torchvision kernels instead: using type='SyncBN' (torch's "
                      'SyncBatchNorm, the same parameters and statistics).', UserWarning,
                      stacklevel=3)
    cfg = {k: v for k, v in norm_cfg.items() if k not in ('group', 'stats_mode')}
    cfg['type'] = 'SyncBN'
    return cfg


_warned_mmsyncbn = False
