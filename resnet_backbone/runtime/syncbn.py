"""SyncBN without a process group: fall back to BN, with a warning.

SyncBN only makes sense in a distributed run. Without an initialised
``torch.distributed`` process group (a single-process run, a notebook, a CPU
test) it is replaced by plain BN, and a warning says so:

* :func:`syncbn_fallback` for a ``norm_cfg`` about to be built (the backbone's
  norm builder calls it);
* :func:`revert_syncbn` for a built model: every SyncBN module (torch's
  ``SyncBatchNorm`` and mmcv's ``MMSyncBN``) becomes a BN with the same
  parameters and statistics; also used by ``SyncBNFallbackHook``, which warns
  about the layers mmengine's Runner reverts in the neck and heads.
"""
import logging
import warnings

import torch
from mmengine.logging import print_log
from torch.nn.modules.batchnorm import _BatchNorm

SYNC_BN_TYPES = ('SyncBN', 'MMSyncBN')
# keyword arguments SyncBN layers take and BatchNorm2d does not
_SYNC_ONLY_KEYS = ('process_group', 'group', 'stats_mode')
_warned = set()


def is_distributed():
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _warn_once(key, message):
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, UserWarning, stacklevel=3)
    print_log(message, logger='current', level=logging.WARNING)


def syncbn_fallback(norm_cfg):
    """``norm_cfg`` itself, or a BN copy of it when it asks for SyncBN outside a process group.

    Warns once per process. Keys SyncBN takes and BN does not
    (``process_group``, ``group``, ``stats_mode``) are dropped.
    """
    if not isinstance(norm_cfg, dict) or norm_cfg.get('type') not in SYNC_BN_TYPES:
        return norm_cfg
    norm_cfg = mmsyncbn_fallback(norm_cfg)
    if is_distributed():
        return norm_cfg
    cfg = {k: v for k, v in norm_cfg.items() if k not in _SYNC_ONLY_KEYS}
    cfg['type'] = 'BN'
    _warn_once(('cfg', norm_cfg['type']),
               f"norm_cfg type={norm_cfg['type']!r} needs a torch.distributed process group, "
               "and none is initialised: using BN (batch statistics of this process only). "
               'Launch with tools/dist_train.sh (or --launcher pytorch) to synchronise BN.')
    return cfg


def mmsyncbn_fallback(norm_cfg):
    """``type='MMSyncBN'`` becomes torch's ``'SyncBN'`` where mmcv has no compiled ops.

    mmcv's MMSyncBN runs its own kernels, which the torchvision stand-in for
    mmcv's ops (:mod:`resnet_backbone.mmcv_ext`) does not provide; torch's
    SyncBatchNorm has the same parameters and statistics. Warns once.
    """
    if norm_cfg.get('type') != 'MMSyncBN':
        return norm_cfg
    from ..mmcv_ext import mmcv_ext_kind
    if mmcv_ext_kind() == 'compiled':
        return norm_cfg
    cfg = {k: v for k, v in norm_cfg.items() if k not in ('group', 'stats_mode')}
    cfg['type'] = 'SyncBN'
    _warn_once(('cfg', 'MMSyncBN-kernels'),
               "norm_cfg type='MMSyncBN' needs mmcv's compiled ops, and this mmcv runs "
               "torchvision kernels instead: using type='SyncBN' (torch's SyncBatchNorm, the "
               'same parameters and statistics).')
    return cfg


def _sync_bn_classes():
    classes = [torch.nn.SyncBatchNorm]
    try:
        from mmcv.ops import SyncBatchNorm as MMSyncBatchNorm
        classes.append(MMSyncBatchNorm)
    except ImportError:  # mmcv without ops and without the stand-in _ext
        pass
    return tuple(classes)


class BatchNormAnyD(_BatchNorm):
    """BatchNorm for any input with a channel dimension (what SyncBN accepts)."""

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f'expected at least 2-D input (N, C, ...), got {input.dim()}-D')


def _to_bn(module):
    bn = BatchNormAnyD(module.num_features, module.eps, module.momentum, module.affine,
                       module.track_running_stats)
    if module.affine:
        bn.weight = module.weight
        bn.bias = module.bias
    if module.track_running_stats:
        bn.running_mean = module.running_mean
        bn.running_var = module.running_var
        bn.num_batches_tracked = module.num_batches_tracked
    bn.training = module.training
    if module.running_mean is not None:
        bn.to(module.running_mean.device)
    return bn


def revert_syncbn(module, warn=True):
    """``(module, n)``: each SyncBN inside replaced by :class:`BatchNormAnyD` if not distributed.

    Parameters and buffers are shared, not copied, so optimisers built before
    keep working. Returns the (possibly new) module and the number of layers
    converted; warns once when ``n > 0`` and ``warn``.
    """
    if is_distributed():
        return module, 0
    classes = _sync_bn_classes()
    count = 0

    def convert(m):
        nonlocal count
        if isinstance(m, classes):
            count += 1
            return _to_bn(m)
        for name, child in m.named_children():
            new = convert(child)
            if new is not child:
                setattr(m, name, new)
        return m

    module = convert(module)
    if count and warn:
        _warn_once(('model', count),
                   f'{count} SyncBN layer(s) converted to BN: no torch.distributed process '
                   'group is initialised, so there is nothing to synchronise with.')
    return module, count
