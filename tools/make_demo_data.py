#!/usr/bin/env python
"""Generate the demo's synthetic COCO-format instance-segmentation set.

    python tools/make_demo_data.py [--out data/shapes] [--num-train 1000] [--num-val 150]
                                   [--size 128] [--seed 0] [--force]

Circles, triangles and squares of varied size, colour and rotation on noisy gradient
backgrounds, overlapping and occluding each other; polygon masks of the visible parts.
The same arguments always give the same files; an existing identical set is kept.
"""
import argparse
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

DEFAULTS = dict(out='data/shapes', num_train=1000, num_val=150, size=128, seed=0)
# shape radius (at 128 px; scaled with --size), objects per image, at most this fraction
# of a shape hidden by later ones, background noise sigma
DRAW = dict(min_radius=15.0, max_radius=34.0, min_objects=1, max_objects=5, max_hidden=0.4,
            noise=5.0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[1])
    p.add_argument('--out', default=DEFAULTS['out'], help='root folder (default: %(default)s)')
    p.add_argument('--num-train', type=int, default=DEFAULTS['num_train'])
    p.add_argument('--num-val', type=int, default=DEFAULTS['num_val'])
    p.add_argument('--size', type=int, default=DEFAULTS['size'], help='image side in pixels')
    p.add_argument('--seed', type=int, default=DEFAULTS['seed'])
    p.add_argument('--force', action='store_true', help='regenerate even if present')
    return p.parse_args(argv)


def make(out, num_train, num_val, size, seed, force=False, quiet=False):
    from resnet_backbone.demo.shapes import make_shapes_dataset
    start = time.time()
    last = [0.0]

    def progress(split, done, total):
        if quiet:
            return
        now = time.time()
        if done == total or now - last[0] > 1.0:
            last[0] = now
            print(f'[data] {split}: {done}/{total} images', flush=True)

    draw = dict(DRAW)
    draw['min_radius'] *= size / 128.0
    draw['max_radius'] *= size / 128.0
    manifest, regenerated = make_shapes_dataset(
        out, num_train=num_train, num_val=num_val, size=size, seed=seed, force=force,
        progress=progress, **draw)
    if not quiet:
        state = 'generated' if regenerated else 'already there (same arguments), kept'
        print(f'[data] {out}: {num_train} train + {num_val} val images of {size}x{size}, '
              f'{state} ({time.time() - start:.1f} s)', flush=True)
    return manifest, regenerated


def main(argv=None):
    a = parse_args(argv)
    make(a.out, a.num_train, a.num_val, a.size, a.seed, force=a.force)
    return 0


if __name__ == '__main__':
    sys.exit(main())
