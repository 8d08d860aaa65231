"""Tables, markdown and machine description of a benchmark run."""
import datetime
import json
import math
import os
import platform

import torch

from .common import GRAD_SAME_FACTOR, GRAD_SAME_FLOOR, REFERENCE, mmcv_ops_status

COLUMNS = ('row', 'median ms', 'min ms', 'max ms', 'img/s', 'peak MiB', 'GFLOP/s',
           'vs mmdet', 'check')
CHECK_LABELS = {'out_max_rel_diff': 'out', 'grad_max_rel_diff': 'grad',
                'loss_max_abs_diff': 'loss'}


def _num(v, fmt):
    return '-' if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def row_cells(row):
    """The table cells of one row (also used for markdown)."""
    if 'error' in row:
        return [row['id']] + ['-'] * 7 + ['error: ' + row['error'][:200].replace('|', '/')]
    check = row.get('check')
    check_s = '-' if not check else f"{CHECK_LABELS[check['kind']]} {check['value']:.1e}"
    if row.get('grad_params_match') is False:
        check_s += ' (param sets differ)'
    elif row.get('grad_same') is not None:
        check_s += ' same' if row['grad_same'] else ' DIFFERS'
    ratio = row.get('ratio_vs_ref')
    ratio_s = '-' if ratio is None else f'{ratio:.3f}x'
    if ratio is not None and row.get('ratio_ref', REFERENCE) != REFERENCE:
        ratio_s += f" (vs {row['ratio_ref']})"
    return [row['id'], _num(row['median_s'] * 1e3, '.2f'), _num(row['min_s'] * 1e3, '.2f'),
            _num(row['max_s'] * 1e3, '.2f'), _num(row['throughput_img_s'], '.2f'),
            _num(row.get('peak_mem_mib'), '.1f'), _num(row.get('gflops_per_s'), '.2f'),
            ratio_s, check_s]


def format_row(row):
    return '| ' + ' | '.join(row_cells(row)) + ' |'


