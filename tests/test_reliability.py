"""Reliability (issue 8): safe resume, atomic checkpoints, kill/resume, CPU DDP, SyncBN
fallback, and the bad-input table of docs/bad_inputs.md.

The training tests run real processes and are the slow part (about 1-2 minutes
together on 2 cores); everything else takes seconds.
"""
import copy
import json
import os
import os.path as osp
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
import torch
from helpers import load_json

import resnet_backbone.runtime as rt
from resnet_backbone import ResNetBackbone
from resnet_backbone.checkpoint import CheckpointError, load_checkpoint

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TRAIN = osp.join(ROOT, 'tools', 'train.py')
DIST_TRAIN = osp.join(ROOT, 'tools', 'dist_train.sh')
DEMO_CONFIG = osp.join(ROOT, 'configs', 'demo', 'mask_rcnn_r18_shapes.py')


def child_env(**extra):
    env = dict(os.environ)
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    env.setdefault('OMP_NUM_THREADS', '1')
    env.update({k: str(v) for k, v in extra.items()})
    return env


# --------------------------------------------------------------------------------------------
# A tiny mmengine training run (no detector): fast checkpoints for save/resume mechanics.
TOY_RUNNER = '''
import os, sys, time, torch, torch.nn as nn
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch.utils.data import Dataset
import resnet_backbone.runtime  # noqa: F401  (registers SafeCheckpointsHook)


class Toy(BaseModel):
    def __init__(self, sync_bn=False):
        super().__init__()
        norm = nn.SyncBatchNorm(64) if sync_bn else nn.Identity()
        self.net = nn.Sequential(nn.Linear(8, 64), norm, nn.ReLU(), nn.Linear(64, 1))
        self.register_buffer('ballast', torch.zeros(256, 1024))  # 1 MiB: saving takes a moment

    def forward(self, x, mode='loss'):
        x = torch.stack(x) if isinstance(x, list) else x
        return {'loss': (self.net(x) - 1).pow(2).mean()}


class Data(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return dict(x=torch.linspace(-1, 1, 8) * (i + 1))


class RecordStart(Hook):
    def before_train(self, runner):
        with open(os.path.join(runner.work_dir, 'started_at.txt'), 'a') as f:
            f.write(f'{runner.epoch}\\n')


def make_runner(work_dir, max_epochs=3, resume=False, sync_bn=False, hooks=(), safe=True,
                **runner_kwargs):
    # safe: SafeCheckpointsHook, as this project's configs have it (atomic saves, safe resume)
    return Runner(**runner_kwargs,
        model=Toy(sync_bn), work_dir=work_dir, resume=resume,
        train_dataloader=dict(dataset=Data(), batch_size=2, collate_fn=dict(type='default_collate'),
                              sampler=dict(type='DefaultSampler', shuffle=True)),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        param_scheduler=dict(type='MultiStepLR', milestones=[2], by_epoch=True),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1),
                           logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=[RecordStart(), *([dict(type='SafeCheckpointsHook')] if safe else []),
                      *hooks], randomness=dict(seed=0), log_level='WARNING',
        experiment_name=f'toy_{os.getpid()}_{time.time_ns()}')
'''


@pytest.fixture
def toy(tmp_path):
    (tmp_path / 'toy_runner.py').write_text(TOY_RUNNER)
    sys.path.insert(0, str(tmp_path))
    try:
        import importlib
        import toy_runner
        yield importlib.reload(toy_runner)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop('toy_runner', None)


# ---------------------------------------------------------------------------- safe loading
def test_runner_checkpoint_needs_only_the_allowlist(toy, tmp_path):
    """torch >= 2.6 loads mmengine checkpoints with weights_only=True, given our allowlist
    (installed by SafeCheckpointsHook before the run)."""
    toy.make_runner(str(tmp_path / 'wd'), max_epochs=2).train()
    path = str(tmp_path / 'wd' / 'epoch_2.pth')
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    assert _globals_beyond_torch_defaults(path) <= set(rt.MMENGINE_SAFE_GLOBAL_NAMES)
    ckpt = torch.load(path, map_location='cpu')  # the default: weights_only=True on torch>=2.6
    from mmengine.logging import HistoryBuffer
    assert isinstance(ckpt['message_hub']['log_scalars']['train/loss'], HistoryBuffer)
    assert ckpt['meta']['epoch'] == 2
    # safe loading is still on for everything else
    torch.save({'f': os.system}, tmp_path / 'other.pth')
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / 'other.pth')


def test_import_changes_nothing_in_torch_or_mmengine():
    """``import resnet_backbone`` only registers names; the runtime patch is install()."""
    probe = textwrap.dedent('''
        import torch, mmengine.runner.checkpoint as ck, mmengine.runner.runner as rn
        before = (rn.save_checkpoint, rn.find_latest_checkpoint, torch.serialization.get_safe_globals())
        import resnet_backbone, resnet_backbone.runtime as rt
        after = (rn.save_checkpoint, rn.find_latest_checkpoint, torch.serialization.get_safe_globals())
        assert after == before and not rt.atomic_checkpoints_installed(), after
        rt.install()
        assert rt.atomic_checkpoints_installed() and torch.serialization.get_safe_globals()
        print('ok')
    ''')
    proc = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True,
                          env=child_env(), timeout=120)
    assert proc.stdout.strip().endswith('ok'), proc.stderr[-2000:]


def _globals_beyond_torch_defaults(path):
    """What a checkpoint needs beyond torch's own allowlist (ours removed meanwhile)."""
    ser = torch.serialization
    saved = ser.get_safe_globals()
    ser.clear_safe_globals()
    try:
        return set(ser.get_unsafe_globals_in_checkpoint(path))
    finally:
        ser.add_safe_globals(saved)


class _GetattrPayload:
    def __init__(self, target, name):
        self.target, self.name = target, name

    def __reduce__(self):
        return (getattr, (self.target, self.name))


