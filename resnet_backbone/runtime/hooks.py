"""Runner hooks for reliable training (register by ``import resnet_backbone.runtime``).

Add them to a config with::

    custom_hooks = [dict(type='SafeCheckpointsHook'),
                    dict(type='DeterministicResumeHook'),
                    dict(type='SyncBNFallbackHook'),
                    dict(type='SkippedImagesHook')]
"""
import logging
import os
import os.path as osp
import random

import numpy as np
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from .skipped import SKIP_LOG_ENV, read_skip_log
from .syncbn import is_distributed, revert_syncbn


def reseed(*key):
    """Seed python, numpy and torch (CPU and CUDA) from a tuple of ints."""
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]).generate_state(2)
    seed = int(state[0]) | (int(state[1]) << 32)
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    torch.manual_seed(seed)
    return seed


class _SeededIterator:
    """Reseeds before every batch it fetches: batch ``i`` always sees the same RNG state."""

    def __init__(self, iterator, seed_key):
        self._iterator = iterator
        self._seed_key = seed_key
        self._index = 0

    def __iter__(self):
        return self

    def __next__(self):
        reseed(*self._seed_key, self._index)
        self._index += 1
        return next(self._iterator)

    def __getattr__(self, name):
        return getattr(self._iterator, name)


@HOOKS.register_module()
class SafeCheckpointsHook(Hook):
    """Before the run (and so before any resume or ``load_from``), :func:`install`:
    atomic checkpoint writes, resume from complete files only, and torch's safe
    ``weights_only`` loading of mmengine's checkpoints."""

    priority = 'VERY_HIGH'

    def before_run(self, runner):
        from . import install
        install()


_SEEDED_CLASSES = {}


def _seeded_class(cls):
    """``cls`` with ``__getitem__`` reseeding python, numpy and torch from
    ``(run key, epoch, index)`` first: a sample's random augmentation is the same
    whichever worker draws it, and whether its epoch was reached by training or by a
    resume. The epoch comes from a shared-memory tensor the hook updates."""
    if cls not in _SEEDED_CLASSES:
        def __getitem__(self, idx):
            key, epoch = self._sample_seed
            reseed(*key, int(epoch), int(idx))
            return cls.__getitem__(self, idx)

        def __reduce_ex__(self, protocol):  # picklable for spawned workers
            return _seeded_instance, (cls, self.__dict__)
        _SEEDED_CLASSES[cls] = type(f'Seeded{cls.__name__}', (cls, ),
                                    {'__getitem__': __getitem__, '__reduce_ex__': __reduce_ex__})
    return _SEEDED_CLASSES[cls]


def _seeded_instance(cls, state):
    obj = cls.__new__(_seeded_class(cls))
    obj.__dict__.update(state)
    return obj


@HOOKS.register_module()
class DeterministicResumeHook(Hook):
    """Make a resumed run draw the same random numbers as an uninterrupted one.

    mmengine restores weights, optimizer, schedulers and the message hub on
    resume, but not the random generators: a resumed run restarts them from
    the seed, and dataloader workers (persistent ones above all) restart from
    theirs, so random augmentation and RoI sampling differ from the run that
    was not interrupted. This hook reseeds from ``(seed, rank, position)``:

    * epoch-based loops: python, numpy and torch before every iteration from
      ``(epoch, batch index)`` (checkpoints are taken at epoch ends), and, in the
      dataset (so in every dataloader worker), before every sample from
      ``(epoch, sample index)``;
    * iteration-based loops: before fetching every batch, so batch ``i`` and
      everything after it see the same state whether the loop got there by
      training or by the ``Advance dataloader`` skip of a resume.

    With ``randomness=dict(seed=..., deterministic=True)``, the same number of
    processes and of workers or not, the losses after a resume from an epoch
    checkpoint equal those of an uninterrupted run (mmengine's epoch loop
    restarts an interrupted epoch from its beginning). It runs last (priority
    LOWEST) in ``before_train_epoch``.
    """

    priority = 'LOWEST'

    def _key(self, runner, *position):
        seed = runner.seed if runner.seed is not None else 0
        diff_rank = bool(getattr(runner, '_randomness_cfg', {}).get('diff_rank_seed', False))
        return (seed, get_rank() if diff_rank else 0) + position

    def before_train_epoch(self, runner):
        loop = runner.train_loop
        if hasattr(loop, 'dataloader_iterator'):  # IterBasedTrainLoop
            if not isinstance(loop.dataloader_iterator, _SeededIterator):
                loop.dataloader_iterator = _SeededIterator(loop.dataloader_iterator,
                                                           self._key(runner, 1))
            return
        reseed(*self._key(runner, 0, runner.epoch))
        dataset = loop.dataloader.dataset
        if not hasattr(dataset, '_sample_seed'):  # before the workers start (or restart)
            dataset._sample_seed = (self._key(runner, 2),
                                    torch.zeros((), dtype=torch.long).share_memory_())
            dataset.__class__ = _seeded_class(type(dataset))
        dataset._sample_seed[1].fill_(runner.epoch)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        # epoch loops: the main process again, once its batch is fetched (a fresh dataloader
        # iterator, as after a resume, draws a worker base seed from torch's generator)
        if not hasattr(runner.train_loop, 'dataloader_iterator'):
            reseed(*self._key(runner, 3, runner.epoch, batch_idx))


