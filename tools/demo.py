#!/usr/bin/env python
"""The demo, in one go: data, training, evaluation, plots (no download).

    python tools/demo.py [--work-dir work_dirs/demo] [--data-root data/shapes]
                         [--iters N] [--val-interval N] [--num-train N] [--num-val N]
                         [--device {auto,cpu,cuda}]

It runs on the GPU when there is one (--device auto), else on the CPU.

1. generates the synthetic shapes set (tools/make_demo_data.py; kept if already there);
2. trains configs/demo/mask_rcnn_r18_shapes.py from scratch with tools/train.py;
3. evaluates the last checkpoint with tools/test.py --classwise;
4. writes to the work dir: metrics.md / metrics.json (COCO tables), curves.png (losses
   and val AP over the iterations), predictions.png (boxes and masks on val images)
   and summary.md (numbers, times, and the targets: bbox mAP >= 0.50, segm mAP >= 0.45).
"""
import argparse
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)
CONFIG = 'configs/demo/mask_rcnn_r18_shapes.py'
TARGETS = {'coco/bbox_mAP': 0.50, 'coco/segm_mAP': 0.45}
LOSS_KEYS = ('loss', 'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask')
AP_KEYS = ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP_50')


def say(msg):
    print(f'[demo] {msg}', flush=True)


def parse_args(argv=None):
    from make_demo_data import DEFAULTS

    from resnet_backbone.cli import add_device_argument
    p = argparse.ArgumentParser(description='Train and evaluate the CPU demo in one go')
    p.add_argument('--work-dir', default='work_dirs/demo')
    p.add_argument('--data-root', default=DEFAULTS['out'])
    p.add_argument('--num-train', type=int, default=DEFAULTS['num_train'])
    p.add_argument('--num-val', type=int, default=DEFAULTS['num_val'])
    p.add_argument('--iters', type=int, default=None,
                   help='training iterations (default: the config\'s)')
    p.add_argument('--val-interval', type=int, default=None,
                   help='validate every N iterations (default: the config\'s)')
    p.add_argument('--grid', type=int, default=12, help='val images in predictions.png')
    add_device_argument(p)
    return p.parse_args(argv)


def run_tool(args, label):
    """Run a tool with this Python, its output streaming through; fail loudly."""
    cmd = [sys.executable, *args]
    say(f'{label}: {" ".join(cmd[1:])}')
    start = time.time()
    env = dict(os.environ)
    # Threads that sleep instead of spinning while they wait: on a CPU shared with
    # other work, spinning OpenMP threads slow small convolutions down many times.
    env.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    if rc != 0:
        raise SystemExit(f'[demo] {label} failed (exit code {rc}); see the output above')
    return time.time() - start


# ------------------------------------------------------------------ curves
def read_scalars(path):
    train, val = [], []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            if any(k.startswith('coco/') for k in rec):
                val.append(rec)
            elif 'loss' in rec:
                train.append(rec)
    return train, val