@pytest.mark.parametrize('target,name', [(np.ndarray, 'tofile'), ('HistoryBuffer', '__init__'),
                                         ('HistoryBuffer', '_set_default_statistics')])
def test_allowlisted_getattr_reaches_nothing_else(tmp_path, target, name):
    from mmengine.logging import HistoryBuffer
    target = HistoryBuffer if target == 'HistoryBuffer' else target
    torch.save({'x': _GetattrPayload(target, name)}, tmp_path / 'evil.pth')
    with pytest.raises(pickle.UnpicklingError, match='refusing getattr'):
        torch.load(tmp_path / 'evil.pth')


# ---------------------------------------------------------------------- atomic checkpoints
SLOW_WRITE = '''
import io, sys, time, torch
from mmengine.fileio.backends.local_backend import LocalBackend
marker = sys.argv[2]
calls = [0]


def write_half_then_hang(f, data):
    f.write(data[:len(data) // 2])
    f.flush()
    open(marker, 'w').write('half written')
    time.sleep(120)
    f.write(data[len(data) // 2:])


original_save = torch.save


def slow_torch_save(obj, f, *args, **kwargs):
    """The second checkpoint write stops half-way and waits to be killed."""
    if isinstance(f, io.BytesIO):  # mmengine's writer serialises to memory first
        return original_save(obj, f, *args, **kwargs)
    calls[0] += 1
    if calls[0] < 2:
        return original_save(obj, f, *args, **kwargs)
    buf = io.BytesIO()
    original_save(obj, buf, *args, **kwargs)
    write_half_then_hang(f, buf.getvalue())


original_put = LocalBackend.put


def slow_put(self, obj, filepath):
    """mmengine's own writer: serialises to memory, then writes the file in place."""
    if not str(filepath).endswith('.pth'):
        return original_put(self, obj, filepath)
    calls[0] += 1
    if calls[0] < 2:
        return original_put(self, obj, filepath)
    with open(filepath, 'wb') as f:
        write_half_then_hang(f, obj)


torch.save = slow_torch_save
LocalBackend.put = slow_put
'''


