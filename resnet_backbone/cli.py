"""Helpers shared by tools/train.py, tools/test.py, tools/demo.py and tools/feature_maps.py.

* ``set_data_root``: move every dataset (and evaluator annotation file) of a
  config to another root.
* ``missing_data_message``: what a config expects on disk, when it is missing.
* ``mmengine_checkpoint_loading``: load checkpoints written by mmengine's
  Runner under torch's safe ``weights_only`` loading, by allowing (within the
  ``with`` block only) the few non-tensor types those files hold.
"""
import contextlib
import os
import os.path as osp
import sys

DEMO_CONFIG = 'configs/demo/mask_rcnn_r18_shapes.py'


# ----------------------------------------------------------------- datasets
def iter_datasets(dataset):
    """Every dataset dict in a (possibly wrapped) dataset config."""
    if dataset is None:
        return
    if isinstance(dataset, (list, tuple)):
        for d in dataset:
            yield from iter_datasets(d)
        return
    if 'data_root' in dataset or 'ann_file' in dataset:
        yield dataset
    for key in ('dataset', 'datasets'):
        if key in dataset:
            yield from iter_datasets(dataset[key])


def _evaluators(cfg):
    for name in ('val_evaluator', 'test_evaluator'):
        ev = cfg.get(name)
        for e in (ev if isinstance(ev, (list, tuple)) else [ev]):
            if isinstance(e, dict):
                yield e


def set_data_root(cfg, root):
    """Point every dataloader's dataset, and evaluator ``ann_file``, at ``root``."""
    root = root.rstrip('/') + '/'
    old = cfg.get('data_root')
    for name in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(name)
        if isinstance(loader, dict):
            for ds in iter_datasets(loader.get('dataset')):
                ds['data_root'] = root
    for ev in _evaluators(cfg):
        ann = ev.get('ann_file')
        if isinstance(ann, str) and isinstance(old, str) and old and ann.startswith(old):
            ev['ann_file'] = root + ann[len(old):]
    cfg['data_root'] = root
    return cfg


def dataset_paths(cfg, loader_name):
    """[(what, path)] that a dataloader's datasets read: annotation files, image folders."""
    loader = cfg.get(loader_name)
    paths = []
    if not isinstance(loader, dict):
        return paths
    for ds in iter_datasets(loader.get('dataset')):
        root = ds.get('data_root') or ''
        if ds.get('ann_file'):
            paths.append(('annotations', osp.join(root, ds['ann_file'])))
        prefix = ds.get('data_prefix') or {}
        img = prefix.get('img') or prefix.get('img_path')
        if img:
            paths.append(('images', osp.join(root, img)))
    return paths


def missing_data_message(cfg, loader_names=('train_dataloader', 'val_dataloader'),
                         config_path=None):
    """None when every file the dataloaders need exists, else an explanation."""
    needed = [(w, p) for name in loader_names for w, p in dataset_paths(cfg, name)]
    missing = [(w, p) for w, p in needed if not osp.exists(p)]
    if not missing:
        return None
    root = cfg.get('data_root', '') or ''
    lines = [f'The data for {config_path or "this config"} is not there. Missing:']
    lines += [f'  {p}   ({w})' for w, p in missing]
    lines += ['', f'It expects this layout (data root {root!r}):']
    lines += [f'  {p}{"/" if w == "images" and not p.endswith("/") else ""}   ({w})'
              for w, p in dict.fromkeys(needed)]
    lines += ['',
              'Put the data there (for COCO 2017: https://cocodataset.org/#download), or',
              'move the root: --data-root DIR (or COCO_ROOT=DIR/ for the COCO configs).',
              'To try everything without downloading anything, run the demo, which',
              'generates a small synthetic COCO-format set and trains on it on CPU:',
              '  make demo',
              f'  (or: python tools/make_demo_data.py && python tools/train.py {DEMO_CONFIG})']
    return '\n'.join(lines)


def build_runner(cfg, loader_names, config_path):
    """The config's Runner; None, after saying what is missing, when its data is not on disk."""
    problem = missing_data_message(cfg, loader_names, config_path=config_path)
    if problem:
        print(problem, file=sys.stderr)
        return None
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)


