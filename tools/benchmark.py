#!/usr/bin/env python
"""Benchmark our ResNetBackbone against MMDetection's ResNet and torchvision's.

Every setting (a "group": mode x dtype x memory layout x torch.compile) builds
each implementation with the same random weights and input, checks its result
against MMDetection's ResNet in eager float32 (outputs for eval, parameter
gradients for train steps), then times it. Implementations run interleaved,
one step each per round (the order rotates every round), so machine drift hits
all of them alike; each row's ``vs mmdet`` is MMDetection's median divided by
the row's median (> 1: faster than MMDetection) from that same group.

Implementations (``impl`` in a row id):
  mmdet              MMDetection ``ResNet`` (the reference)
  ours               ``ResNetBackbone``, no flags
  ours-infer         eval only: ours with the documented inference switches,
                     ``fuse()`` + channels_last (always channels_last)
  torchvision        torchvision ResNet conv1..layer4 (C2-C5); in train modes
                     configured like the zoo default (stem + layer1 frozen, BN
                     in eval mode); it has no with_cp, so no train_cp row
  torchvision-fused  eval only: torchvision with every BN folded into its conv
  ours-torchvision / ours-mmcv   DCN rows: ours with dcn backend torchvision / mmcv

Modes: eval (forward, no_grad), train (forward + backward, frozen_stages=1,
norm_eval=True), train_cp (the same with with_cp=True), dcn (R-50-DCN, DCN in
c3-c5, train step at --dcn-batch x 3 x --dcn-size), detector (Mask R-CNN
R-50-FPN train iterations on a synthetic batch, with our backbone and with
MMDetection's ResNet, from mmdet's own config; needs mmcv.ops).

Row ids are ``mode/dtype/layout/compile/impl``, e.g. ``eval/fp32/nchw/eager/ours``;
``--only`` takes comma-separated fnmatch patterns over them (the reference row
of a selected group always runs).

--ab ROUTE[,ROUTE] runs the A/B of the CPU kernel routes instead (tools/bench/ab.py):
the step each route targets, with it on and off, in one run.

The measuring code is the package tools/bench/ (models, measure, groups, detector,
report, ab); this file is its command line.

Examples:
  python tools/benchmark.py                                   # the full CPU matrix
  python tools/benchmark.py --ab all,winograd --repeats 7     # A/B of CPU kernel routes
  python tools/benchmark.py --size 256x384 --repeats 3        # reduced size
  python tools/benchmark.py --modes eval --dtypes fp32 --compile off --only '*/ours*'
  python tools/benchmark.py --detector --modes eval,train --compile off
  python tools/benchmark.py --tiny                            # seconds; used by the tests
  python tools/benchmark.py --from-json r.json --markdown docs/benchmarks.md  # re-render
"""
import argparse
import gc
import json
import os
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.dirname(os.path.abspath(__file__))):
    if path not in sys.path:
        sys.path.insert(0, path)

import torch  # noqa: E402

from bench import ab  # noqa: E402
from bench.common import (BACKBONE_MODES, COMPILES, DEFAULT_MODES, DTYPES, LAYOUTS,  # noqa: E402
                          MODES, REFERENCE, mmcv_ops_status, mmdet_resnet, ours_class)
from bench.detector import DetectorRunner, run_detector  # noqa: E402,F401
from bench.groups import run_backbone_group  # noqa: E402
from bench.measure import PeakMemory  # noqa: E402
from bench.models import randomize, reference_impl  # noqa: E402,F401
from bench.report import COLUMNS, emit, machine_info, write_markdown  # noqa: E402

TINY = dict(size='64x64', batch=1, depth=18, warmup=1, repeats=2, compile='off',
            dcn_size='96x96', dcn_batch=1, detector_size='128x128', detector_batch=1,
            detector_repeats=2)
# The detector rows train on the batch the zoo config's pipeline makes (images resized
# to 1333x800), on every device; small images vary more (the heads dominate there):
# give them more rounds (--detector-repeats).
FULL = dict(size='800x1216', batch=1, depth=50, warmup=2, repeats=5, compile='off,on',
            dcn_size='512x512', dcn_batch=2, detector_size='800x1333', detector_batch=2,
            detector_repeats=5)


