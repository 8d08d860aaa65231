"""Reliable training with mmengine: safe resume, atomic checkpoints, SyncBN fallback, bad data.

Importing this module registers the hooks ``SafeCheckpointsHook``,
``DeterministicResumeHook``, ``SyncBNFallbackHook`` and ``SkippedImagesHook``
(mmengine HOOKS) and the model wrapper ``CPUDistributedDataParallel`` and changes
nothing else. The one patch is :func:`install`,
run by ``SafeCheckpointsHook`` before a run (this project's configs turn it on)
and by this project's tools; it

* adds to torch's ``weights_only`` allowlist exactly the non-tensor types
  mmengine Runner checkpoints hold, so ``--resume`` and ``load_from`` work on
  torch >= 2.6 with safe loading left on (:mod:`.safe_globals`);
* makes the Runner write checkpoints atomically and resume only from complete
  files (:mod:`.atomic`).

The transform ``SafeLoadImageFromFile`` and the dataset ``CheckedCocoDataset``
live in :mod:`.data`, which imports mmdet's datasets and is therefore loaded on
first use of those names here, or by ``custom_imports = dict(imports=[...,
'resnet_backbone.runtime.data'])`` in a config.
"""
import importlib

from .atomic import (atomic_checkpoints_installed, atomic_save, atomic_write, checkpoint_problem,
                     find_latest_checkpoint, install_atomic_checkpoints, is_complete_checkpoint,
                     resume_problem, uninstall_atomic_checkpoints)
from .hooks import (DeterministicResumeHook, SafeCheckpointsHook, SkippedImagesHook,
                    SyncBNFallbackHook, reseed)
from .safe_globals import (MMENGINE_SAFE_GLOBAL_NAMES, allow_mmengine_checkpoints,
                           mmengine_safe_globals)
from .skipped import read_skip_log, reset_skipped_images, skipped_images
from .syncbn import CPUDistributedDataParallel, revert_syncbn


def install():
    """Allowlist mmengine checkpoint types for safe loading; atomic checkpoints. Idempotent.

    The one change this package makes to torch and mmengine; ``uninstall_atomic_checkpoints``
    undoes the second part.
    """
    allow_mmengine_checkpoints()
    install_atomic_checkpoints()


_DATA_NAMES = ('CheckedCocoDataset', 'CorruptImageError', 'SafeLoadImageFromFile',
               'image_bytes_problem')


def __getattr__(name):
    if name in _DATA_NAMES:
        return getattr(importlib.import_module('.data', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = ['install', 'allow_mmengine_checkpoints', 'mmengine_safe_globals',
           'MMENGINE_SAFE_GLOBAL_NAMES', 'atomic_save', 'atomic_write', 'checkpoint_problem',
           'is_complete_checkpoint', 'resume_problem', 'find_latest_checkpoint',
           'install_atomic_checkpoints',
           'uninstall_atomic_checkpoints', 'atomic_checkpoints_installed',
           'SafeCheckpointsHook', 'DeterministicResumeHook', 'SyncBNFallbackHook',
           'SkippedImagesHook', 'reseed',
           'SafeLoadImageFromFile', 'CheckedCocoDataset', 'CorruptImageError',
           'image_bytes_problem', 'skipped_images', 'reset_skipped_images', 'read_skip_log',
           'revert_syncbn', 'CPUDistributedDataParallel']