def _kill_when(proc, marker, timeout=120):
    deadline = time.time() + timeout
    while not osp.exists(marker):
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ''
            raise AssertionError(f'child exited ({proc.returncode}) before the marker:\n{out}')
        if time.time() > deadline:
            proc.kill()
            raise AssertionError('timed out waiting for the child')
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize('writer', ['atomic', 'mmengine'])
def test_kill_during_checkpoint_write(toy, tmp_path, writer):
    """SIGKILL while epoch_2.pth is half written: resume continues from epoch_1.pth.

    ``atomic``: our writer leaves only a hidden temporary file, never a partial
    ``epoch_2.pth``. ``mmengine``: mmengine's own writer (for contrast) leaves a
    truncated ``epoch_2.pth``; resume still skips it, because it checks files.
    """
    wd, marker = tmp_path / 'wd', tmp_path / 'marker'
    script = tmp_path / 'child.py'
    script.write_text(SLOW_WRITE + textwrap.dedent(f'''
        import toy_runner, resnet_backbone.runtime as rt
        # mmengine: no SafeCheckpointsHook, so mmengine's own writer
        toy_runner.make_runner({str(wd)!r}, max_epochs=3, safe={writer == 'atomic'}).train()
        assert rt.atomic_checkpoints_installed() == {writer == 'atomic'}
    '''))
    proc = subprocess.Popen([sys.executable, str(script), 'x', str(marker)], cwd=tmp_path,
                            env=child_env(PYTHONPATH=f'{tmp_path}{os.pathsep}{ROOT}'),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    _kill_when(proc, str(marker))
    files = sorted(os.listdir(wd))
    assert (wd / 'last_checkpoint').read_text().endswith('epoch_1.pth')
    assert rt.is_complete_checkpoint(str(wd / 'epoch_1.pth'))
    temporaries = [f for f in files if f.startswith('.epoch_2.pth.') and f.endswith('.tmp')]
    if writer == 'atomic':
        assert 'epoch_2.pth' not in files and len(temporaries) == 1, files
    else:
        assert 'epoch_2.pth' in files, files
        assert 'zip' in rt.checkpoint_problem(str(wd / 'epoch_2.pth'))
    assert rt.find_latest_checkpoint(str(wd)).endswith('epoch_1.pth')

    runner = toy.make_runner(str(wd), max_epochs=3, resume=True)
    runner.train()
    assert (wd / 'started_at.txt').read_text().split() == ['0', '1']  # fresh, then resumed at 1
    assert rt.is_complete_checkpoint(str(wd / 'epoch_3.pth'))
    assert not [f for f in os.listdir(wd) if f.endswith('.tmp')]  # stale temporaries removed


def test_atomic_checkpoints_get_the_mode_of_a_plainly_written_file(tmp_path):
    """Not the 0600 of the temporary file: others on a shared machine can read them."""
    for umask in (0o022, 0o077):
        old = os.umask(umask)
        try:
            rt.atomic_write(str(tmp_path / f'{umask:o}.pth'), lambda f: f.write(b'x'))
            with open(tmp_path / f'{umask:o}.plain', 'wb') as f:
                f.write(b'x')
        finally:
            os.umask(old)
        mode = os.stat(tmp_path / f'{umask:o}.pth').st_mode & 0o777
        assert mode == os.stat(tmp_path / f'{umask:o}.plain').st_mode & 0o777 == 0o666 & ~umask


def test_resume_skips_partial_and_dangling_files(toy, tmp_path):
    wd = tmp_path / 'wd'
    toy.make_runner(str(wd), max_epochs=2).train()
    good = str(wd / 'epoch_2.pth')
    data = open(good, 'rb').read()
    assert rt.find_latest_checkpoint(str(wd)) == good
    # a kill between os.replace of epoch_3.pth and the update of last_checkpoint
    rt.atomic_write(str(wd / 'epoch_3.pth'), lambda f: f.write(data))
    assert rt.find_latest_checkpoint(str(wd)).endswith('epoch_3.pth')
    os.remove(wd / 'epoch_3.pth')
    # last_checkpoint truncated to nothing by a kill while mmengine rewrote it
    (wd / 'last_checkpoint').write_text('')
    assert rt.find_latest_checkpoint(str(wd)) == good
    # last_checkpoint naming a truncated file, or one that is gone
    (wd / 'epoch_4.pth').write_bytes(data[:len(data) // 3])
    (wd / 'last_checkpoint').write_text(str(wd / 'epoch_4.pth'))
    assert rt.find_latest_checkpoint(str(wd)) == good
    (wd / 'last_checkpoint').write_text(str(wd / 'epoch_9.pth'))
    assert rt.find_latest_checkpoint(str(wd)) == good
    # a byte flipped inside the zip: CRC mismatch
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF
    (wd / 'epoch_5.pth').write_bytes(bytes(flipped))
    assert rt.checkpoint_problem(str(wd / 'epoch_5.pth'))
    assert rt.find_latest_checkpoint(str(wd)) == good
    # and mmengine's Runner resumes from it
    runner = toy.make_runner(str(wd), max_epochs=3, resume=True)
    runner.train()
    assert (wd / 'started_at.txt').read_text().split() == ['0', '2']


@pytest.mark.parametrize('failure', ['ENOSPC', 'EACCES', 'exception'])
def test_a_save_that_fails_half_way_keeps_the_previous_checkpoint(toy, tmp_path, monkeypatch,
                                                                  failure):
    """Disk full, permission denied, or an exception in the middle of writing epoch_2.pth:
    training stops with an error that names the file and the cause, epoch_1.pth stays the
    loadable last checkpoint, and no temporary file is left behind."""
    import errno
    import resnet_backbone.runtime.atomic as atomic
    wd = tmp_path / 'wd'
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        if not (isinstance(obj, dict) and obj.get('meta', {}).get('epoch') == 2):
            return real_save(obj, f, *args, **kwargs)
        f.write(b'PK\x03\x04 half a checkpoint')
        if failure == 'exception':
            raise RuntimeError('serialisation failed')
        raise OSError(getattr(errno, failure), os.strerror(getattr(errno, failure)))

    monkeypatch.setattr(atomic.torch, 'save', failing_save)
    runner = toy.make_runner(str(wd), max_epochs=3)
    expected = {'ENOSPC': 'No space left on device', 'EACCES': 'Permission denied',
                'exception': 'serialisation failed'}[failure]
    with pytest.raises((OSError, RuntimeError)) as info:
        runner.train()
    message = str(info.value) + ' '.join(getattr(info.value, '__notes__', []))
    assert str(wd / 'epoch_2.pth') in message and expected in message
    assert 'previous file there is unchanged' in message or 'nothing written' in message
    assert sorted(os.listdir(wd)) == sorted(
        n for n in os.listdir(wd) if not n.endswith('.tmp'))  # no temporary file left
    assert not (wd / 'epoch_2.pth').exists()
    assert (wd / 'last_checkpoint').read_text().endswith('epoch_1.pth')
    assert rt.find_latest_checkpoint(str(wd)).endswith('epoch_1.pth')
    rt.install()
    assert torch.load(str(wd / 'epoch_1.pth'), map_location='cpu')['meta']['epoch'] == 1


def test_old_format_checkpoints_are_loaded_before_resume_picks_them(toy, tmp_path):
    """torch's old (non-zip) format has no CRCs: a truncated one passes the file check, so
    the resume check loads it once and skips it when that fails."""
    wd = tmp_path / 'wd'
    toy.make_runner(str(wd), max_epochs=1).train()
    rt.install()
    ckpt = torch.load(str(wd / 'epoch_1.pth'), map_location='cpu')
    torch.save(ckpt, wd / 'epoch_2.pth', _use_new_zipfile_serialization=False)
    assert rt.checkpoint_problem(str(wd / 'epoch_2.pth')) is None  # the cheap check says yes
    assert rt.resume_problem(str(wd / 'epoch_2.pth')) is None
    (wd / 'last_checkpoint').write_text(str(wd / 'epoch_2.pth'))
    assert rt.find_latest_checkpoint(str(wd)).endswith('epoch_2.pth')
    data = (wd / 'epoch_2.pth').read_bytes()
    (wd / 'epoch_2.pth').write_bytes(data[:len(data) // 2])
    assert rt.checkpoint_problem(str(wd / 'epoch_2.pth')) is None
    assert 'old-format' in rt.resume_problem(str(wd / 'epoch_2.pth'))
    assert rt.find_latest_checkpoint(str(wd)).endswith('epoch_1.pth')


def test_nothing_complete_means_a_fresh_start(toy, tmp_path):
    wd = tmp_path / 'wd'
    wd.mkdir()
    (wd / 'epoch_1.pth').write_bytes(b'PK\x03\x04 truncated')
    (wd / 'last_checkpoint').write_text(str(wd / 'epoch_1.pth'))
    assert rt.find_latest_checkpoint(str(wd)) is None


# --------------------------------------------------------- detector training: kill, resume
def _demo_data(root):
    from resnet_backbone.demo import make_shapes_dataset
    make_shapes_dataset(str(root), num_train=8, num_val=2, size=128, seed=0)
    return str(root).rstrip('/') + '/'


def _tiny_demo_config(path, max_iters, ckpt_interval, backbone='dict()', **overrides):
    """The demo config (Mask R-CNN R-18) made small: 64 px images, batch 2, fewer RoIs,
    no validation; deterministic; our runtime hooks and the safe image loader."""
    lines = [
        f'_base_ = {DEMO_CONFIG!r}',
        "custom_imports = dict(imports=['resnet_backbone', 'resnet_backbone.evaluation', "
        "'resnet_backbone.runtime', 'resnet_backbone.runtime.data'], allow_failed_imports=False)",
        f'train_cfg = dict(max_iters={max_iters}, val_interval=10000)',
        'val_dataloader = None', 'val_cfg = None', 'val_evaluator = None',
        'test_dataloader = None', 'test_cfg = None', 'test_evaluator = None',
        "train_pipeline = [dict(type='SafeLoadImageFromFile'), dict(type='LoadAnnotations', "
        "with_bbox=True, with_mask=True), dict(type='Resize', scale=(64, 64), keep_ratio=True), "
        "dict(type='RandomFlip', prob=[0.25, 0.25], direction=['horizontal', 'vertical']), "
        "dict(type='PackDetInputs')]",
        'train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))',
        f'model = dict(backbone={backbone}, train_cfg=dict(rpn_proposal=dict(nms_pre=200, '
        'max_per_img=50), rcnn=dict(sampler=dict(num=32))))',
        "default_hooks = dict(logger=dict(type='LoggerHook', interval=1), checkpoint=dict("
        f"type='CheckpointHook', by_epoch=False, interval={ckpt_interval}, max_keep_ckpts=3))",
        'log_processor = dict(window_size=3)',
        'randomness = dict(seed=0, deterministic=True)',
        "custom_hooks = [dict(type='DeterministicResumeHook'), dict(type='SyncBNFallbackHook'),"
        " dict(type='SkippedImagesHook')]",
    ] + [f'{k} = {v}' for k, v in overrides.items()]
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


def _logged_losses(work_dir):
    """{iteration: {loss name: value}} from every run's scalars.json in work_dir."""
    out = {}
    for stamp in sorted(os.listdir(work_dir)) if osp.isdir(work_dir) else []:
        out.update(_logged_losses_in(osp.join(work_dir, stamp)))
    return out


def _logged_losses_in(run_dir):
    """{iteration: {loss name: value}} from one run's scalars.json (none yet: {})."""
    out = {}
    f = osp.join(run_dir, 'vis_data', 'scalars.json')
    if osp.isfile(f):
        with open(f) as lines:
            for line in lines:
                rec = json.loads(line)
                if 'loss' in rec:
                    out[rec['step']] = {k: v for k, v in rec.items() if k.startswith('loss')}
    return out


def _train_then_kill(cfg, work_dir, env, ready, what, timeout=240):
    """Start tools/train.py and SIGKILL its process group as soon as ``ready()`` holds."""
    proc = subprocess.Popen([sys.executable, TRAIN, cfg, '--work-dir', str(work_dir)],
                            cwd=ROOT, env=child_env(**env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, 'training ended before it could be killed'
        assert time.time() < deadline, f'{what} within {timeout} s'
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL


def _train(cfg, work_dir, *extra, timeout=300, **env):
    return subprocess.run([sys.executable, TRAIN, cfg, '--work-dir', str(work_dir), *extra],
                          cwd=ROOT, env=child_env(**env), capture_output=True, text=True,
                          timeout=timeout)


needs_train_script = pytest.mark.skipif(not osp.isfile(TRAIN) or not osp.isfile(DEMO_CONFIG),
                                        reason='tools/train.py or the demo config is missing')


@needs_train_script
def test_sigkill_then_resume_gives_the_same_losses(tmp_path):
    """Mask R-CNN on the demo data, CPU: killed with SIGKILL after a checkpoint, resumed
    with --resume, logs the same losses as a run that was never interrupted."""
    root = _demo_data(tmp_path / 'shapes')
    cfg = _tiny_demo_config(tmp_path / 'cfg.py', max_iters=6, ckpt_interval=2)
    env = dict(SHAPES_ROOT=root)

    full = _train(cfg, tmp_path / 'full', **env)
    assert full.returncode == 0, full.stdout[-3000:] + full.stderr[-3000:]
    reference = _logged_losses(tmp_path / 'full')
    assert sorted(reference) == list(range(1, 7))

    wd = tmp_path / 'killed'
    pointer = wd / 'last_checkpoint'
    _train_then_kill(cfg, wd, env, lambda: pointer.exists() and
                     pointer.read_text().strip().endswith('iter_2.pth'), 'no checkpoint')
    last = rt.find_latest_checkpoint(str(wd))
    resumed_at = int(osp.basename(last)[len('iter_'):-len('.pth')])
    assert 2 <= resumed_at < 6 and not (wd / 'iter_6.pth').exists()

    resumed = _train(cfg, wd, '--resume', **env)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-4000:]
    assert f'resumed epoch: 0, iter: {resumed_at}' in out
    after = {step: v for step, v in _logged_losses(wd).items() if step > resumed_at}
    assert sorted(after) == list(range(resumed_at + 1, 7))
    for step, losses in after.items():
        assert losses == reference[step], (step, losses, reference[step])
    # the detector checkpoint loads with torch's default (weights_only) loading too, once
    # the runtime is installed (what SafeCheckpointsHook and our tools do)
    rt.install()
    assert torch.load(str(wd / 'iter_6.pth'), map_location='cpu')['meta']['iter'] == 6


SHIPPED_CONFIG = osp.join(ROOT, 'configs', 'mask_rcnn_r50.py')


def _tiny_shipped_config(path, max_epochs):
    """The shipped COCO Mask R-CNN config, its runtime (hooks, seed) and its epoch loop, data
    loading (2 persistent workers, shuffling sampler) and pipeline with its random flip, on
    the shapes data: only the scale, the model's size and the number of epochs are cut."""
    lines = [
        f'_base_ = {SHIPPED_CONFIG!r}',
        "classes = ('circle', 'triangle', 'square')",
        "train_pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', "
        "with_bbox=True, with_mask=True), dict(type='Resize', scale=(64, 64), keep_ratio=True), "
        "dict(type='RandomFlip', prob=0.5), dict(type='PackDetInputs')]",
        "train_dataloader = dict(dataset=dict(data_root='{{$SHAPES_ROOT:x}}', "
        "ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'), "
        "metainfo=dict(classes=classes), filter_cfg=dict(filter_empty_gt=True, min_size=0), "
        "pipeline=train_pipeline))",
        'val_dataloader = None', 'val_cfg = None', 'val_evaluator = None',
        'test_dataloader = None', 'test_cfg = None', 'test_evaluator = None',
        f'train_cfg = dict(max_epochs={max_epochs}, val_interval=100)',
        "model = dict(backbone=dict(depth=18, base_channels=16, init_cfg=None), "
        "neck=dict(in_channels=[16, 32, 64, 128], out_channels=32), "
        "rpn_head=dict(in_channels=32, feat_channels=32), roi_head=dict("
        "bbox_roi_extractor=dict(out_channels=32), bbox_head=dict(in_channels=32, "
        "fc_out_channels=64, num_classes=3), mask_roi_extractor=dict(out_channels=32), "
        "mask_head=dict(in_channels=32, conv_out_channels=32, num_classes=3)), "
        "train_cfg=dict(rpn_proposal=dict(nms_pre=200, max_per_img=50), "
        "rcnn=dict(sampler=dict(num=32))))",
        "default_hooks = dict(logger=dict(type='LoggerHook', interval=1))",
        'log_processor = dict(window_size=1)',
        'randomness = dict(seed=0, deterministic=True)',
    ]
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


@needs_train_script
def test_epoch_config_with_persistent_workers_resumes_from_an_epoch_boundary(tmp_path):
    """The shipped epoch-based config (2 persistent workers, RandomFlip): killed with SIGKILL
    in the middle of epoch 2 and resumed, mmengine restarts epoch 2 from epoch_1.pth; every
    iteration from there logs the losses of a run that was never interrupted."""
    from mmengine.config import Config
    root = _demo_data(tmp_path / 'shapes')
    cfg = _tiny_shipped_config(tmp_path / 'cfg.py', max_epochs=3)
    shipped = Config.fromfile(cfg)
    loader = shipped.train_dataloader
    assert (loader.num_workers, loader.persistent_workers) == (2, True)
    assert shipped.train_cfg.type == 'EpochBasedTrainLoop'
    assert 'DeterministicResumeHook' in [h['type'] for h in shipped.custom_hooks]
    env = dict(SHAPES_ROOT=root)
    full = _train(cfg, tmp_path / 'full', **env)
    assert full.returncode == 0, full.stdout[-3000:] + full.stderr[-3000:]
    reference = _logged_losses(tmp_path / 'full')
    per_epoch = len(reference) // 3
    assert sorted(reference) == list(range(1, 3 * per_epoch + 1)) and per_epoch >= 2

    wd = tmp_path / 'killed'  # killed once an iteration of epoch 2 is done
    _train_then_kill(cfg, wd, env, lambda: per_epoch + 1 in _logged_losses(wd),
                     'epoch 2 did not start')
    assert rt.find_latest_checkpoint(str(wd)).endswith('epoch_1.pth')

    resumed = _train(cfg, wd, '--resume', **env)
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-4000:]
    assert f'resumed epoch: 1, iter: {per_epoch}' in out
    last_run = sorted(d for d in os.listdir(wd) if osp.isdir(wd / d))[-1]
    after = _logged_losses_in(wd / last_run)
    assert sorted(after) == list(range(per_epoch + 1, 3 * per_epoch + 1))
    for step, losses in after.items():
        assert losses == reference[step], (step, losses, reference[step])


# ------------------------------------------------------------------------ distributed (CPU)
def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not osp.isfile(DIST_TRAIN) or not osp.isfile(TRAIN),
                    reason='tools/dist_train.sh is missing')
def test_dist_train_two_processes_on_cpu(tmp_path):
    """tools/dist_train.sh CONFIG 2 on CPU (gloo): frozen stages, no find_unused_parameters."""
    root = _demo_data(tmp_path / 'shapes')
    cfg = _tiny_demo_config(
        tmp_path / 'cfg.py', max_iters=3, ckpt_interval=3,
        backbone='dict(frozen_stages=1, norm_eval=True)')
    run = subprocess.run(['bash', DIST_TRAIN, cfg, '2', '--work-dir', str(tmp_path / 'wd')],
                         cwd=ROOT, env=child_env(SHAPES_ROOT=root, PORT=_free_port(),
                                                 PYTHON=sys.executable),
                         capture_output=True, text=True, timeout=400)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-5000:]
    assert 'Distributed training: True' in out and 'GPU number: 2' in out, out[-3000:]
    assert 'find_unused_parameters=True' not in out
    # DDP without find_unused_parameters raises at the 2nd iteration if a parameter got no
    # gradient in the 1st: three logged iterations show every trainable parameter is used
    assert sorted(_logged_losses(tmp_path / 'wd')) == [1, 2, 3]
    rt.install()  # as the tools and SafeCheckpointsHook do: mmengine's types allowlisted
    ckpt = torch.load(str(tmp_path / 'wd' / 'iter_3.pth'), map_location='cpu')
    assert not any(k.startswith('module.') for k in ckpt['state_dict'])


# ---------------------------------------------------------------------------- SyncBN fallback
def test_syncbn_cfg_builds_torch_syncbn_that_runs_as_bn_without_a_group():
    """norm_cfg SyncBN builds torch's SyncBatchNorm (no silent BN at build time: in a
    process group it synchronises); outside one it computes exactly what BN computes."""
    from torch import nn
    assert not torch.distributed.is_initialized()
    sync = ResNetBackbone(depth=18, base_channels=8, norm_cfg=dict(type='SyncBN'),
                          norm_eval=False).train()
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in sync.modules()) == 20  # every BN
    plain = ResNetBackbone(depth=18, base_channels=8, norm_eval=False).train()
    plain.load_state_dict(sync.state_dict())
    x = torch.randn(2, 3, 64, 64)
    for a, b in zip(sync(x), plain(x)):
        assert torch.allclose(a, b, atol=1e-5)
    assert torch.equal(sync.layer4[1].bn2.running_mean, plain.layer4[1].bn2.running_mean)


def test_syncbn_model_runs_as_bn_with_a_warning():
    from torch import nn
    rt.syncbn._warned.clear()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SyncBatchNorm(4), nn.ReLU()).train()
    model[1].running_mean.fill_(0.5)
    with pytest.warns(UserWarning, match='SyncBN layer'):
        model, n = rt.revert_syncbn(model)
    assert n == 1 and not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert torch.all(model[1].running_mean == 0.5)
    model(torch.randn(2, 3, 8, 8)).sum().backward()  # trains without a process group


def test_syncbn_backbone_without_process_group_reverts_to_bn_and_trains():
    """revert_syncbn turns every SyncBN of a built backbone into BN with the same
    parameters and statistics (shared, so an optimiser built before keeps working)."""
    model = ResNetBackbone(depth=18, base_channels=8, norm_cfg=dict(type='SyncBN'),
                           norm_eval=False).train()
    params = {n: p for n, p in model.named_parameters()}
    x = torch.randn(2, 3, 64, 64)
    before = [o.detach() for o in copy.deepcopy(model)(x)]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model, converted = rt.revert_syncbn(model)
    assert converted == 20
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert all(p is params[n] for n, p in model.named_parameters())
    outs = model(x)
    for a, b in zip(outs, before):
        assert torch.allclose(a, b, atol=1e-5)
    sum(o.sum() for o in outs).backward()
    assert all(p.grad is not None for p in params.values())


def test_syncbn_run_without_process_group_warns(toy, tmp_path):
    """A Runner (as tools/train.py builds it) with SyncBN and no process group trains with
    BN, and SyncBNFallbackHook turns mmengine's INFO line into a warning with the count."""
    import logging
    runner = toy.make_runner(str(tmp_path / 'wd'), max_epochs=1, sync_bn=True,
                             hooks=[dict(type='SyncBNFallbackHook')])
    records = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    runner.logger.addHandler(handler)
    try:
        runner.train()
    finally:
        runner.logger.removeHandler(handler)
    assert any('1 SyncBN layer(s) run as BN' in m for m in records), records
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in runner.model.modules())


