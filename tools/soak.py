#!/usr/bin/env python
"""Soak test: many forward/backward passes at random input sizes; resident memory must stay flat.

    python tools/soak.py [--iters 1000] [--warmup 100] [--depth 18] [--out docs/soak.md]

Trains a small ResNetBackbone (ResNet-18 at width 16, SGD, a loss on every
output level) on random inputs of random height and width on CPU, samples
the process's resident set size (RSS, /proc/self/statm) every
``--sample-every`` passes, and passes when every sample after the warm-up
lies within ``--tolerance`` (5%) of the RSS at the end of the warm-up.

Sizes are multiples of ``--size-step`` (32: MMDetection pads every batch to a
multiple of 32), and the warm-up meets every shape once: oneDNN, PyTorch's
CPU convolution library, creates and caches kernels per input shape (its
cache holds ``ONEDNN_PRIMITIVE_CACHE_CAPACITY``, default 1024, of them), so
memory rises with each new shape until the cache is full; that is not a leak
of this code. ``--size-step 1 --no-mkldnn`` checks arbitrary sizes without
that cache. The result (numbers, command, date, machine) goes to ``--out``
(``--append`` adds a section). Exit status: 0 pass, 1 fail.
"""
import argparse
import datetime
import os
import os.path as osp
import platform
import random
import statistics
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--iters', type=int, default=1000, help='forward/backward passes in all')
    p.add_argument('--warmup', type=int, default=100, help='passes before the reference sample')
    p.add_argument('--depth', type=int, default=18)
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument('--batch', type=int, default=2)
    p.add_argument("--min-size", type=int, default=32, help="smallest height/width")
    p.add_argument("--max-size", type=int, default=192, help="largest height/width")
    p.add_argument('--size-step', type=int, default=32,
                   help='sizes are multiples of this (MMDetection pads batches to a multiple '
                   'of 32); 1 draws any size')
    p.add_argument('--no-mkldnn', action='store_true',
                   help='disable oneDNN (torch.backends.mkldnn) convolutions')
    p.add_argument('--frozen-stages', type=int, default=1)
    p.add_argument('--sample-every', type=int, default=10)
    p.add_argument('--tolerance', type=float, default=0.05)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', default='docs/soak.md', help="result file ('' for none)")
    p.add_argument('--append', action='store_true', help='add this run to --out instead of '
                   'replacing it')
    return p.parse_args(argv)


def rss_bytes():
    """Current resident set size of this process."""
    with open('/proc/self/statm') as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf('SC_PAGE_SIZE')


def mib(n):
    return n / 2**20


def soak(args):
    import torch

    from resnet_backbone import ResNetBackbone

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    torch.set_num_threads(args.threads)
    if args.no_mkldnn:
        torch.backends.mkldnn.enabled = False
    model = ResNetBackbone(depth=args.depth, base_channels=args.base_channels,
                           frozen_stages=args.frozen_stages).train()
    model.init_weights()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)

    def step(h, w):
        x = torch.randn(args.batch, 3, h, w)
        outs = model(x)
        loss = sum(o.float().pow(2).mean() for o in outs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    sides = range(args.min_size, args.max_size + 1, args.size_step)
    shapes = [(h, w) for h in sides for w in sides]
    if len(shapes) <= args.warmup:
        # the warm-up meets every shape once, so caches keyed by shape are full before measuring
        warmup_shapes = rng.sample(shapes, len(shapes))
    else:
        warmup_shapes = [(args.max_size, args.max_size)]
    samples = []  # (iteration, rss)
    sizes = []
    t0 = time.perf_counter()
    for i in range(args.iters):
        if i < len(warmup_shapes):
            h, w = warmup_shapes[i]
        else:
            h, w = rng.choice(sides), rng.choice(sides)
        sizes.append((h, w))
        loss = step(h, w)
        if loss != loss:
            raise RuntimeError(f'loss became NaN at iteration {i + 1}')
        if (i + 1) % args.sample_every == 0 or i + 1 == args.warmup:
            samples.append((i + 1, rss_bytes()))
        if (i + 1) % 100 == 0:
            print(f'[soak] {i + 1}/{args.iters} passes, RSS {mib(samples[-1][1]):.1f} MiB, '
                  f'{time.perf_counter() - t0:.0f} s', flush=True)
    seconds = time.perf_counter() - t0
    return samples, sizes, seconds


def summarise(args, samples):
    ref = next(r for i, r in samples if i == args.warmup)
    after = [(i, r) for i, r in samples if i > args.warmup]
    values = [r for _, r in after]
    hi, lo = max(values), min(values)
    # least-squares slope of RSS over iterations after warm-up
    xs = [i for i, _ in after]
    mx, my = statistics.fmean(xs), statistics.fmean(values)
    spread = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, values)) / spread if spread else 0.0
    return dict(ref=ref, max=hi, min=lo, last=values[-1], max_dev=max(hi / ref - 1, 1 - lo / ref),
                slope_per_100=slope * 100, n=len(values),
                passed=hi <= ref * (1 + args.tolerance) and lo >= ref * (1 - args.tolerance))


