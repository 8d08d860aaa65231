#!/usr/bin/env python
"""Evaluate a trained detector (MMDetection's tools/test.py conventions).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--classwise]
                         [--format-only --outfile-prefix PREFIX] [--test-dev]
                         [--out results.pkl] [--show-dir DIR] [--data-root DIR]
                         [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]
                         [--device {auto,cpu,cuda}]

Writes to the work dir: metrics.json (every metric) and metrics.md (the COCO table, and
the per-class tables with --classwise). --test-dev scores nothing: it runs on COCO
test-dev (image_info_test-dev2017.json, test2017/) and writes the result jsons to submit.
"""
import argparse
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

TEST_DEV = dict(ann_file='annotations/image_info_test-dev2017.json',
                data_prefix=dict(img='test2017/'))


def parse_args(argv=None):
    from mmengine.config import DictAction

    from resnet_backbone.cli import add_device_argument
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='where metrics and logs go '
                        '(default: work_dirs/<config name>)')
    parser.add_argument('--classwise', action='store_true', help='add per-class AP tables')
    parser.add_argument('--format-only', action='store_true',
                        help='only write the COCO result jsons (needs --outfile-prefix)')
    parser.add_argument('--outfile-prefix',
                        help='result jsons go to PREFIX.bbox.json / PREFIX.segm.json')
    parser.add_argument('--test-dev', action='store_true',
                        help='run on COCO test-dev and write result jsons for submission '
                        '(implies --format-only)')
    parser.add_argument('--out', help='also dump the raw predictions to this .pkl file')
    parser.add_argument('--show-dir', help='draw predictions into this folder (inside '
                        'the work dir)')
    parser.add_argument('--amp', action='store_true', help='mixed-precision inference (GPU)')
    parser.add_argument('--data-root', help='move every dataset of the config to this root')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. test_dataloader.batch_size=4')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher (dist_test.sh sets pytorch)')
    add_device_argument(parser)
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    if args.test_dev:
        args.format_only = True
        if not args.outfile_prefix:
            args.outfile_prefix = 'test_dev_results'
    if args.format_only and not args.outfile_prefix:
        parser.error('--format-only needs --outfile-prefix')
    return args


def _evaluators(cfg):
    ev = cfg.test_evaluator
    return ev if isinstance(ev, (list, tuple)) else [ev]


def build_cfg(args):
    from resnet_backbone.cli import (iter_datasets, load_cfg, prepare_cpu_distributed,
                                              select_device)
    select_device(args.device)
    cfg = load_cfg(args)
    cfg.load_from = args.checkpoint
    outfile_prefix = args.outfile_prefix
    if outfile_prefix and not osp.isabs(outfile_prefix):
        outfile_prefix = osp.join(cfg.work_dir, outfile_prefix)
    if args.test_dev:
        for ds in iter_datasets(cfg.test_dataloader.dataset):
            ds.update(TEST_DEV, test_mode=True)
            ds['pipeline'] = [t for t in ds.get('pipeline', [])
                              if t.get('type') != 'LoadAnnotations']
        for ev in _evaluators(cfg):
            ev['ann_file'] = osp.join(cfg.get('data_root', ''), TEST_DEV['ann_file'])
    for ev in _evaluators(cfg):
        if args.classwise:
            ev['classwise'] = True
        if args.format_only:
            ev['format_only'] = True
        if outfile_prefix:
            ev['outfile_prefix'] = outfile_prefix
    if args.out:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise SystemExit('--out must be a .pkl file')
        cfg.test_evaluator = [*_evaluators(cfg),
                              dict(type='DumpDetResults', out_file_path=args.out)]
    if args.show_dir:
        vis = cfg.default_hooks.get('visualization')
        if vis is None:
            raise SystemExit('--show-dir: the config has no default_hooks.visualization')
        vis.update(draw=True, test_out_dir=args.show_dir)
    if args.amp:
        cfg.test_cfg.fp16 = True
    prepare_cpu_distributed(cfg, args.launcher)
    return cfg


def write_metrics(runner, metrics, work_dir):
    """metrics.json and metrics.md (COCO tables) in the work dir; returns the paths."""
    from mmengine.dist import is_main_process
    if not is_main_process():
        return []
    os.makedirs(work_dir, exist_ok=True)
    json_path = osp.join(work_dir, 'metrics.json')
    with open(json_path, 'w') as f:
        json.dump({k: (float(v) if isinstance(v, (int, float)) else v)
                   for k, v in metrics.items()}, f, indent=1)
    tables = []
    for metric in runner.test_evaluator.metrics:
        for name, table in getattr(metric, 'last_tables', {}).items():
            tables.append(f'### {name}\n\n{table}\n')
    md_path = osp.join(work_dir, 'metrics.md')
    with open(md_path, 'w') as f:
        f.write('\n'.join(tables) if tables else '(no COCO tables: format-only run)\n')
    return [json_path, md_path]


def main(argv=None):
    args = parse_args(argv)
    cfg = build_cfg(args)

    from resnet_backbone import runtime
    from resnet_backbone.cli import (build_runner, mmengine_checkpoint_loading,
                                     process_group_teardown)
    runtime.install()  # atomic checkpoints, safe resume (also SafeCheckpointsHook's work)

    if not osp.isfile(args.checkpoint):
        print(f'checkpoint not found: {args.checkpoint}', file=sys.stderr)
        return 2
    runner = build_runner(cfg, ('test_dataloader', ), args.config)
    if runner is None:
        return 2
    with mmengine_checkpoint_loading(), process_group_teardown():
        metrics = runner.test()
        paths = write_metrics(runner, metrics, cfg.work_dir)  # rank 0 only: group still up
    if paths:
        print('wrote ' + ', '.join(paths))
    return 0


if __name__ == '__main__':
    sys.exit(main())