SYNCBN_GLOO_RANK = """
import json, os, sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
import toy_runner
dist.init_process_group('gloo')
rank = dist.get_rank()
runner = toy_runner.make_runner(os.path.join(sys.argv[1], 'wd'), max_epochs=1, sync_bn=True,
                                launcher='pytorch',  # the wrapper tools/train.py uses on CPU:
                                cfg=dict(model_wrapper_cfg=dict(
                                    type='CPUDistributedDataParallel', device_ids=None)))
runner.train()
model = runner.model.module
torch.save({n: p.detach() for n, p in model.named_parameters()},
           os.path.join(sys.argv[1], f'params{rank}.pt'))
with open(os.path.join(sys.argv[1], f'status{rank}.json'), 'w') as f:
    json.dump(dict(world=dist.get_world_size(),
                   syncbn=sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules()),
                   bn=sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                          for m in model.modules())), f)
dist.destroy_process_group()
"""


def test_syncbn_in_a_two_process_gloo_group_runs_as_bn_with_a_warning(toy, tmp_path):
    """torch's SyncBatchNorm needs CUDA (DDP refuses to wrap it on CPU). In a real 2-process
    gloo group the model's SyncBN, kept as SyncBN at build time, is converted when the
    model is wrapped, with a warning; the run trains and both ranks end with the same
    parameters (DDP averages gradients)."""
    (tmp_path / 'rank.py').write_text(SYNCBN_GLOO_RANK)
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
         '--master_port', str(_free_port()), str(tmp_path / 'rank.py'), str(tmp_path)],
        cwd=tmp_path, env=child_env(PYTHONPATH=f'{tmp_path}{os.pathsep}{ROOT}'),
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    status = [load_json(tmp_path / f'status{r}.json') for r in (0, 1)]
    for s in status:
        assert s['world'] == 2 and s['syncbn'] == 0 and s['bn'] == 1
    out = proc.stdout + proc.stderr
    # mmengine's logger prints rank 0's
    assert "1 SyncBN layer(s) run as BN: torch's SyncBatchNorm needs CUDA" in out, out[-3000:]
    ranks = [torch.load(tmp_path / f'params{r}.pt') for r in (0, 1)]
    for name, value in ranks[0].items():
        assert torch.equal(value, ranks[1][name]), name


