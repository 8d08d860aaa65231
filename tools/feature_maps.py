#!/usr/bin/env python
"""Write a PNG of a backbone's C2-C5 activations for one image.

    python tools/feature_maps.py IMAGE [--config CONFIG] [--checkpoint CKPT | --random-init]
                                 [--out OUT.png] [--size 512] [--channels 6]

The backbone and the input normalisation come from CONFIG (default
configs/mask_rcnn_r50.py). Weights: CKPT may be a detector checkpoint written by
tools/train.py (its backbone part is used), a backbone checkpoint or a name such as
torchvision://resnet50; without --checkpoint the config's own init_cfg is used, and
--random-init skips weights altogether. Each row is one stage: the input, the mean
activation over channels, and the channels with the highest mean activation.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
STAGES = ('C2', 'C3', 'C4', 'C5')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Plot C2-C5 activations of the backbone')
    p.add_argument('image', help='input image')
    p.add_argument('--config', default='configs/mask_rcnn_r50.py')
    p.add_argument('--checkpoint', help='detector/backbone checkpoint or weights name')
    p.add_argument('--random-init', action='store_true', help='no weights: random init')
    p.add_argument('--out', help='output PNG (default: <image name>_features.png)')
    p.add_argument('--size', type=int, default=512, help='short side of the input')
    p.add_argument('--channels', type=int, default=6, help='top channels shown per stage')
    return p.parse_args(argv)


def build_backbone(config, checkpoint=None, random_init=False):
    """(backbone in eval mode, data_preprocessor cfg) from a config."""
    import copy

    from mmengine.config import Config

    import resnet_backbone  # noqa: F401  (registers the backbones)
    from mmdet.registry import MODELS
    from resnet_backbone.checkpoint import load_checkpoint
    from resnet_backbone.cli import read_runner_checkpoint
    cfg = Config.fromfile(config)
    bb_cfg = copy.deepcopy(cfg.model.backbone)
    bb_cfg['out_indices'] = (0, 1, 2, 3)
    if checkpoint is not None or random_init:
        bb_cfg['init_cfg'] = None
    backbone = MODELS.build(bb_cfg)
    backbone.init_weights()
    if checkpoint is not None:
        raw = checkpoint
        if osp.isfile(checkpoint):
            try:
                raw = read_runner_checkpoint(checkpoint)
            except Exception:  # not a Runner file: the package's own reader decides
                raw = checkpoint
        report = load_checkpoint(backbone, raw)
        print(f'{checkpoint}: {report}'.splitlines()[0])
    return backbone.eval(), cfg.model.get('data_preprocessor', {})


def load_image(path, size, pre):
    """(H, W, 3) RGB uint8 image at short side ``size``, and its normalised tensor."""
    import cv2
    import numpy as np
    import torch
    bgr = cv2.imread(path)
    if bgr is None:
        raise SystemExit(f'cannot read image {path}')
    h, w = bgr.shape[:2]
    scale = size / min(h, w)
    bgr = cv2.resize(bgr, (max(32, round(w * scale)), max(32, round(h * scale))),
                     interpolation=cv2.INTER_LINEAR)
    rgb = bgr[..., ::-1].copy()
    x = (rgb if pre.get('bgr_to_rgb', False) else bgr).astype(np.float32)
    mean = np.array(pre.get('mean', [0, 0, 0]), np.float32)
    std = np.array(pre.get('std', [1, 1, 1]), np.float32)
    x = torch.from_numpy((x - mean) / std).permute(2, 0, 1)[None].contiguous()
    return rgb, x


def feature_maps(backbone, x):
    import torch
    with torch.no_grad():
        return [f[0] for f in backbone(x)]


def plot(rgb, feats, out, channels=6, title=''):
    """One row per stage: input, channel mean, top channels. Returns the stage shapes."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    cols = 2 + channels
    fig, axes = plt.subplots(len(feats), cols, figsize=(1.9 * cols, 2.0 * len(feats)),
                             squeeze=False)
    shapes = []
    for row, (name, f) in enumerate(zip(STAGES, feats)):
        c, h, w = f.shape
        stride = rgb.shape[0] / h
        shapes.append((name, c, h, w))
        axes[row, 0].imshow(rgb)
        axes[row, 0].set_title('input' if row == 0 else '', fontsize=8)
        axes[row, 0].set_ylabel(f'{name}\n{c} ch, /{stride:.0f}\n{h}x{w}', fontsize=8)
        mean = f.mean(0)
        axes[row, 1].imshow(mean.numpy(), cmap='viridis')
        axes[row, 1].set_title('mean over channels', fontsize=7)
        top = f.flatten(1).mean(1).argsort(descending=True)[:channels]
        for k, ch in enumerate(top.tolist()):
            ax = axes[row, 2 + k]
            ax.imshow(f[ch].numpy(), cmap='magma')
            ax.set_title(f'ch {ch}', fontsize=7)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in axes[row, 2 + len(top):]:
            ax.axis('off')
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return shapes


def main(argv=None):
    args = parse_args(argv)
    backbone, pre = build_backbone(args.config, args.checkpoint, args.random_init)
    rgb, x = load_image(args.image, args.size, pre)
    feats = feature_maps(backbone, x)
    out = args.out or osp.splitext(osp.basename(args.image))[0] + '_features.png'
    weights = args.checkpoint or ('random init' if args.random_init else 'config init_cfg')
    shapes = plot(rgb, feats, out, args.channels,
                  f'{type(backbone).__name__} ({osp.basename(args.config)}; {weights})')
    print(f'wrote {out}: ' + ', '.join(f'{n} {c}x{h}x{w}' for n, c, h, w in shapes))
    return shapes


if __name__ == '__main__':
    main()