@contextlib.contextmanager
def process_group_teardown():
    """On leaving the block, destroy the process group that mmengine's launcher made.

    mmengine never destroys it. A gloo rank that exits with its group alive can
    abort in the group's thread destructors ("terminate called without an active
    exception", SIGABRT) after training finished, and torchrun then reports the
    whole run as failed. Seen with ``tools/dist_train.sh`` on a busy CPU.
    """
    try:
        yield
    finally:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


# -------------------------------------------------------------- checkpoints
@contextlib.contextmanager
def mmengine_checkpoint_loading():
    """Within the block, ``torch.load`` (still ``weights_only``) accepts mmengine checkpoints.

    torch >= 2.6 loads with ``weights_only=True`` by default, which refuses the
    message-hub and numpy objects in a Runner checkpoint, so ``load_from`` and
    ``--resume`` fail. ``resnet_backbone.runtime.install()`` allowlists exactly
    those types for the whole process (:mod:`resnet_backbone.runtime.safe_globals`);
    this block allows the same list within the block only.
    """
    import torch

    from resnet_backbone.runtime import mmengine_safe_globals
    safe_globals = getattr(torch.serialization, 'safe_globals', None)
    if safe_globals is None:  # torch < 2.5 loads these files without help
        yield
        return
    # only what is not allowed yet: leaving the block removes exactly what it added
    current = torch.serialization.get_safe_globals()
    with safe_globals([entry for entry in mmengine_safe_globals() if entry not in current]):
        yield


def read_runner_checkpoint(path):
    """A Runner checkpoint (dict with ``state_dict``, ``meta``, ...) read safely."""
    import torch
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    with mmengine_checkpoint_loading():
        return torch.load(path, map_location='cpu', weights_only=True)


# -------------------------------------------------------------------- misc
def default_work_dir(config_path):
    return osp.join('work_dirs', osp.splitext(osp.basename(config_path))[0])


def load_cfg(args):
    """The config of ``args.config`` with the common command-line options applied:
    launcher, ``--cfg-options``, ``--data-root`` and ``--work-dir`` (default
    ``work_dirs/<config name>``)."""
    from mmengine.config import Config
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.data_root:
        set_data_root(cfg, args.data_root)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = default_work_dir(args.config)
    return cfg


def prepare_cpu_distributed(cfg, launcher):
    """Let ``--launcher pytorch`` (torchrun) run DDP on machines without CUDA.

    mmengine's pytorch launcher calls ``torch.cuda.set_device`` and gives DDP a
    device id; without CUDA this sets up the gloo process group itself (mmengine
    then skips its own) and wraps the model in DDP without device ids. With
    CUDA, or another launcher, nothing changes.
    """
    import torch
    if launcher == 'none' or torch.cuda.is_available():
        return cfg
    cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})['backend'] = 'gloo'
    if launcher == 'pytorch':
        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group(backend='gloo')
        if cfg.get('model_wrapper_cfg') is None:
            # mmengine's DDP wrapper, with SyncBN (CUDA only) turned into BN first
            cfg.model_wrapper_cfg = dict(
                type='CPUDistributedDataParallel', device_ids=None, broadcast_buffers=False,
                find_unused_parameters=cfg.get('find_unused_parameters', False))
    return cfg


DEVICES = ('auto', 'cpu', 'cuda')


def add_device_argument(parser):
    parser.add_argument('--device', choices=DEVICES, default='auto',
                        help='auto (default): the GPU when there is one, else the CPU; '
                        'cpu: hide any GPU from this run; cuda: fail unless there is a GPU')


def select_device(device):
    """'cuda' or 'cpu' for ``--device``; ``cpu`` hides the GPUs from this process.

    mmengine's Runner and ``init_detector`` put the model on the GPU whenever
    CUDA is available, so ``cpu`` sets ``CUDA_VISIBLE_DEVICES=''`` (before CUDA
    is first used).
    """
    if device not in DEVICES:
        raise ValueError(f'device must be one of {DEVICES}, got {device!r}')
    if device == 'cpu':
        os.environ['CUDA_VISIBLE_DEVICES'] = ''
        return 'cpu'
    import torch
    if torch.cuda.is_available():
        return 'cuda'
    if device == 'cuda':
        raise SystemExit('--device cuda: torch sees no CUDA device here '
                         '(torch.cuda.is_available() is False); use --device cpu or auto')
    return 'cpu'