# -------------------------------------------------------------------- bad tensors (backbone)
def _r18():
    return ResNetBackbone(depth=18, base_channels=16).eval()


def test_non_contiguous_and_channels_last_inputs_give_the_same_result():
    model = _r18()
    x = torch.randn(2, 3, 67, 45)
    strided = torch.zeros(2, 3, 134, 45)[:, :, ::2]
    strided.copy_(x)
    variants = {  # name: (layout of the same values as x, or of other values)
        'channels_last': x.contiguous(memory_format=torch.channels_last),
        'transposed view': x.transpose(2, 3).contiguous().transpose(2, 3),
        'strided slice': strided,
        'channel slice': torch.cat([x[:, :1], x, x[:, :1]], 1)[:, 1:4],
        'expanded batch': x[:1].expand(2, -1, -1, -1),
    }
    with torch.no_grad():
        ref = model(x)
        for name, v in variants.items():
            assert not v.is_contiguous(), name
            expected = ref if name != 'expanded batch' else model(v.contiguous())
            for a, b in zip(model(v), expected):
                assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-4), name
        # a channels_last model too
        model = model.to(memory_format=torch.channels_last)
        for a, b in zip(model(variants['channels_last']), ref):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_channels_last_trains():
    """A channels_last input trains like its NCHW twin: the same outputs, input gradient
    and parameter gradients (within float32 rounding)."""
    model = _r18().train()
    x = torch.randn(2, 3, 64, 64)
    results = []
    for inp in (x.contiguous(memory_format=torch.channels_last), x.clone()):
        inp.requires_grad_(True)
        model.zero_grad()
        outs = model(inp)
        sum(o.square().mean() for o in outs).backward()
        results.append(([o.detach() for o in outs], inp.grad,
                        [p.grad.clone() for p in model.parameters()]))
    (outs_cl, grad_cl, params_cl), (outs, grad, params) = results
    for a, b in zip(outs_cl, outs):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    assert torch.allclose(grad_cl, grad, rtol=1e-3, atol=1e-6) and grad.abs().sum() > 0
    for a, b in zip(params_cl, params):
        assert (a - b).norm() <= 1e-3 * b.norm() + 1e-8


