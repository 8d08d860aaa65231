"""tools/benchmark.py in tiny mode: the table is right (not the timings).

One CLI run covers eval / train / train_cp x fp32 / bf16 x channels_last off / on
plus the DCN rows; its stdout table, JSON and markdown are checked against each
other, its statistics and ratios against its raw timings, and its FLOP count
against an independent count from the convolutions' shapes.
"""
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys

import pytest
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, 'tools', 'benchmark.py')
# Loaded from its path: putting tools/ on sys.path would shadow names like `test`.
_spec = importlib.util.spec_from_file_location('resnet_backbone_benchmark_tool', TOOL)
benchmark = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = benchmark
_spec.loader.exec_module(benchmark)

MODES = ('eval', 'train', 'train_cp')
IMPLS = {'eval': ('mmdet', 'ours', 'ours-infer', 'torchvision', 'torchvision-fused'),
         'train': ('mmdet', 'ours', 'torchvision'), 'train_cp': ('mmdet', 'ours')}
DCN_IMPLS = ('mmdet', 'ours-torchvision', 'ours-mmcv')
TINY_SIZE, TINY_DEPTH, REPEATS = (64, 64), 18, 2
MARKED = ('# Hand-written\n\nkept above\n\n<!-- benchmark:cpu:begin -->\nOLD TABLE\n'
          '<!-- benchmark:cpu:end -->\n\nkept below\n')


