"""SyncBN where it cannot synchronise: run it as BN, with a warning.

SyncBN only makes sense in a distributed run. Without an initialised
``torch.distributed`` process group (a single-process run, a notebook, a CPU
test) :func:`revert_syncbn` turns every SyncBN module of a built model (torch's
``SyncBatchNorm`` and mmcv's ``MMSyncBN``) into a BN with the same parameters
and statistics; ``SyncBNFallbackHook`` does it at the start of a run and warns
about the layers mmengine's Runner reverts in the neck and heads. (Torch's
SyncBatchNorm alone already computes plain BN outside a process group.)

In a process group on CPU (gloo, ``tools/dist_train.sh`` without GPUs), torch's
SyncBatchNorm cannot run (it needs CUDA; DDP refuses to wrap it):
:class:`CPUDistributedDataParallel`, the wrapper ``tools/train.py`` uses there,
converts every SyncBN to BN first, with a warning; each process then
normalises with its own batch statistics.
"""
import logging
import warnings

import torch
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS
from torch.nn.modules.batchnorm import _BatchNorm

_warned = set()


def is_distributed():
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _warn_once(key, message):
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, UserWarning, stacklevel=3)
    print_log(message, logger='current', level=logging.WARNING)


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


def revert_syncbn(module, warn=True, force=False):
    """``(module, n)``: each SyncBN inside replaced by :class:`BatchNormAnyD` if not
    distributed (``force``: also in a process group, e.g. a CPU one, where torch's
    SyncBatchNorm cannot run).

    Parameters and buffers are shared, not copied, so optimisers and DDP wrappers
    built before keep working. Returns the (possibly new) module and the number of
    layers converted; warns once when ``n > 0`` and ``warn``.
    """
    if is_distributed() and not force:
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


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's DDP wrapper for CPU processes (gloo): SyncBN layers, which torch runs only
    on CUDA, become BN (with the same parameters and statistics) first, with a warning."""

    def __init__(self, module, **kwargs):
        module, converted = revert_syncbn(module, warn=False, force=True)
        if converted:
            print_log(f"{converted} SyncBN layer(s) run as BN: torch's SyncBatchNorm needs "
                      'CUDA, and this distributed run is on CPU (gloo), so each process '
                      'normalises with its own batch statistics.', logger='current',
                      level=logging.WARNING)
        super().__init__(module=module, **kwargs)