@pytest.mark.parametrize('value', [float('nan'), float('inf'), float('-inf')])
def test_nan_and_inf_are_caught_with_the_debug_flag(value):
    x = torch.randn(1, 3, 64, 64)
    x[0, 1, 5, 7] = value
    with pytest.raises(ValueError, match='NaN or Inf'):
        ResNetBackbone(depth=18, check_finite=True).eval()(x)


def test_images_smaller_than_the_total_stride():
    """Smaller than the stride (32): a clear ValueError naming size, stride and the fix."""
    model = _r18()
    with pytest.raises(ValueError, match=r'16x40.*stride 32'):
        model(torch.randn(1, 3, 16, 40))
    assert [o.shape[-1] for o in model(torch.randn(1, 3, 32, 32))] == [8, 4, 2, 1]


# Constructor arguments not in tests/test_errors.py::BAD_ARGS (which covers depth, num_stages,
# out_indices, strides, dilations, frozen_stages, style, norm_eval, norm_cfg, groups with basic
# blocks, stage_blocks vs depth, dcn, stage_with_dcn, plugins position, in_channels, and
# init_cfg + pretrained).
MORE_BAD_ARGS = [
    (dict(depth=50, stem_channels=0), ValueError, 'stem_channels=0'),
    (dict(depth=50, base_channels=0), ValueError, 'base_channels=0'),
    (dict(depth=50, base_channels=16.0), TypeError, 'base_channels'),
    (dict(depth=50, groups=0), ValueError, 'groups=0'),
    (dict(depth=50, base_width=0), ValueError, 'base_width=0'),
    (dict(depth=50, widen_factor=0), ValueError, 'widen_factor=0'),
    (dict(depth=18, widen_factor=2), ValueError, 'widen_factor=2'),
    (dict(depth=50, in_channels='3'), TypeError, 'in_channels'),
    (dict(depth=50, deep_stem=1), TypeError, 'deep_stem'),
    (dict(depth=50, avg_down='no'), TypeError, 'avg_down'),
    (dict(depth=50, with_cp=None), TypeError, 'with_cp'),
    (dict(depth=50, zero_init_residual=0), TypeError, 'zero_init_residual'),
    (dict(depth=50, preact='yes'), TypeError, 'preact'),
    (dict(depth=50, out_stem=1), TypeError, 'out_stem'),
    (dict(depth=50, check_finite='on'), TypeError, 'check_finite'),
    (dict(depth=50, frozen_stages=1.5), TypeError, 'frozen_stages'),
    (dict(depth=50, num_stages='4'), TypeError, 'num_stages'),
    (dict(depth=50, out_indices=3), TypeError, 'out_indices'),
    (dict(depth=50, out_indices=()), ValueError, 'out_indices=()'),
    (dict(depth=50, strides='1222'), TypeError, 'strides'),
    (dict(depth=50, dilations=(1, 1, 1, 0)), ValueError, 'dilations'),
    (dict(depth=50, norm_cfg=dict(requires_grad=True)), TypeError, 'norm_cfg'),
    (dict(depth=50, stage_blocks=()), ValueError, 'stage_blocks=()'),
    (dict(depth=None, stage_blocks=(2, 0, 2, 2)), ValueError, 'stage_blocks'),
    (dict(depth=None, stage_blocks=(2, 2, 2, 2), block='dense'), ValueError, "block='dense'"),
    (dict(depth=None), ValueError, 'depth=None'),
    (dict(depth=50, plugins=dict(cfg=dict(type='ContextBlock'))), TypeError, 'plugins'),
    (dict(depth=50, plugins=[dict(position='after_conv1')]), ValueError, "'cfg'"),
    (dict(depth=50, plugins=[dict(cfg=dict(type='ContextBlock'), position='after_conv1',
                                  stages=(True,))]), ValueError, 'stages'),
    (dict(depth=50, pretrained=123), TypeError, 'pretrained'),
    (dict(depth=50, init_cfg=dict(type='Pretrained')), ValueError, 'checkpoint'),
    (dict(depth=50, deep_stem=True, stem_channels=1), ValueError, 'stem_channels'),
]


