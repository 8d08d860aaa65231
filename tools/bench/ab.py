"""A/B of the CPU kernel routes: the step each route targets, with the route on and off.

For every (route, step, size) the two arms alternate round by round in one
process (the arm that goes first alternates too), after one warm-up round each;
the result is each arm's median and ``gain = median(off) / median(on) - 1``. A
route earns its place with a gain of at least 3% on one of the sizes it targets
(docs/benchmarks.md).

Steps: ``eval`` is a no-grad forward, ``train`` a forward + backward with
``frozen_stages=1, norm_eval=True`` (MMDetection's zoo setting); R-50 with
random weights. ``all`` is every route at once against the switch off.

Routes in ``PER_PROCESS`` change which memory a step maps fresh (page faults);
there the other arm's frees in the same process would change the result, so
each arm runs in processes of its own (alternating, ``rounds`` per arm), each
timing the step beside MMDetection's ResNet as a detector's process would
(the two alternate). Their rows also give the ratio to MMDetection per arm.
"""
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from .models import backbone_kwargs, loss_weights, randomize, weighted_loss

SIZES = {'800x1216': (1, 800, 1216), '2x512x512': (2, 512, 512), '2x320x320': (2, 320, 320),
         '64x64': (1, 64, 64)}
# the steps and sizes each route is for
TARGETS = {
    'channels_last': (('eval', '800x1216'), ('train', '800x1216'), ('train', '2x512x512'),
                      ('train', '2x320x320')),
    'nchw_copy': (('eval', '800x1216'), ('train', '800x1216')),
    'train_post_ops': (('train', '800x1216'), ('train', '2x512x512'), ('train', '2x320x320')),
    'gemm_weight_grad': (('train', '800x1216'), ('train', '2x512x512'), ('train', '2x320x320')),
    'reuse': (('eval', '800x1216'), ('eval', '2x512x512'), ('eval', '2x320x320')),
    'winograd': (('train', '800x1216'), ('train', '2x512x512'), ('train', '2x320x320')),
    'all': (('eval', '800x1216'), ('train', '800x1216'), ('train', '2x320x320')),
}
PER_PROCESS = {'reuse'}
STEPS_PER_PROCESS = 3  # timed steps of each model per process, after one warm-up each


def route_off(route):
    """A context in which ``route`` is off (``all``: the whole switch)."""
    from resnet_backbone import cpu
    if route != 'all':
        return cpu.paths_disabled(route)

    @contextlib.contextmanager
    def switch_off():
        previous = cpu.set_enabled(False)
        try:
            yield
        finally:
            cpu.set_enabled(previous)
    return switch_off()


def make_step(mode, shape, depth=50, cls=None):
    if cls is None:
        from resnet_backbone import ResNetBackbone as cls
    model = randomize(cls(**backbone_kwargs(depth)))
    x = torch.randn(*shape[:1], 3, *shape[1:], generator=torch.Generator().manual_seed(0))
    tiny = x[..., :32, :32]

    def settle():
        """An untimed call that lays the weights out as the arm wants (a switch re-lays
        them out on the next forward)."""
        with torch.no_grad():
            model(tiny)

    if mode == 'eval':
        model.eval()  # MMDetection's ResNet.eval() returns None: never chain it

        def step():
            with torch.no_grad():
                model(x)
        return step, settle
    model.train()
    with torch.no_grad():
        weights = loss_weights([o.shape for o in model(x)], x.device)

    def step():
        weighted_loss(model(x), weights).backward()
        model.zero_grad(set_to_none=True)
    return step, settle


def timed(step, settle, context):
    with context:
        settle()
        start = time.perf_counter()
        step()
        return time.perf_counter() - start


def ab(route, mode, size, rounds, log=print):
    """{'route', 'step', 'size', 'on_s', 'off_s', 'gain', 'rounds'} of one A/B (and
    'on_vs_mmdet', 'off_vs_mmdet' for the routes in PER_PROCESS)."""
    if route in PER_PROCESS:
        times, ratios = _per_process(route, mode, size, rounds)
    else:
        times, ratios = _in_process(route, mode, size, rounds), None
    on, off = statistics.median(times['on']), statistics.median(times['off'])
    row = dict(route=route, step=mode, size=size, on_s=on, off_s=off, gain=off / on - 1,
               rounds=rounds)
    note = ''
    if ratios:
        row.update(on_vs_mmdet=statistics.median(ratios['on']),
                   off_vs_mmdet=statistics.median(ratios['off']))
        note = (f'  vs MMDetection on {row["on_vs_mmdet"]:.3f}x off {row["off_vs_mmdet"]:.3f}x'
                ', an arm per process')
    log(f'{route:17s} {mode:5s} {size:9s}  on {on * 1e3:8.1f} ms  off {off * 1e3:8.1f} ms  '
        f'gain {row["gain"]:+6.1%}  (medians of {rounds}){note}')
    return row