def quiet_main(argv):
    """benchmark.main in this process, one thread (the timings are not checked, and
    one thread keeps a busy 2-core machine from thrashing), output collected."""
    lines, threads = [], torch.get_num_threads()
    try:
        result = benchmark.main(argv + ['--threads', '1'], log=lines.append,
                                progress=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    return result, lines


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp('bench')
    out, md = d / 'tiny.json', d / 'tiny.md'
    md.write_text(MARKED)
    proc = subprocess.run(
        [sys.executable, TOOL, '--tiny', '--modes', 'eval,train,train_cp,dcn', '--threads', '1',
         '--out', str(out), '--markdown', str(md)],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout, md.read_text()


def expected_ids():
    ids = [f'{m}/{d}/{l}/eager/{i}' for m in MODES for d in ('fp32', 'bf16')
           for l in ('nchw', 'cl') for i in IMPLS[m]]
    return ids + [f'dcn/fp32/nchw/eager/{i}' for i in DCN_IMPLS]


def by_id(result):
    return {r['id']: r for r in result['rows']}


def test_every_requested_row_is_there_and_ran(tiny):
    result, _, _ = tiny
    assert [r['id'] for r in result['rows']] == expected_ids()
    assert result['partial'] is False
    for row in result['rows']:
        assert 'error' not in row, (row['id'], row.get('error'))
        assert row['batch'] == 1
        assert row['size'] == ([96, 96] if row['mode'] == 'dcn' else list(TINY_SIZE))
        assert row['depth'] == (50 if row['mode'] == 'dcn' else TINY_DEPTH)


def test_statistics_and_ratios_follow_from_the_timings(tiny):
    result, _, _ = tiny
    rows = by_id(result)
    for row in result['rows']:
        times = row['times_s']
        assert len(times) == row['repeats'] == REPEATS
        assert row['median_s'] == pytest.approx(statistics.median(times), rel=1e-12)
        assert row['min_s'] == min(times) and row['max_s'] == max(times)
        assert row['min_s'] <= row['median_s'] <= row['max_s']
        assert row['throughput_img_s'] == pytest.approx(row['batch'] / row['median_s'])
        ref = rows[row['id'].rsplit('/', 1)[0] + '/mmdet']
        assert row['ratio_ref'] == 'mmdet'
        assert row['ratio_vs_ref'] == pytest.approx(ref['median_s'] / row['median_s'], rel=1e-12)
        assert row['gflops_per_s'] == pytest.approx(row['gflop'] / row['median_s'], rel=1e-12)
        assert row['peak_mem_mib'] >= 0
    for rid, row in rows.items():
        if rid.endswith('/mmdet'):
            assert row['ratio_vs_ref'] == 1.0


def conv_flops(depth, size):
    """Independent count: 2 * N * Cout * Hout * Wout * Cin/groups * kh * kw per conv
    of torchvision's ResNet (forward), and which convs get a backward in a train
    step with the stem and layer1 frozen (weight grad in layer2-4, input grad
    unless the conv reads layer1's output, which needs none)."""
    import torchvision
    with torch.device('meta'):  # shapes only
        net = getattr(torchvision.models, f'resnet{depth}')()
    found = []

    def hook(name):
        def fn(mod, inp, out):
            found.append((name, 2 * out.numel() * mod.in_channels // mod.groups
                          * mod.kernel_size[0] * mod.kernel_size[1]))
        return fn
    for name, mod in net.named_modules():
        if isinstance(mod, nn.Conv2d):
            mod.register_forward_hook(hook(name))
    with torch.no_grad():
        net(torch.zeros(1, 3, *size, device='meta'))
    forward = sum(f for _, f in found)
    backward = 0
    for name, f in found:
        if name.split('.')[0] in ('layer2', 'layer3', 'layer4'):
            backward += f  # weight gradient
            if name not in ('layer2.0.conv1', 'layer2.0.downsample.0'):
                backward += f  # input gradient
    return forward, forward + backward


def test_flop_count_equals_an_independent_count(tiny):
    result, _, _ = tiny
    fwd, train = conv_flops(TINY_DEPTH, TINY_SIZE)
    for row in result['rows']:
        if row['mode'] == 'eval':
            assert row['gflop'] * 1e9 == pytest.approx(fwd, rel=1e-9), row['id']
        elif row['mode'] in ('train', 'train_cp'):
            assert row['gflop'] * 1e9 == pytest.approx(train, rel=1e-9), row['id']
        else:  # DCN: forward + backward of R-50-DCN, more than the plain forward
            assert row['gflop'] * 1e9 > conv_flops(50, (96, 96))[0]


def test_correctness_checks_are_reported(tiny):
    result, _, _ = tiny
    for row in result['rows']:
        check = row['check']
        assert check['against'] == 'mmdet eager fp32'
        assert math.isfinite(check['value'])
        exact = row['dtype'] == 'fp32'
        if row['mode'] == 'eval':
            assert check['kind'] == 'out_max_rel_diff'
            assert check['value'] == row['out_max_rel_diff']
            assert check['value'] <= (1e-4 if exact else 0.1)
        else:
            assert check['kind'] == 'grad_max_rel_diff'
            assert row['grad_params_match'] is True
            assert check['value'] == row['grad_max_rel_diff']
            assert row['grad_max_abs_diff'] >= 0
            assert check['value'] <= (1e-4 if exact else 1.0)
            # against float64: the row's error beside the reference's in its setting
            ref = by_id(result)[row['id'].rsplit('/', 1)[0] + '/mmdet']
            assert row['ref_grad_err_fp64'] == ref['grad_err_fp64']
            assert row['ref_grad_norm_err_fp64'] == ref['grad_norm_err_fp64']
            assert 0 <= row['grad_err_fp64'] <= (1e-4 if exact else 1.0)
            assert 0 <= row['grad_norm_err_fp64'] <= (1e-5 if exact else 0.1)
            assert row['grad_same'] == (row['grad_norm_err_fp64'] <= max(
                2 * ref['grad_norm_err_fp64'], 1e-4 if exact else 3e-2))
            if exact:
                assert row['grad_same'] is True
    assert by_id(result)['eval/fp32/nchw/eager/mmdet']['out_max_rel_diff'] == 0.0


def parse_table(text):
    """{row id: cells} of the last table printed."""
    lines = text.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith('| row |'))
    assert lines[start + 1].startswith('|---')
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith('| '):
            break
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        rows[cells[0]] = cells[1:]
    return [c.strip() for c in lines[start].strip().strip('|').split('|')], rows


def close(cell, value, decimals):
    return abs(float(cell) - value) <= 0.51 * 10 ** -decimals + 1e-9


def check_table_matches(rows, table):
    assert list(table) == [r['id'] for r in rows]
    for row in rows:
        cells = table[row['id']]
        assert len(cells) == 8
        med, lo, hi, ips, mem, gfs, ratio, check = cells
        assert close(med, row['median_s'] * 1e3, 2) and close(lo, row['min_s'] * 1e3, 2)
        assert close(hi, row['max_s'] * 1e3, 2) and close(ips, row['throughput_img_s'], 2)
        assert close(mem, row['peak_mem_mib'], 1)
        assert gfs == '-' if row['gflops_per_s'] is None else close(gfs, row['gflops_per_s'], 2)
        assert ratio.endswith('x') and close(ratio[:-1], row['ratio_vs_ref'], 3)
        label, value, *verdict = check.split()
        assert verdict == ([] if row.get('grad_same') is None else
                           ['same' if row['grad_same'] else 'DIFFERS'])
        assert label == {'out_max_rel_diff': 'out', 'grad_max_rel_diff': 'grad',
                         'loss_max_abs_diff': 'loss'}[row['check']['kind']]
        assert float(value) == pytest.approx(row['check']['value'], rel=0.06, abs=1e-30)


def test_stdout_table_matches_json(tiny):
    result, stdout, _ = tiny
    header, table = parse_table(stdout)
    assert header == list(benchmark.COLUMNS)
    check_table_matches(result['rows'], table)
    assert 'acceptance' not in result  # the tool measures; docs/benchmarks.md states claims
    assert result['memory_method'] in stdout


def test_markdown_has_machine_table_and_keeps_the_rest(tiny):
    result, _, md = tiny
    assert md.startswith('# Hand-written\n\nkept above\n')
    assert md.endswith('<!-- benchmark:cpu:end -->\n\nkept below\n')
    assert 'OLD TABLE' not in md
    assert md.count('<!-- benchmark:cpu:begin -->') == 1
    with open('/proc/cpuinfo') as f:
        model = next((line.split(':', 1)[1].strip() for line in f
                      if line.startswith('model name')), None)
    if model:
        assert model in md
    for fact in (f'torch {torch.__version__}', f"{os.cpu_count()} logical CPUs",
                 'torch threads: 1', 'date: ',
                 result['memory_method']):
        assert fact in md
    _, table = parse_table(md)
    check_table_matches(result['rows'], table)
    m = result['machine']
    assert m['versions']['mmdet'] in md and m['versions']['mmcv'] in md


def test_only_filter_keeps_the_reference_and_from_json_rerenders(tmp_path):
    out = tmp_path / 'r.json'
    result, lines = quiet_main(['--tiny', '--modes', 'eval', '--dtypes', 'fp32',
                                '--channels-last', 'off', '--only', '*/ours-infer',
                                '--out', str(out)])
    assert [r['id'] for r in result['rows']] == ['eval/fp32/nchw/eager/mmdet',
                                                 'eval/fp32/nchw/eager/ours-infer']
    assert result['config']['only'] == ['*/ours-infer']
    assert json.loads(out.read_text())['rows'] == json.loads(json.dumps(result['rows']))
    md = tmp_path / 'r.md'
    again, lines2 = quiet_main(['--from-json', str(out), '--markdown', str(md)])
    assert [line for line in lines2 if line.startswith('| ')] == \
        [line for line in lines if line.startswith('| ')]
    assert md.read_text().startswith('# Benchmarks\n\n<!-- benchmark:cpu:begin -->')


def test_detector_rows(tmp_path):
    result, lines = quiet_main(['--tiny', '--modes', 'detector', '--detector-size', '64x64',
                                '--warmup', '0', '--detector-repeats', '3'])
    rows = result['rows']
    assert [r['id'] for r in rows] == ['detector/fp32/nchw/eager/mmdet',
                                       'detector/fp32/nchw/eager/ours']
    ref, ours = rows
    for row in rows:
        assert 'error' not in row, row.get('error')
        assert row['config'].endswith('mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py')
        assert row['size'] == [64, 64] and len(row['times_s']) == row['repeats'] == 3
        assert row['min_s'] <= row['median_s'] <= row['max_s']
        assert {'loss_rpn_cls', 'loss_cls', 'loss_bbox', 'loss_mask'} <= set(
            row['losses_first_iter'])
    assert ours['ratio_vs_ref'] == pytest.approx(ref['median_s'] / ours['median_s'])
    assert ours['loss_max_abs_diff'] < 1e-3
    _, table = parse_table('\n'.join(lines))
    check_table_matches(rows, table)
    paired = [a / b for a, b in zip(ref['times_s'], ours['times_s'])]
    assert (f"Mask R-CNN R-50-FPN train iteration (fp32), ours vs MMDetection ResNet: "
            f"{ours['ratio_vs_ref']:.3f}x ({ours['median_s']:.3f} s/iter vs "
            f"{ref['median_s']:.3f}; 1x3x64x64; per-round ratios {min(paired):.3f}-"
            f"{max(paired):.3f})") in lines


def test_detector_rows_default_to_the_configs_training_scale():
    """The zoo config resizes to 1333x800: the default synthetic batch is that size,
    two images, on CPU as on CUDA; --tiny and --detector-size override it."""
    for device in ('cpu', 'cuda'):  # parsing only: no CUDA needed
        args = benchmark.parse_args(['--device', device, '--detector'])
        assert (args.detector_batch, args.detector_size) == (2, (800, 1333))
        assert args.detector_repeats >= 5 and 'detector' in args.modes
    assert benchmark.parse_args(['--detector', '--tiny']).detector_size == (128, 128)
    assert benchmark.parse_args(['--detector-size', '320x320']).detector_size == (320, 320)


def test_detector_iterations_are_seeded_alike_per_round():
    """The k-th iteration of each implementation draws the same random numbers
    (the same sampled RoIs); successive iterations draw different ones."""
    class Model:
        def train_step(self, data, optim):
            return torch.rand(3)
    runners = [benchmark.DetectorRunner(impl, Model(), None, {}, torch.device('cpu'))
               for impl in ('mmdet', 'ours')]
    draws = {r.impl: [] for r in runners}
    for _ in range(3):
        for r in runners:
            draws[r.impl].append(r.step())
            torch.rand(5)  # anything else between the steps
    for a, b in zip(draws['mmdet'], draws['ours']):
        assert torch.equal(a, b)
    assert not torch.equal(draws['ours'][0], draws['ours'][1])


def test_ab_of_a_cpu_route_runs_both_arms_in_one_run(tmp_path):
    """--ab: each route on and off in alternation; the gain is the ratio of the medians,
    and the markdown says which routes reach 3%."""
    out, md = tmp_path / 'ab.json', tmp_path / 'ab.md'
    result, lines = quiet_main(['--ab', 'winograd,all', '--tiny', '--repeats', '3',
                                '--out', str(out), '--markdown', str(md)])
    rows = result['rows']
    assert [(r['route'], r['step'], r['size']) for r in rows] == [
        ('winograd', 'train', '64x64'), ('all', 'train', '64x64')]
    for row in rows:
        assert row['rounds'] == 3 and row['on_s'] > 0 and row['off_s'] > 0
        assert row['gain'] == pytest.approx(row['off_s'] / row['on_s'] - 1)
    assert json.loads(out.read_text())['rows'] == json.loads(json.dumps(rows))
    text = md.read_text()
    assert '<!-- benchmark:ab:begin -->' in text and '| winograd | train | 64x64 |' in text
    from resnet_backbone import cpu
    assert cpu.enabled() and all(cpu.path_on(r) for r in cpu.PATHS)  # all back on


def test_ab_of_a_memory_route_runs_each_arm_in_its_own_processes(tmp_path):
    """--ab reuse: each arm in processes of its own, beside MMDetection's ResNet; the row
    gives both arms' ratio to MMDetection."""
    md = tmp_path / 'ab.md'
    result, _ = quiet_main(['--ab', 'reuse', '--tiny', '--repeats', '1', '--markdown', str(md)])
    (row,) = result['rows']
    assert (row['route'], row['rounds']) == ('reuse', 1)
    assert row['on_vs_mmdet'] > 0 and row['off_vs_mmdet'] > 0
    assert row['gain'] == pytest.approx(row['off_s'] / row['on_s'] - 1)
    assert 'on / off vs MMDetection' in md.read_text()
    with pytest.raises(RuntimeError, match=r"A/B arm reuse:on:eval:bogus failed[\s\S]*KeyError"):
        benchmark.ab._per_process('reuse', 'eval', 'bogus', 1)  # the arm's error is shown


def test_cpu_peak_memory_counts_what_the_step_holds():
    meter = benchmark.PeakMemory(torch.device('cpu'))
    keep = []

    def step():  # 3 x 8 MiB, then a 4 MiB copy while they live: 28 MiB at the peak
        blocks = [torch.ones(2, 1024, 1024) for _ in range(3)]
        keep.append(blocks[0][0].clone())
        del blocks
        torch.ones(1024, 1024)
    assert meter.measure(step) == pytest.approx(28.0, abs=0.1)
    assert 'torch.profiler' in meter.method


def test_bad_arguments_are_refused():
    for argv in (['--size', '64'], ['--dtypes', 'fp16'], ['--modes', 'eval,foo'],
                 ['--ab', 'bogus']):
        with pytest.raises(SystemExit) as e:
            benchmark.parse_args(argv)
        assert e.value.code == 2


def test_gpu_check_script_parses():
    proc = subprocess.run(['bash', '-n', os.path.join(ROOT, 'tools', 'gpu_check.sh')],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.cuda
def test_tiny_on_cuda():
    lines = []
    result = benchmark.main(['--tiny', '--device', 'cuda', '--modes', 'eval,train,train_cp',
                             '--channels-last', 'off'], log=lines.append,
                            progress=lambda line: None)
    rows = by_id(result)
    for rid in ('eval/fp32/nchw/eager/ours', 'eval/bf16/nchw/eager/ours-infer',
                'train/fp32/nchw/eager/ours', 'train_cp/bf16/nchw/eager/ours'):
        row = rows[rid]
        assert 'error' not in row, row.get('error')
        assert row['min_s'] <= row['median_s'] <= row['max_s'] and row['peak_mem_mib'] > 0
        if row['dtype'] == 'fp32':
            assert row['check']['value'] <= 1e-4
    assert result['machine']['gpu'] == torch.cuda.get_device_name()
    assert 'max_memory_allocated' in result['memory_method']