@pytest.mark.parametrize('kwargs,exc,word', MORE_BAD_ARGS, ids=[str(a[0]) for a in MORE_BAD_ARGS])
def test_more_bad_constructor_arguments(kwargs, exc, word):
    with pytest.raises(exc) as info:
        model = ResNetBackbone(**kwargs)
        model.init_weights()  # init_cfg problems surface here
    assert word in str(info.value), str(info.value)


# ----------------------------------------------------------------------------- bad datasets
def _coco_dataset(root, ann='annotations/instances_train.json', img='train/', **kw):
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope

    import resnet_backbone.runtime.data  # noqa: F401  (registers CheckedCocoDataset)
    register_all_modules(init_default_scope=False)
    kw.setdefault('pipeline', [])
    with DefaultScope.overwrite_default_scope('mmdet'):
        return DATASETS.build(dict(
            type='CheckedCocoDataset', data_root=str(root), ann_file=ann,
            data_prefix=dict(img=img), metainfo=dict(classes=('circle', 'triangle', 'square')),
            filter_cfg=dict(filter_empty_gt=True, min_size=0), **kw))


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    _demo_data(root)
    return root


def test_missing_dataset_path(tmp_path, shapes):
    with pytest.raises(FileNotFoundError, match='annotation file not found: .*nowhere'):
        _coco_dataset(tmp_path / 'nowhere')
    with pytest.raises(FileNotFoundError, match='image folder not found: .*missing_imgs'):
        _coco_dataset(shapes, img='missing_imgs/')
    assert len(_coco_dataset(shapes)) == 8


