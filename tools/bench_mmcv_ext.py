#!/usr/bin/env python
"""A/B: the demo's Mask R-CNN training iteration with mmcv's compiled kernels vs the
torchvision stand-in (resnet_backbone.mmcv_ext), in one process (needs a compiled mmcv).

    python tools/bench_mmcv_ext.py [--rounds 15] [--data-root data/shapes]

Builds configs/demo/mask_rcnn_r18_shapes.py and its train dataloader, then times
a training step (forward + backward, no update, so every round computes the same) on one
batch, alternating the kernels mmcv's wrappers
call each round (the first round of each is warm-up); prints medians and the ratio.
"""
import argparse
import contextlib
import os.path as osp
import statistics
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, osp.join(ROOT, 'tests'))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--rounds', type=int, default=15)
    p.add_argument('--data-root', default='data/shapes')
    p.add_argument('--config', default='configs/demo/mask_rcnn_r18_shapes.py')
    args = p.parse_args(argv)

    import torch
    from mmcv_reference import standin_kernels
    from mmengine.config import Config
    from mmengine.runner import Runner

    from resnet_backbone.cli import set_data_root
    from resnet_backbone.mmcv_ext import mmcv_ext_kind
    if mmcv_ext_kind() != 'compiled':
        raise SystemExit("needs mmcv's compiled ops beside the stand-in "
                         '(make setup MMCV_OPS=compiled)')
    cfg = set_data_root(Config.fromfile(osp.join(ROOT, args.config)), args.data_root)
    cfg.work_dir = '/tmp/bench_mmcv_ext'
    cfg.log_level = 'WARNING'
    runner = Runner.from_cfg(cfg)
    model = runner.model
    model.train()

    def step(data):  # forward + backward, no update: every round computes the same
        data = model.data_preprocessor(data, True)
        loss, _ = model.parse_losses(model(**data, mode='loss'))
        loss.backward()
        model.zero_grad(set_to_none=True)
    batches = iter(runner.train_dataloader)
    data = next(batches)  # one batch for every round: the kernels are what differs
    times = {'compiled': [], 'stand-in': []}
    for r in range(args.rounds + 1):
        order = ('compiled', 'stand-in') if r % 2 else ('stand-in', 'compiled')
        for name in order:
            torch.manual_seed(r)
            ctx = standin_kernels() if name == 'stand-in' else contextlib.nullcontext()
            with ctx:
                start = time.perf_counter()
                step(data)
                elapsed = time.perf_counter() - start
            if r:
                times[name].append(elapsed)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = sorted(b / a for a, b in zip(times['compiled'], times['stand-in']))
    print(f'per-round ratios stand-in / compiled: {ratios[0]:.3f} to {ratios[-1]:.3f}, '
          f'median {statistics.median(ratios):.3f}')
    print(f"median of {args.rounds} iterations: compiled {med['compiled']:.3f} s, stand-in "
          f"{med['stand-in']:.3f} s; stand-in / compiled = "
          f"{med['stand-in'] / med['compiled']:.3f}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