def table_lines(rows):
    return (['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
            + [format_row(r) for r in rows])


def _find(rows, rid):
    return next((r for r in rows if r['id'] == rid and 'error' not in r), None)


def detector_summary(rows):
    """One line per dtype on the detector rows: ratio, times, per-round ratios."""
    lines = []
    for dtype in ('fp32', 'bf16'):
        ours = _find(rows, f'detector/{dtype}/nchw/eager/ours')
        if ours is not None and ours.get('ratio_vs_ref') is not None:
            lines.append(f'Mask R-CNN R-50-FPN train iteration ({dtype}), ours vs MMDetection '
                         f"ResNet: {_detector_detail(ours, _find(rows, f'detector/{dtype}/nchw/eager/mmdet'))}")
    return '\n'.join(lines)


def _detector_detail(row, ref):
    """Ratio, times and batch of a detector row, with the spread of its per-round ratios
    (the implementations of a round run the same seeded iteration)."""
    h, w = row['size']
    text = (f"{row['ratio_vs_ref']:.3f}x ({row['median_s']:.3f} s/iter"
            + (f" vs {ref['median_s']:.3f}" if ref else '') + f"; {row['batch']}x3x{h}x{w}")
    if ref and ref.get('times_s') and len(ref['times_s']) == len(row.get('times_s', ())):
        paired = [a / b for a, b in zip(ref['times_s'], row['times_s'])]
        text += f'; per-round ratios {min(paired):.3f}-{max(paired):.3f}'
    return text + ')'


def _versions():
    out = {'python': platform.python_version(), 'torch': torch.__version__}
    for name in ('torchvision', 'mmengine', 'mmcv', 'mmdet'):
        try:
            out[name] = __import__(name).__version__
        except Exception as e:
            out[name] = f'unavailable ({type(e).__name__})'
    out['mmcv_ops'] = mmcv_ops_status()[1]
    return out


def machine_info(device):
    info = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
                platform=platform.platform(), device=str(device),
                cpu_model=None, logical_cpus=os.cpu_count(),
                usable_cpus=len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
                else os.cpu_count(),
                torch_threads=torch.get_num_threads(), interop_threads=None, mem_total_gib=None)
    try:
        info['interop_threads'] = torch.get_num_interop_threads()
        info['cpu_capability'] = torch.backends.cpu.get_cpu_capability()
    except Exception:
        pass
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    info['cpu_model'] = line.split(':', 1)[1].strip()
                    break
        with open('/proc/meminfo') as f:
            info['mem_total_gib'] = round(int(f.readline().split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    if device.type == 'cuda':
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 1024 ** 3, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    tf32=torch.backends.cudnn.allow_tf32,
                    cudnn_benchmark=torch.backends.cudnn.benchmark)
    info['versions'] = _versions()
    return info


def machine_lines(m):
    v = m['versions']
    lines = [f"- date: {m['date']}",
             f"- device: {m['device']}" + (f" ({m['gpu']}, {m['gpu_mem_gib']} GiB, CUDA "
                                           f"{m['cuda']}, cuDNN {m['cudnn']}, TF32 "
                                           f"{'on' if m['tf32'] else 'off'}, cudnn.benchmark "
                                           f"{'on' if m['cudnn_benchmark'] else 'off'})"
                                           if 'gpu' in m else ''),
             f"- CPU: {m.get('cpu_model')}, {m['logical_cpus']} logical CPUs "
             f"({m['usable_cpus']} usable), {m.get('mem_total_gib')} GiB RAM, "
             f"capability {m.get('cpu_capability')}",
             f"- torch threads: {m['torch_threads']} (inter-op {m.get('interop_threads')})",
             f"- {m['platform']}",
             f"- python {v['python']}, torch {v['torch']}, torchvision {v['torchvision']}, "
             f"mmengine {v['mmengine']}, mmcv {v['mmcv']} ({v['mmcv_ops']}), mmdet {v['mmdet']}"]
    return lines


def markdown(result):
    m, cfg = result['machine'], result['config']
    lines = [f"### {result['title']}", '', 'Machine:', ''] + machine_lines(m) + [
        '', f"Command: `{cfg['command']}`", '',
        f"Backbone R-{cfg['depth']}, input {cfg['batch']}x3x{cfg['size'][0]}x{cfg['size'][1]}"
        f"; DCN rows {cfg['dcn_batch']}x3x{cfg['dcn_size'][0]}x{cfg['dcn_size'][1]} (R-50-DCN, "
        f"c3-c5); {cfg['warmup']} warm-up + {cfg['repeats']} timed steps per row "
        f"({cfg.get('detector_repeats', cfg['repeats'])} for the detector rows, each round's "
        'iteration seeded alike for both), interleaved round by round. '
        '`vs mmdet` = MMDetection median / row median (> 1 is faster). '
        'Checks are against MMDetection in eager float32: `out` = max relative output '
        'difference (eval), `grad` = max abs parameter-gradient difference / max |grad| '
        '(train; `same` = the same parameters get gradients, and their norm-wise error against '
        'float64 gradients, ||g - g64|| / ||g64||, is within '
        f'max({GRAD_SAME_FACTOR:g}x MMDetection\'s in that setting, '
        f"{GRAD_SAME_FLOOR['fp32']:g} in fp32 / {GRAD_SAME_FLOOR['bf16']:g} in bf16)), "
        '`loss` = max abs loss difference in the first iteration '
        '(detector). '
        f"GFLOP/s = the model's FLOPs ({result['flops_method']}) / median. Peak memory: "
        f"{result['memory_method']}.", ''] + table_lines(result['rows'])
    detector = detector_summary(result['rows'])
    if detector:
        lines += ['', detector]
    notes = result.get('notes') or []
    if notes:
        lines += [''] + [f'- {n}' for n in notes]
    return '\n'.join(lines) + '\n'


def write_markdown(path, text, section):
    """Write ``text`` between this section's markers in ``path`` (file kept otherwise)."""
    begin, end = f'<!-- benchmark:{section}:begin -->', f'<!-- benchmark:{section}:end -->'
    block = f'{begin}\n{text}{end}'
    old = open(path).read() if os.path.exists(path) else None
    if old is not None and begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    elif old is not None:
        new = old.rstrip('\n') + '\n\n' + block + '\n'
    else:
        new = '# Benchmarks\n\n' + block + '\n'
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        f.write(new)


def emit(result, args, log):
    log('')
    for line in table_lines(result['rows']):
        log(line)
    detector = detector_summary(result['rows'])
    if detector:
        log(detector)
    log(f"Peak memory: {result['memory_method']}")
    log(f"FLOPs: {result['flops_method']}")
    for n in result.get('notes') or []:
        log(f'Note: {n}')
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)
        log(f'wrote {args.out}')
    if args.markdown:
        section = args.markdown_section or result['machine']['device'].split(':')[0]
        write_markdown(args.markdown, markdown(result), section)
        log(f'wrote {args.markdown} (section {section})')
