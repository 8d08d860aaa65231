#!/usr/bin/env python
"""Train a detector from a config in configs/ (MMDetection's tools/train.py conventions).

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--auto-scale-lr]
                          [--resume [CHECKPOINT]] [--cfg-options KEY=VALUE ...]
                          [--launcher {none,pytorch,slurm,mpi}] [--data-root DIR]
                          [--device {auto,cpu,cuda}]

Several GPUs or nodes: tools/dist_train.sh (torchrun) or tools/slurm_train.sh; both call
this script with --launcher, and mmengine wraps the model in PyTorch DDP.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    from mmengine.config import DictAction

    from resnet_backbone.cli import add_device_argument
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                        '(default: work_dirs/<config name>)')
    parser.add_argument('--amp', action='store_true',
                        help='automatic mixed precision (needs a GPU)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the LR by total batch size / auto_scale_lr.base_batch_size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from this checkpoint, or without a value from the '
                        'latest checkpoint in the work dir')
    parser.add_argument('--data-root', help='move every dataset of the config to this root')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. train_cfg.max_epochs=1 '
                        'model.backbone.depth=101 (lists: key="[a,b]")')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher (dist_train.sh sets pytorch)')
    add_device_argument(parser)
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def build_cfg(args):
    """The config after the command line: device, work dir, overrides, AMP, resume, data root."""
    from resnet_backbone.cli import load_cfg, prepare_cpu_distributed, select_device
    select_device(args.device)
    cfg = load_cfg(args)
    if args.amp:
        import torch
        if not torch.cuda.is_available():
            raise SystemExit('--amp needs a CUDA GPU (mmengine AmpOptimWrapper); on CPU train '
                             'in float32 (leave out --amp)')
        if cfg.optim_wrapper.get('type', 'OptimWrapper') == 'AmpOptimWrapper':
            print('AMP is already enabled in the config')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise SystemExit('--auto-scale-lr: the config has no auto_scale_lr.base_batch_size')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    prepare_cpu_distributed(cfg, args.launcher)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    cfg = build_cfg(args)

    from resnet_backbone.checkpoint import check_normalization
    from resnet_backbone import runtime
    from resnet_backbone.cli import (build_runner, mmengine_checkpoint_loading,
                                     process_group_teardown)
    runtime.install()  # atomic checkpoints, safe resume (also SafeCheckpointsHook's work)

    check_normalization(cfg)
    loaders = ('train_dataloader', 'val_dataloader') if cfg.get('val_cfg') else (
        'train_dataloader', )
    runner = build_runner(cfg, loaders, args.config)
    if runner is None:
        return 2
    with mmengine_checkpoint_loading(), process_group_teardown():
        runner.train()
    return 0


if __name__ == '__main__':
    sys.exit(main())