@HOOKS.register_module()
class SyncBNFallbackHook(Hook):
    """Warn about, and convert, SyncBN in a run without a process group.

    mmengine's Runner already turns SyncBN into BN when it is not distributed,
    logging only an INFO line; this hook makes that a warning with the count,
    and converts any SyncBN still left (e.g. a model built outside the Runner).
    (A distributed run on CPU: :class:`CPUDistributedDataParallel`.)
    """

    priority = 'VERY_HIGH'

    def before_run(self, runner):
        if is_distributed():
            return
        from mmengine.model.utils import _BatchNormXd
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        reverted = sum(isinstance(m, _BatchNormXd) for m in model.modules())
        model, converted = revert_syncbn(model, warn=False)
        total = reverted + converted
        if total:
            print_log(f'{total} SyncBN layer(s) run as BN: training is not distributed (no '
                      'torch.distributed process group), so batch statistics are per process. '
                      'Launch with tools/dist_train.sh to synchronise them.', logger='current',
                      level=logging.WARNING)


@HOOKS.register_module()
class SkippedImagesHook(Hook):
    """Count images that ``SafeLoadImageFromFile`` skipped, in all processes, and log them.

    Sets ``RESNET_BACKBONE_SKIPPED_IMAGES_LOG`` to
    ``<work_dir>/skipped_images[.rankN].tsv`` before the dataloaders start, so
    dataloader workers append to it too (a resumed run keeps counting, a new
    run starts a new list); logs the total, when it changed, every
    ``interval`` iterations, after every train epoch and at the end, and puts
    it in the message hub as ``skipped_images``.
    """

    priority = 'VERY_LOW'

    def __init__(self, filename='skipped_images.tsv', interval=50):
        self.filename = filename
        self.interval = interval
        self.path = None
        self._reported = 0

    def before_run(self, runner):
        rank = get_rank()
        name = self.filename if rank == 0 else f'{osp.splitext(self.filename)[0]}.rank{rank}.tsv'
        self.path = osp.join(runner.work_dir, name)
        os.makedirs(runner.work_dir, exist_ok=True)
        if not getattr(runner, '_resume', False) and osp.exists(self.path):
            os.remove(self.path)
        os.environ[SKIP_LOG_ENV] = self.path

    def count(self):
        return len(read_skip_log(self.path))

    def _report(self, runner, final=False):
        n = self.count()
        runner.message_hub.update_info('skipped_images', n)
        if n and (n != self._reported or final):
            print_log(f'{n} corrupt image(s) skipped so far (list: {self.path})',
                      logger='current', level=logging.WARNING)
        self._reported = n

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if self.interval and self.every_n_train_iters(runner, self.interval):
            self._report(runner)

    def after_train_epoch(self, runner):
        self._report(runner)

    def after_run(self, runner):
        self._report(runner, final=True)
        if os.environ.get(SKIP_LOG_ENV) == self.path:
            del os.environ[SKIP_LOG_ENV]