def _size(s):
    try:
        h, w = (int(v) for v in s.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must be HxW, e.g. 800x1216, got {s!r}')
    return h, w


def _choices(allowed):
    def parse(s):
        vals = [v.strip() for v in s.split(',') if v.strip()]
        bad = [v for v in vals if v not in allowed]
        if bad or not vals:
            raise argparse.ArgumentTypeError(f'{s!r}: allowed {",".join(allowed)}')
        return vals
    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
    p.add_argument('--size', type=_size, help='backbone input HxW (default 800x1216)')
    p.add_argument('--batch', type=int, help='backbone batch (default 1)')
    p.add_argument('--depth', type=int, choices=(18, 34, 50, 101, 152), help='default 50')
    p.add_argument('--repeats', type=int, help='timed steps per row (default 5)')
    p.add_argument('--warmup', type=int, help='untimed steps per row after the check (default 2)')
    p.add_argument('--modes', type=_choices(MODES), help=f'default {",".join(DEFAULT_MODES)}')
    p.add_argument('--dtypes', type=_choices(tuple(DTYPES)), default=list(DTYPES),
                   help='fp32 and/or bf16 (autocast); default both')
    p.add_argument('--channels-last', type=_choices(tuple(LAYOUTS)), default=list(LAYOUTS),
                   help='off,on (default both)')
    p.add_argument('--compile', type=_choices(tuple(COMPILES)),
                   help='torch.compile off,on (default both; off with --tiny)')
    p.add_argument('--only', type=lambda s: [v for v in s.split(',') if v],
                   help='comma-separated fnmatch patterns over row ids '
                        'mode/dtype/layout/compile/impl, e.g. "eval/fp32/*/ours*"')
    p.add_argument('--detector', action='store_true',
                   help='also time Mask R-CNN R-50-FPN train iterations (mode detector)')
    p.add_argument('--dcn-size', type=_size, help='DCN rows input HxW (default 512x512)')
    p.add_argument('--dcn-batch', type=int, help='DCN rows batch (default 2)')
    p.add_argument('--detector-size', type=_size,
                   help='detector input HxW (default 800x1333, the config\'s training scale)')
    p.add_argument('--detector-batch', type=int, help='detector batch (default 2)')
    p.add_argument('--detector-repeats', type=int,
                   help='timed iterations per detector row (default 5)')
    p.add_argument('--threads', type=int, help='torch.set_num_threads (default: torch default)')
    p.add_argument('--tf32', action='store_true', help='CUDA: allow TF32 in fp32 rows')
    p.add_argument('--cudnn-benchmark', action='store_true', help='CUDA: cudnn.benchmark=True')
    p.add_argument('--tiny', action='store_true',
                   help='tiny run for tests: 1x3x64x64, depth 18, 1 warm-up, 2 repeats, '
                        'compile off unless asked, DCN 1x3x96x96, detector 1x3x128x128')
    p.add_argument('--out', help='write the results as JSON')
    p.add_argument('--markdown', help='write a markdown table + machine description; an '
                   'existing file keeps everything outside this section\'s markers')
    p.add_argument('--markdown-section', help='marker name in --markdown (default: device)')
    p.add_argument('--from-json', help='render a previous --out JSON (no benchmark run)')
    p.add_argument('--ab', type=_choices(tuple(ab.TARGETS)),
                   help='instead: A/B of CPU kernel routes (comma-separated; all = the whole '
                        'switch), each on the steps and sizes it targets, --repeats rounds')
    p.add_argument('--ab-arm', help=argparse.SUPPRESS)  # one process of a per-process A/B
    p.add_argument('--title', help='markdown heading')
    args = p.parse_args(argv)
    defaults = TINY if args.tiny else FULL
    for key, val in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    for key in ('size', 'dcn_size', 'detector_size'):
        if isinstance(getattr(args, key), str):
            setattr(args, key, _size(getattr(args, key)))
    if isinstance(args.compile, str):
        args.compile = _choices(tuple(COMPILES))(args.compile)
    if args.modes is None:
        args.modes = list(DEFAULT_MODES)
    if args.detector and 'detector' not in args.modes:
        args.modes.append('detector')
    if args.repeats < 1 or args.detector_repeats < 1 or args.warmup < 0:
        p.error('--repeats and --detector-repeats must be >= 1 and --warmup >= 0')
    return args


def main(argv=None, log=print, progress=None):
    """Run (or re-render) the benchmark; the final table goes to ``log`` (stdout),
    progress lines (each row as it finishes) to ``progress`` (stderr)."""
    with warnings.catch_warnings():  # checkpoint / deprecation chatter of the references
        warnings.simplefilter('ignore')
        try:
            return _main(argv, log, progress)
        finally:
            gc.unfreeze()


def _main(argv, log, progress):
    if progress is None:
        def progress(line):
            print(line, file=sys.stderr, flush=True)
    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    if args.from_json:
        with open(args.from_json) as f:
            result = json.load(f)
        if args.title:
            result['title'] = args.title
        emit(result, args, log)
        return result
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ab_arm:  # prints the arm's medians as one JSON line
        print(json.dumps(ab.arm(args.ab_arm)))
        return None
    if args.ab:
        return run_ab(args, argv, log)
    device = torch.device(args.device)
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise SystemExit('--device cuda: CUDA is not available')
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    for name in ('cache_size_limit', 'recompile_limit'):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    meter = PeakMemory(device)
    patterns = args.only or []
    reference_impl(), ours_class(), mmcv_ops_status()  # imports first, then
    gc.collect()
    gc.freeze()  # keep the imported modules out of every later (full) collection
    notes = []
    ref_impl = reference_impl()
    if ref_impl != REFERENCE:
        notes.append(f'{mmdet_resnet()[1]}: ratios are against {ref_impl} instead')
    if ours_class()[0] is None:
        notes.append(ours_class()[1])
    if args.depth < 50 and 'dcn' in args.modes:
        notes.append(f'DCN rows use depth 50 (MMDetection has no DCN BasicBlock; '
                     f'--depth is {args.depth})')
    machine = machine_info(device)
    log(f"benchmark on {device} ({machine.get('gpu') or machine.get('cpu_model')}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; reference {ref_impl}")
    progress(f'peak memory: {meter.method}')
    progress('rows as they finish:')
    progress('| ' + ' | '.join(COLUMNS) + ' |')
    rows = []
    cfg = dict(command='python tools/benchmark.py ' + ' '.join(argv), device=args.device,
               depth=args.depth, batch=args.batch, size=list(args.size),
               dcn_batch=args.dcn_batch, dcn_size=list(args.dcn_size),
               detector_batch=args.detector_batch, detector_size=list(args.detector_size),
               warmup=args.warmup, repeats=args.repeats,
               detector_repeats=args.detector_repeats, modes=args.modes, dtypes=args.dtypes,
               channels_last=args.channels_last, compile=args.compile, only=patterns,
               tiny=args.tiny, reference=ref_impl)

    def make_result(partial):
        return dict(
            title=args.title or f"{machine.get('gpu') or 'CPU'}: R-{args.depth} "
                                f"{args.batch}x3x{args.size[0]}x{args.size[1]}",
            partial=partial, machine=machine, config=cfg, memory_method=meter.method,
            flops_method='torch.utils.flop_counter.FlopCounterMode on the reference model, '
                         'eager float32, once per setting (train: forward + backward; with_cp '
                         'rows use the same nominal count; deformable conv: its multiply-adds, '
                         'bilinear sampling not counted)',
            rows=rows, notes=notes)

    def save_partial():  # a run cut short still leaves its finished rows
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, 'w') as f:
                json.dump(make_result(True), f, indent=1)

    for mode in args.modes:
        if mode in BACKBONE_MODES:
            for dtype in args.dtypes:
                for layout in (LAYOUTS[c] for c in args.channels_last):
                    for compile_ in (COMPILES[c] for c in args.compile):
                        rows += run_backbone_group(args, device, mode, dtype, layout, compile_,
                                                   patterns, meter, progress)
                        save_partial()
        elif mode == 'dcn':
            rows += run_backbone_group(args, device, 'dcn', 'fp32', 'nchw', 'eager', patterns,
                                       meter, progress)
            save_partial()
        elif mode == 'detector':
            rows += run_detector(args, device, patterns, meter, progress)
            save_partial()
    if patterns and not rows:
        notes.append(f'no row id matched --only {",".join(patterns)} (ids are '
                     'mode/dtype/layout/compile/impl, e.g. eval/fp32/nchw/eager/ours)')
    result = make_result(False)
    emit(result, args, log)
    return result


def run_ab(args, argv, log):
    """The A/B of the CPU kernel routes (tools/bench/ab.py): JSON, markdown section 'ab'."""
    machine = machine_info(torch.device('cpu'))
    rows = ab.run(args.ab, args.repeats, log, ('train', '64x64') if args.tiny else None)
    result = dict(title=args.title or 'CPU kernel routes: A/B in one run', machine=machine,
                  command='python tools/benchmark.py ' + ' '.join(argv), rows=rows)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)
    if args.markdown:
        write_markdown(args.markdown, ab.markdown(result), args.markdown_section or 'ab')
    return result


if __name__ == '__main__':
    main()