@needs_train_script
def test_missing_dataset_path_in_train_script(tmp_path):
    cfg = _tiny_demo_config(tmp_path / 'cfg.py', max_iters=1, ckpt_interval=1)
    run = _train(cfg, tmp_path / 'wd', timeout=120, SHAPES_ROOT=str(tmp_path / 'absent') + '/')
    out = run.stdout + run.stderr
    assert run.returncode != 0 and 'Traceback' not in out, out[-3000:]
    assert 'absent' in out and 'instances_train.json' in out


@pytest.mark.parametrize('content,match', [
    ('', r'is empty \(0 bytes\)'),
    ('{"images": [], "annotations": [], "categories": []}', 'lists no images'),
    ('{"images": [', 'not valid COCO JSON'),
    ('{}', 'not in COCO format'),
    ('[1, 2]', 'not in COCO format'),
])
def test_empty_or_broken_annotation_file(tmp_path, shapes, content, match):
    ann = tmp_path / 'ann.json'
    ann.write_text(content)
    with pytest.raises(ValueError, match=match):
        _coco_dataset(shapes, ann=str(ann))


def test_annotations_without_usable_objects(tmp_path, shapes):
    data = load_json(shapes / 'annotations' / 'instances_train.json')
    for c in data['categories']:
        c['name'] = 'other_' + c['name']
    ann = tmp_path / 'renamed.json'
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match='no image .* is left after filter_cfg'):
        _coco_dataset(shapes, ann=str(ann))


def _corrupt_copies(shapes, tmp_path):
    """A copy of the train split with one image of each kind of corruption."""
    import shutil
    root = tmp_path / 'corrupt'
    shutil.copytree(shapes, root)
    names = sorted(os.listdir(root / 'train'))
    good = (root / 'train' / names[0]).read_bytes()
    broken = {
        names[1]: b'',                               # empty file
        names[2]: good[:len(good) // 2],             # truncated
        names[3]: os.urandom(len(good)),             # random bytes
    }
    for name, data in broken.items():
        (root / 'train' / name).write_bytes(data)
    os.remove(root / 'train' / names[4])             # missing
    return root, {str(root / 'train' / n) for n in list(broken) + [names[4]]}


def test_corrupt_images_are_skipped_counted_and_logged(tmp_path, shapes):
    from mmengine.logging import MMLogger
    root, bad = _corrupt_copies(shapes, tmp_path)
    rt.reset_skipped_images()
    ds = _coco_dataset(root, pipeline=[dict(type='SafeLoadImageFromFile'),
                                       dict(type='LoadAnnotations', with_bbox=True)])
    logger = MMLogger.get_instance('reliability_test', log_level='WARNING')
    records = []
    import logging

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Keep(level=logging.WARNING)
    logger.addHandler(handler)
    try:
        loaded = [ds[i] for i in range(len(ds))]  # a bad index draws another sample
    finally:
        logger.removeHandler(handler)
    assert all(s is not None and s['img'].ndim == 3 for s in loaded)
    stats = rt.skipped_images()
    assert {p for p, _ in stats['files']} == bad and stats['count'] >= len(bad)
    reasons = ' '.join(r for _, r in stats['files'])
    for word in ('empty', 'truncated', 'cannot be decoded', 'not found'):
        assert word in reasons, reasons
    assert any('skipped corrupt image' in m for m in records), records


def test_corrupt_image_raises_when_asked(tmp_path, shapes):
    root, bad = _corrupt_copies(shapes, tmp_path)
    t = rt.SafeLoadImageFromFile(on_error='raise')
    for path in sorted(bad):
        with pytest.raises(rt.CorruptImageError, match=osp.basename(path)):
            t(dict(img_path=path))


def test_skipped_images_hook_counts_across_processes(tmp_path, shapes):
    """Dataloader workers (separate processes) record skips; the hook logs the total."""
    from torch.utils.data import DataLoader
    root, bad = _corrupt_copies(shapes, tmp_path)
    hook = rt.SkippedImagesHook()

    class FakeRunner:
        work_dir = str(tmp_path / 'wd')
        _resume = False

        class message_hub:
            info = {}

            @classmethod
            def update_info(cls, k, v):
                cls.info[k] = v

    hook.before_run(FakeRunner)
    try:
        ds = _coco_dataset(root, pipeline=[dict(type='SafeLoadImageFromFile'),
                                           dict(type='LoadAnnotations', with_bbox=True)])
        loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=lambda b: b)
        assert sum(len(b) for b in loader) == len(ds)
        hook.after_train_epoch(FakeRunner)
    finally:
        hook.after_run(FakeRunner)
    assert FakeRunner.message_hub.info['skipped_images'] >= len(bad)
    assert rt.skipped.SKIP_LOG_ENV not in os.environ


# --------------------------------------------------------------------------- bad checkpoints
def test_corrupt_checkpoint_bytes_are_a_clear_error(tmp_path):
    """Garbage and bit-flipped files (truncated, wrong-architecture and malicious ones:
    tests/test_checkpoint.py)."""
    model = ResNetBackbone(depth=18)
    torch.save(model.state_dict(), tmp_path / 'good.pth')
    data = (tmp_path / 'good.pth').read_bytes()
    (tmp_path / 'garbage.pth').write_bytes(b'\x00 not a checkpoint ' * 200)
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF
    (tmp_path / 'flipped.pth').write_bytes(bytes(flipped))
    for name in ('garbage.pth', 'flipped.pth'):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(CheckpointError, match='truncated or corrupt'):
            load_checkpoint(model, str(tmp_path / name))
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