def _in_process(route, mode, size, rounds):
    step, settle = make_step(mode, SIZES[size])
    times = {'on': [], 'off': []}
    for r in range(rounds + 1):
        order = ('on', 'off') if r % 2 == 0 else ('off', 'on')
        for arm in order:
            context = contextlib.nullcontext() if arm == 'on' else route_off(route)
            elapsed = timed(step, settle, context)
            if r:
                times[arm].append(elapsed)
    return times


def _per_process(route, mode, size, rounds):
    """Each arm's per-process medians of ours and of ours / MMDetection's ratio."""
    times, ratios = {'on': [], 'off': []}, {'on': [], 'off': []}
    tool = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        'benchmark.py')
    for r in range(rounds):
        for arm in (('on', 'off') if r % 2 == 0 else ('off', 'on')):
            spec = f'{route}:{arm}:{mode}:{size}'
            out = subprocess.run([sys.executable, tool, '--ab-arm', spec],
                                 capture_output=True, text=True)
            if out.returncode:
                raise RuntimeError(f'A/B arm {spec} failed (exit {out.returncode}):\n'
                                   f'{out.stderr[-2000:]}')
            arm_times = json.loads(out.stdout.strip().splitlines()[-1])
            times[arm].append(arm_times['ours'])
            ratios[arm].append(arm_times['mmdet'] / arm_times['ours'])
    return times, ratios


def arm(spec, steps=STEPS_PER_PROCESS):
    """One process of a PER_PROCESS A/B (``route:on|off:step:size``): the medians (s) of
    ours and of MMDetection's ResNet, one step of each in turn."""
    from .common import mmdet_resnet
    route, side, mode, size = spec.split(':')
    ours, settle = make_step(mode, SIZES[size])
    mmdet, _ = make_step(mode, SIZES[size], cls=mmdet_resnet()[0])
    times = {'ours': [], 'mmdet': []}
    with contextlib.nullcontext() if side == 'on' else route_off(route):
        settle()
        for i in range(steps + 1):
            for name, step in (('ours', ours), ('mmdet', mmdet))[::1 if i % 2 else -1]:
                start = time.perf_counter()
                step()
                if i:
                    times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def run(routes, rounds, log=print, only=None):
    """Every A/B of ``routes``; ``only``: (step, size) for all of them instead (tests)."""
    rows = []
    for route in routes:
        for mode, size in ([only] if only else TARGETS[route]):
            rows.append(ab(route, mode, size, rounds, log))
    return rows


def markdown(result):
    from .report import machine_lines
    rows = result['rows']
    lines = [f"### {result['title']}", '', 'Machine:', ''] + machine_lines(result['machine']) + [
             '', f"Command: `{result['command']}`", '',
             '| route | step | size | on (ms) | off (ms) | gain | keeps its place (>= 3%) |',
             '|---|---|---|---|---|---|---|']
    per_process = any('on_vs_mmdet' in r for r in rows)
    if per_process:
        lines[-2:] = ['| route | step | size | on (ms) | off (ms) | gain | on / off vs '
                      'MMDetection | keeps its place (>= 3%) |', '|---' * 8 + '|']
    best = {}
    for r in rows:
        best[r['route']] = max(best.get(r['route'], -1.0), r['gain'])
    for r in rows:
        vs = ''
        if per_process:
            vs = (f" {r['on_vs_mmdet']:.3f}x / {r['off_vs_mmdet']:.3f}x |" if 'on_vs_mmdet' in r
                  else ' |')
        lines.append(f"| {r['route']} | {r['step']} | {r['size']} | {r['on_s'] * 1e3:.1f} | "
                     f"{r['off_s'] * 1e3:.1f} | {r['gain']:+.1%} |{vs} "
                     f"{'yes' if best[r['route']] >= 0.03 else 'no'} |")
    return '\n'.join(lines) + '\n'