def plot_curves(scalars_path, out_path):
    """Losses (left) and val AP (right) against the iteration."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    train, val = read_scalars(scalars_path)
    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key in LOSS_KEYS:
        pts = [(r['step'], r[key]) for r in train if key in r]
        if pts:
            xs, ys = zip(*pts)
            ax_loss.plot(xs, ys, label=key, linewidth=2.2 if key == 'loss' else 1.2)
    ax_loss.set(xlabel='iteration', ylabel='loss', title='training losses', yscale='log')
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    for key in AP_KEYS:
        pts = [(r['step'], r[key]) for r in val if key in r]
        if pts:
            xs, ys = zip(*pts)
            ax_ap.plot(xs, ys, marker='o', label=key.replace('coco/', ''),
                       linestyle='-' if key.endswith('mAP') else '--')
    for key, target in TARGETS.items():
        ax_ap.axhline(target, color='gray', linewidth=0.8, linestyle=':')
        ax_ap.annotate(f'target {key.replace("coco/", "")} {target:.2f}', (0, target),
                       xycoords=('axes fraction', 'data'), xytext=(3, 2),
                       textcoords='offset points', fontsize=7, color='gray')
    ax_ap.set(xlabel='iteration', ylabel='AP', title='validation AP', ylim=(0, 1))
    ax_ap.grid(alpha=0.3)
    ax_ap.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return len(train), len(val)


# ------------------------------------------------------------- predictions
def draw_predictions(config, checkpoint, data_root, out_path, num_images=12, score_thr=0.5,
                     cfg_options=None, device='cpu'):
    """A grid of val images with predicted masks, boxes, classes and scores."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    from mmdet.apis import inference_detector, init_detector
    from mmengine.config import Config

    from resnet_backbone.cli import mmengine_checkpoint_loading, set_data_root
    cfg = Config.fromfile(osp.join(ROOT, config))
    set_data_root(cfg, data_root)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    with mmengine_checkpoint_loading():
        model = init_detector(cfg, checkpoint, device=device)
    classes = model.dataset_meta['classes']
    ds = cfg.test_dataloader.dataset
    with open(osp.join(ds.data_root, ds.ann_file)) as f:
        ann = json.load(f)
    images = sorted(ann['images'], key=lambda im: im['id'])[:num_images]
    paths = [osp.join(ds.data_root, ds.data_prefix['img'], im['file_name']) for im in images]
    results = inference_detector(model, paths)
    cols = min(4, len(paths))
    rows = (len(paths) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.3 * rows), squeeze=False)
    palette = plt.get_cmap('tab10')
    import cv2
    for ax, path, res in zip(axes.flat, paths, results):
        img = cv2.imread(path)[..., ::-1].astype(np.float32) / 255
        pred = res.pred_instances
        keep = pred.scores >= score_thr
        pred = pred[keep].cpu()
        boxes, labels, scores = pred.bboxes.numpy(), pred.labels.numpy(), pred.scores.numpy()
        masks = pred.masks.numpy() if 'masks' in pred else None
        for i in range(len(boxes)):
            colour = np.array(palette(int(labels[i]) % 10)[:3])
            if masks is not None:
                m = masks[i].astype(bool)
                img[m] = 0.45 * img[m] + 0.55 * colour
        ax.imshow(np.clip(img, 0, 1))
        for i in range(len(boxes)):
            colour = palette(int(labels[i]) % 10)
            x1, y1, x2, y2 = boxes[i]
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False,
                                       edgecolor=colour, linewidth=1.5))
            ax.text(x1, y1 - 1, f'{classes[labels[i]]} {scores[i]:.2f}', color='white',
                    fontsize=6, va='bottom', bbox=dict(facecolor=colour, alpha=0.8, pad=0.5,
                                                       edgecolor='none'))
        ax.set_title(f'{osp.basename(path)}: {len(boxes)} found', fontsize=8)
    for ax in axes.flat:
        ax.axis('off')
    fig.suptitle(f'predictions (score >= {score_thr}) on val images', fontsize=10)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return len(paths)


def latest_scalars(work_dir, exclude=()):
    found = [p for p in glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
             if p not in exclude]
    return max(found, key=osp.getmtime) if found else None


def cpu_seconds():
    """User + system CPU time of this process and its finished children."""
    import resource
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class LoadSampler:
    """The 1-minute load average, sampled every ``period`` seconds in the background."""

    def __init__(self, period=20.0):
        import threading
        self.samples = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period, ), daemon=True)
        self._thread.start()

    def _run(self, period):
        while not self._stop.wait(period):
            self.samples.append(os.getloadavg()[0])

    def stop(self):
        self._stop.set()
        self.samples.append(os.getloadavg()[0])
        return sum(self.samples) / len(self.samples), max(self.samples)


def device_name(device):
    if device == 'cuda':
        import torch
        return f'GPU ({torch.cuda.get_device_name(0)})'
    return f'CPU ({os.cpu_count()} cores)'