def report(args, samples, sizes, seconds, s, argv):
    import torch
    cmd = 'python tools/soak.py' + (' ' + ' '.join(argv) if argv else '')
    areas = [h * w for h, w in sizes]
    sides = range(args.min_size, args.max_size + 1, args.size_step)
    n_shapes = len(sides) ** 2
    warm = (f'the warm-up passes each of the {n_shapes} shapes once (shuffled), then draws at '
            'random' if n_shapes <= args.warmup else
            f'the first pass is at {args.max_size}x{args.max_size}; {n_shapes} possible shapes')
    lines = [] if args.append else [
        '# Soak test: memory under repeated training steps',
        '',
        'Made by `tools/soak.py` (not a unit test: it takes minutes). Each section is one run;',
        're-run the command shown to reproduce it. Exit status 1 means memory grew beyond the',
        'limit.',
        '',
    ]
    lines += [''] if args.append else []
    lines += [
        f'## {args.iters} passes, sizes {args.min_size}..{args.max_size} step {args.size_step}'
        f'{", oneDNN off" if args.no_mkldnn else ""}',
        '',
        f'Result: **{"PASS" if s["passed"] else "FAIL"}**: after {args.warmup} warm-up passes, '
        f'resident memory stayed within {100 * s["max_dev"]:.2f}% of its value at the end of '
        f'the warm-up (limit {100 * args.tolerance:.0f}%) over the remaining '
        f'{args.iters - args.warmup} passes.',
        '',
        f'- Command: `{cmd}`',
        f'- Date: {datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")}',
        f'- Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}; '
        f'torch {torch.__version__} (CPU, {args.threads} threads), Python '
        f'{platform.python_version()}',
        f'- Model: ResNetBackbone(depth={args.depth}, base_channels={args.base_channels}, '
        f'frozen_stages={args.frozen_stages}) in train mode, SGD(momentum=0.9); loss = mean '
        'square of every output level',
        f'- Inputs: batch {args.batch}, random N(0, 1) images; height and width drawn '
        f'independently and uniformly from {args.min_size}..{args.max_size} in steps of '
        f'{args.size_step}; {warm}; {len(set(sizes))} distinct shapes met, mean side '
        f'{statistics.fmean(areas) ** 0.5:.0f} px',
        f'- oneDNN (torch.backends.mkldnn) convolutions: {"off" if args.no_mkldnn else "on"}',
        f'- Passes: {args.iters} forward/backward/step in {seconds:.0f} s '
        f'({1000 * seconds / args.iters:.0f} ms each; load average at the end '
        f'{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: other jobs shared the machine); '
        f'RSS sampled every {args.sample_every} passes from /proc/self/statm',
        '',
        '| | RSS (MiB) |',
        '|---|---|',
        f'| at the end of warm-up (pass {args.warmup}), the reference | {mib(s["ref"]):.1f} |',
        f'| minimum after warm-up | {mib(s["min"]):.1f} |',
        f'| maximum after warm-up | {mib(s["max"]):.1f} |',
        f'| last sample (pass {args.iters}) | {mib(s["last"]):.1f} |',
        f'| largest deviation from the reference | {100 * s["max_dev"]:.2f}% |',
        f'| least-squares trend after warm-up | {mib(s["slope_per_100"]):+.3f} MiB per 100 '
        'passes |',
        '',
        'RSS every 100 passes (MiB):',
        '',
        '| pass | ' + ' | '.join(str(i) for i, _ in samples if i % 100 == 0) + ' |',
        '|---|' + '---|' * sum(1 for i, _ in samples if i % 100 == 0),
        '| RSS | ' + ' | '.join(f'{mib(r):.1f}' for i, r in samples if i % 100 == 0) + ' |',
        '',
    ]
    return '\n'.join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.warmup >= args.iters:
        raise SystemExit('--warmup must be smaller than --iters')
    if args.warmup <= 0:
        raise SystemExit('--warmup must be positive')
    samples, sizes, seconds = soak(args)
    s = summarise(args, samples)
    text = report(args, samples, sizes, seconds, s, argv)
    print(text)
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'a' if args.append else 'w') as f:
            f.write(text)
        print(f'[soak] written to {args.out}')
    return 0 if s['passed'] else 1


if __name__ == '__main__':
    sys.exit(main())