def summary_text(metrics, times, iters, table, cpu=None, load=None, device='cpu'):
    lines = ['# Demo result', '',
             f'Mask R-CNN, ResNet-18 backbone from scratch, {iters} iterations, '
             f'{device_name(device)}.', '',
             table.strip(), '', '| step | wall seconds |', '|---|---|']
    lines += [f'| {k} | {v:.0f} |' for k, v in times.items()]
    if cpu is not None:
        lines += ['', f'CPU time, all processes: {cpu:.0f} s (wall x cores would be '
                  f'{times["total"] * (os.cpu_count() or 1):.0f} s).']
    if load is not None:
        busy = load[0] > (os.cpu_count() or 1) + 1  # the demo itself keeps ~2 busy
        lines += [f'Load average (1 min) during the run: mean {load[0]:.1f}, max {load[1]:.1f}'
                  + (': other work shared the CPU, so the wall times are longer than on an '
                     'idle machine.' if busy else '.')]
    lines += ['', '| target | value | met |', '|---|---|---|']
    for key, target in TARGETS.items():
        value = metrics.get(key, float('nan'))
        lines.append(f'| {key} >= {target:.2f} | {value:.3f} | '
                     f'{"yes" if value >= target else "NO"} |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    sys.path.insert(0, osp.join(ROOT, 'tools'))
    args = parse_args(argv)
    os.chdir(ROOT)
    from resnet_backbone.cli import select_device
    device = select_device(args.device)  # 'cpu' hides the GPUs from the tools run below too
    say(f'device: {device_name(device)}')
    t0 = time.time()
    load = LoadSampler()
    times = {}
    work_dir = args.work_dir
    os.makedirs(work_dir, exist_ok=True)

    say('step 1/4: synthetic data')
    from make_demo_data import DEFAULTS, make
    make(args.data_root, args.num_train, args.num_val, DEFAULTS['size'], DEFAULTS['seed'])
    times['data generation'] = time.time() - t0

    from mmengine.config import Config
    cfg = Config.fromfile(CONFIG)
    iters = args.iters or cfg.max_iters
    val_interval = args.val_interval or min(cfg.val_interval, iters)
    overrides = [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={val_interval}']
    if args.iters:
        overrides += [f'param_scheduler.1.end={iters}',
                      f'param_scheduler.1.milestones=[{int(iters * 0.75)},{int(iters * 0.9)}]',
                      f'default_hooks.checkpoint.interval={iters}']
    say(f'step 2/4: training {CONFIG} for {iters} iterations (batch '
        f'{cfg.train_dataloader.batch_size}); progress every '
        f'{cfg.default_hooks.logger.interval} iterations, val every {val_interval}')
    before = set(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    times['training (incl. validation)'] = run_tool(
        ['tools/train.py', CONFIG, '--work-dir', work_dir, '--data-root', args.data_root,
         '--device', device, '--cfg-options', *overrides], 'train')
    checkpoint = osp.join(work_dir, f'iter_{iters}.pth')
    if not osp.isfile(checkpoint):
        raise SystemExit(f'[demo] training wrote no {checkpoint}')
    scalars = latest_scalars(work_dir, exclude=before)

    say('step 3/4: COCO evaluation of the last checkpoint on the val split')
    times['evaluation'] = run_tool(
        ['tools/test.py', CONFIG, checkpoint, '--work-dir', work_dir, '--data-root',
         args.data_root, '--device', device, '--classwise'], 'test')
    with open(osp.join(work_dir, 'metrics.json')) as f:
        metrics = json.load(f)
    with open(osp.join(work_dir, 'metrics.md')) as f:
        table = f.read()

    say('step 4/4: plots')
    t = time.time()
    if scalars:
        n_train, n_val = plot_curves(scalars, osp.join(work_dir, 'curves.png'))
        say(f'curves.png: {n_train} loss points, {n_val} validations ({scalars})')
    else:
        say('no scalars.json from training found: curves.png skipped')
    n = draw_predictions(CONFIG, checkpoint, args.data_root,
                         osp.join(work_dir, 'predictions.png'), num_images=args.grid,
                         device=device)
    say(f'predictions.png: {n} val images')
    times['plots'] = time.time() - t
    times['total'] = time.time() - t0

    text = summary_text(metrics, times, iters, table, cpu=cpu_seconds(), load=load.stop(),
                        device=device)
    with open(osp.join(work_dir, 'summary.md'), 'w') as f:
        f.write(text)
    print(text, flush=True)
    met = all(metrics.get(k, 0) >= v for k, v in TARGETS.items())
    say(f'done in {times["total"] / 60:.1f} min; targets {"met" if met else "NOT met"}; '
        f'outputs in {work_dir}: metrics.md, metrics.json, curves.png, predictions.png, '
        'summary.md')
    return 0


if __name__ == '__main__':
    sys.exit(main())
