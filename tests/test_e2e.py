"""End to end on CPU: demo data -> tools/train.py -> tools/test.py, on a tiny synthetic set.

Also: the message when data is missing, DDP through tools/dist_train.sh (gloo, 2
processes), the feature-map viewer and the demo's plots on the trained checkpoint,
safe loading of Runner checkpoints, and the data generator itself.
"""
import glob
import json
import os
import os.path as osp
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import load_json

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(ROOT, 'tools')
DEMO = 'configs/demo/mask_rcnn_r18_shapes.py'
ITERS = 3
AP_KEYS = [f'coco/{t}_{k}' for t in ('bbox', 'segm')
           for k in ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')]


def tool_env():
    env = dict(os.environ)
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    env.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    return env


def run(args, timeout=300):
    proc = subprocess.run(args, cwd=ROOT, env=tool_env(), capture_output=True, text=True,
                          timeout=timeout)
    return proc


def run_py(args, timeout=300):
    return run([sys.executable, *args], timeout)


def explain(proc):
    return f'exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}'


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    from resnet_backbone.demo.shapes import make_shapes_dataset
    root = str(tmp_path_factory.mktemp('e2e') / 'shapes')
    make_shapes_dataset(root, num_train=8, num_val=4, size=128, seed=1, min_radius=14.0,
                        max_radius=32.0)
    return root


@pytest.fixture(scope='module')
def trained(data_root, tmp_path_factory):
    work = str(tmp_path_factory.mktemp('e2e') / 'work')
    proc = run_py(['tools/train.py', DEMO, '--work-dir', work, '--data-root', data_root,
                   '--cfg-options', f'train_cfg.max_iters={ITERS}',
                   f'train_cfg.val_interval={ITERS}', 'train_dataloader.batch_size=2',
                   'default_hooks.logger.interval=1'])
    assert proc.returncode == 0, explain(proc)
    return work, proc


def scalars_of(work):
    paths = glob.glob(osp.join(work, '*', 'vis_data', 'scalars.json'))
    assert len(paths) == 1, paths
    with open(paths[0]) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_train_writes_checkpoint_logs_and_curves(trained):
    work, proc = trained
    out = proc.stdout + proc.stderr
    for i in range(1, ITERS + 1):
        assert f'Iter(train) [{i}/{ITERS}]' in out  # progress, every iteration here
    assert 'Iter(val)' in out and 'bbox matching: 100%' in out
    ckpt = osp.join(work, f'iter_{ITERS}.pth')
    assert osp.isfile(ckpt)
    with open(osp.join(work, 'last_checkpoint')) as f:
        assert f.read().strip().endswith(f'iter_{ITERS}.pth')
    assert osp.isfile(osp.join(work, osp.basename(DEMO)))  # the config as run
    logs = glob.glob(osp.join(work, '*', '*.log'))
    assert logs and f'Iter(train) [{ITERS}/{ITERS}]' in Path(logs[0]).read_text()
    records = scalars_of(work)
    train = [r for r in records if 'loss' in r]
    val = [r for r in records if 'coco/bbox_mAP' in r]
    assert [r['step'] for r in train] == list(range(1, ITERS + 1))
    assert all(np.isfinite(r['loss']) and r['loss'] > 0 for r in train)
    assert len(val) == 1 and val[0]['step'] == ITERS
    assert set(AP_KEYS) <= set(val[0])


def test_train_resumes(trained, data_root, tmp_path):
    import shutil
    work = str(tmp_path / 'resumed')
    shutil.copytree(trained[0], work)
    proc = run_py(['tools/train.py', DEMO, '--work-dir', work, '--data-root', data_root,
                   '--resume', '--cfg-options', f'train_cfg.max_iters={ITERS + 1}',
                   'train_cfg.val_interval=100', 'train_dataloader.batch_size=2',
                   'default_hooks.logger.interval=1'])
    assert proc.returncode == 0, explain(proc)
    out = proc.stdout + proc.stderr
    assert f'resumed epoch: 0, iter: {ITERS}' in out
    assert f'Iter(train) [{ITERS + 1}/{ITERS + 1}]' in out
    assert 'Iter(train) [1/' not in out
    assert osp.isfile(osp.join(work, f'iter_{ITERS + 1}.pth'))


def test_test_tool_reproduces_the_final_validation(trained, data_root):
    work, _ = trained
    ckpt = osp.join(work, f'iter_{ITERS}.pth')
    proc = run_py(['tools/test.py', DEMO, ckpt, '--work-dir', work, '--data-root', data_root,
                   '--classwise'])
    assert proc.returncode == 0, explain(proc)
    assert 'Iter(test)' in proc.stdout + proc.stderr
    with open(osp.join(work, 'metrics.json')) as f:
        metrics = json.load(f)
    assert set(AP_KEYS) <= set(metrics)
    for t in ('bbox', 'segm'):
        for name in ('circle', 'triangle', 'square'):
            assert f'coco/{t}_{name}_mAP' in metrics
    assert all(-1.0 <= metrics[k] <= 1.0 for k in AP_KEYS)
    # the same checkpoint on the same images: the numbers validation logged in training
    val = [r for r in scalars_of(work) if 'coco/bbox_mAP' in r][-1]
    for key in AP_KEYS:
        assert metrics[key] == pytest.approx(val[key], abs=1e-6), key
    table = open(osp.join(work, 'metrics.md')).read()
    assert '| bbox |' in table and '| segm |' in table
    assert '| bbox class |' in table and '| triangle |' in table


def test_test_tool_predicts_with_the_checkpoint_it_is_given(trained, data_root, tmp_path):
    """After 3 iterations every AP is about 0, so equal metrics prove little: the raw
    predictions of tools/test.py must be those of the checkpoint's weights (loaded here
    independently), and unlike those of a model that was not loaded."""
    import torch
    from mmdet.apis import inference_detector, init_detector
    from mmengine.config import Config

    from resnet_backbone.cli import mmengine_checkpoint_loading, set_data_root
    work, _ = trained
    ckpt = osp.join(work, f'iter_{ITERS}.pth')
    raw = str(tmp_path / 'raw.pkl')
    proc = run_py(['tools/test.py', DEMO, ckpt, '--work-dir', str(tmp_path), '--data-root',
                   data_root, '--out', raw])
    assert proc.returncode == 0, explain(proc)
    with open(raw, 'rb') as f:
        dumped = {osp.basename(r['img_path']): r['pred_instances'] for r in pickle.load(f)}
    cfg = set_data_root(Config.fromfile(osp.join(ROOT, DEMO)), data_root)
    with mmengine_checkpoint_loading():
        loaded = init_detector(cfg, ckpt, device='cpu')
    fresh = init_detector(cfg, None, device='cpu')
    name = sorted(dumped)[0]
    image = osp.join(data_root, 'val', name)
    ours = inference_detector(loaded, image).pred_instances
    other = inference_detector(fresh, image).pred_instances
    got = dumped[name]
    assert len(got['scores']) == len(ours.scores) > 0
    assert torch.allclose(torch.as_tensor(got['scores']), ours.scores, atol=1e-4)
    assert torch.allclose(torch.as_tensor(got['bboxes']), ours.bboxes, atol=1e-2)
    assert len(other.scores) != len(ours.scores) or not torch.allclose(
        other.scores, ours.scores, atol=1e-3)


def test_test_tool_format_only(trained, data_root):
    work, _ = trained
    ckpt = osp.join(work, f'iter_{ITERS}.pth')
    proc = run_py(['tools/test.py', DEMO, ckpt, '--work-dir', work, '--data-root', data_root,
                   '--format-only', '--outfile-prefix', 'submission/results',
                   '--out', osp.join(work, 'raw.pkl')])
    assert proc.returncode == 0, explain(proc)
    for t in ('bbox', 'segm'):
        dets = load_json(osp.join(work, 'submission', f'results.{t}.json'))
        assert dets and {d['image_id'] for d in dets} <= {1, 2, 3, 4}
        assert {d['category_id'] for d in dets} <= {1, 2, 3}
    with open(osp.join(work, 'raw.pkl'), 'rb') as f:
        raw = pickle.load(f)
    assert len(raw) == 4 and 'pred_instances' in raw[0]


# ------------------------------------- MMDetection's own entry points, no compiled mmcv
def mmdet_tool(name):
    import mmdet
    return osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', name)


def test_mmdet_own_train_and_test_tools_run_our_config(data_root, tmp_path):
    """MMDetection's tools/train.py and tools/test.py (mmdet/.mim/tools), unmodified, with
    this project's demo config: test.py imports mmcv.ops before the config's custom_imports."""
    work = str(tmp_path / 'mmdet_tools')
    env = dict(tool_env(), SHAPES_ROOT=data_root.rstrip('/') + '/')
    train = subprocess.run(
        [sys.executable, mmdet_tool('train.py'), DEMO, '--work-dir', work, '--cfg-options',
         'train_cfg.max_iters=2', 'train_cfg.val_interval=100', 'train_dataloader.batch_size=2',
         'default_hooks.checkpoint.interval=2'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, explain(train)
    ckpt = osp.join(work, 'iter_2.pth')
    assert osp.isfile(ckpt), explain(train)
    test = subprocess.run([sys.executable, mmdet_tool('test.py'), DEMO, ckpt, '--work-dir', work],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert test.returncode == 0, explain(test)
    out = test.stdout + test.stderr
    assert 'Load checkpoint from' in out and 'coco/bbox_mAP' in out, explain(test)


def test_mmdet_apis_and_registry_import_mmcv_ops_first():
    """In a fresh process, the ways users start: every one reaches mmcv.ops, whose _ext is
    the stand-in, and our backbone builds from the registry afterwards."""
    probe = textwrap.dedent('''
        from mmdet.apis import inference_detector, init_detector
        from mmdet.utils import register_all_modules
        register_all_modules()
        import mmcv._ext, mmcv.ops
        from mmdet.registry import MODELS
        import resnet_backbone
        m = MODELS.build(dict(type='ResNetBackbone', depth=18))
        print(type(m).__name__, mmcv._ext.__name__, mmcv.ops.nms.__module__)
    ''')
    proc = run_py(['-c', probe])
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout.split()[-3:] == ['ResNetBackbone', 'mmcv._ext', 'mmcv.ops.nms']


def test_inference_detector_on_the_trained_checkpoint(trained, data_root):
    from mmdet.apis import inference_detector, init_detector
    from mmengine.config import Config

    from resnet_backbone.cli import mmengine_checkpoint_loading, set_data_root
    work, _ = trained
    cfg = set_data_root(Config.fromfile(osp.join(ROOT, DEMO)), data_root)
    with mmengine_checkpoint_loading():
        model = init_detector(cfg, osp.join(work, f'iter_{ITERS}.pth'), device='cpu')
    result = inference_detector(model, osp.join(data_root, 'val', '000000.png'))
    pred = result.pred_instances
    assert len(pred) > 0 and pred.masks.shape[1:] == (128, 128)


def test_device_option():
    from resnet_backbone.cli import select_device
    import torch
    if torch.cuda.is_available():
        assert select_device('auto') == select_device('cuda') == 'cuda'
    else:
        assert select_device('auto') == 'cpu'
        with pytest.raises(SystemExit, match='--device cuda: torch sees no CUDA device'):
            select_device('cuda')
    with pytest.raises(ValueError, match="device must be one of"):
        select_device('gpu')
    probe = ('import os, sys; sys.argv = ["x"]; from resnet_backbone.cli import '
             'select_device; print(select_device("cpu"), repr(os.environ["CUDA_VISIBLE_DEVICES"]))')
    proc = run_py(['-c', probe])
    assert proc.stdout.split() == ['cpu', "''"], explain(proc)


def test_missing_data_explains_layout(tmp_path):
    proc = run_py(['tools/train.py', 'configs/mask_rcnn_r50.py', '--data-root',
                   str(tmp_path / 'nowhere'), '--work-dir', str(tmp_path / 'w')])
    assert proc.returncode == 2, explain(proc)
    err = proc.stderr
    assert 'annotations/instances_train2017.json' in err and 'train2017' in err
    assert 'val2017' in err and 'make demo' in err and 'make_demo_data.py' in err
    assert not os.path.exists(tmp_path / 'w' / 'last_checkpoint')


DUMP_PARAMS_HOOK = """
import os, torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class DumpParamsHook(Hook):
    def after_run(self, runner):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        torch.save({n: p.detach().clone() for n, p in model.named_parameters()},
                   os.path.join(runner.work_dir, f'params_rank{get_rank()}.pt'))
"""


def test_dist_train_runs_ddp_on_cpu_and_ranks_stay_in_sync(data_root, tmp_path):
    """tools/dist_train.sh, 2 processes on gloo: it trains, and both ranks end with
    identical parameters (each dumps its own model after the run)."""
    import socket

    import torch
    work = str(tmp_path / 'dist')
    (tmp_path / 'dump_params.py').write_text(DUMP_PARAMS_HOOK)
    config = tmp_path / 'dist_cfg.py'
    config.write_text(f"_base_ = {osp.join(ROOT, DEMO)!r}\n"
                      "custom_imports = dict(imports=['resnet_backbone', "
                      "'resnet_backbone.evaluation', 'dump_params'], allow_failed_imports=False)\n"
                      "custom_hooks = [dict(type='SafeCheckpointsHook'), "
                      "dict(type='DumpParamsHook')]\n")
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        env_port = str(s.getsockname()[1])
    env = tool_env()
    env['PYTHONPATH'] = f'{tmp_path}{os.pathsep}' + env['PYTHONPATH']
    proc = subprocess.run(
        ['bash', 'tools/dist_train.sh', str(config), '2', '--work-dir', work, '--data-root',
         data_root, '--cfg-options', 'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
         'train_dataloader.batch_size=1', 'default_hooks.logger.interval=1'],
        cwd=ROOT, env={**env, 'PORT': env_port, 'PYTHON': sys.executable},
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, explain(proc)
    out = proc.stdout + proc.stderr
    assert re.search(r'Distributed training: True', out), out[-2000:]
    assert 'GPU number: 2' in out or 'world_size: 2' in out or "'world_size': 2" in out
    assert osp.isfile(osp.join(work, 'iter_2.pth'))
    ranks = [torch.load(osp.join(work, f'params_rank{r}.pt')) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and len(ranks[0]) > 100
    for name, value in ranks[0].items():
        assert torch.equal(value, ranks[1][name]), f'ranks differ in {name}'


def test_train_and_test_tools_destroy_the_process_group(tmp_path):
    """A rank that exits with its gloo group alive can abort (SIGABRT) after training
    finished, failing the whole torchrun; the tools leave through this teardown."""
    import torch.distributed as dist

    from resnet_backbone.cli import process_group_teardown
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/store', rank=0,
                            world_size=1)
    with pytest.raises(RuntimeError, match='boom'):
        with process_group_teardown():
            assert dist.is_initialized()
            raise RuntimeError('boom')  # also on the way out of a failed run
    assert not dist.is_initialized()
    for tool in ('train.py', 'test.py'):
        with open(osp.join(TOOLS, tool)) as f:
            assert 'process_group_teardown()' in f.read(), tool


def test_feature_maps_of_the_trained_backbone(trained, data_root, tmp_path, capsys):
    sys.path.insert(0, TOOLS)
    import feature_maps
    work, _ = trained
    img = osp.join(data_root, 'val', '000000.png')
    out = str(tmp_path / 'features.png')
    shapes = feature_maps.main([img, '--config', DEMO, '--checkpoint',
                                osp.join(work, f'iter_{ITERS}.pth'), '--out', out,
                                '--size', '128', '--channels', '3'])
    assert shapes == [('C2', 64, 32, 32), ('C3', 128, 16, 16), ('C4', 256, 8, 8),
                      ('C5', 512, 4, 4)]
    loaded = re.search(r'loaded (\d+) tensors', capsys.readouterr().out)
    assert loaded and int(loaded[1]) > 100  # every R-18 weight and BN statistic
    import matplotlib.image as mpimg
    png = mpimg.imread(out)
    assert png.shape[0] > 200 and png.shape[1] > 300 and png[..., :3].std() > 0.05


def test_demo_plots(trained, data_root, tmp_path):
    sys.path.insert(0, TOOLS)
    import demo
    work, _ = trained
    scalars = glob.glob(osp.join(work, '*', 'vis_data', 'scalars.json'))[0]
    curves = str(tmp_path / 'curves.png')
    assert demo.plot_curves(scalars, curves) == (ITERS, 1)
    grid = str(tmp_path / 'predictions.png')
    n = demo.draw_predictions(DEMO, osp.join(work, f'iter_{ITERS}.pth'), data_root, grid,
                              num_images=2)
    assert n == 2
    import matplotlib.image as mpimg
    for path in (curves, grid):
        assert mpimg.imread(path).shape[0] > 200


def test_runner_checkpoints_load_safely_and_narrowly(trained, tmp_path):
    import collections

    import torch

    from resnet_backbone.cli import mmengine_checkpoint_loading, read_runner_checkpoint
    work, _ = trained
    ckpt = osp.join(work, f'iter_{ITERS}.pth')
    # torch's default (weights_only=True) loads it once the runtime is installed (our tools and
    # SafeCheckpointsHook do it): it allowlists exactly the types mmengine stores
    import resnet_backbone.runtime
    resnet_backbone.runtime.install()
    assert 'state_dict' in torch.load(ckpt, map_location='cpu')
    state = read_runner_checkpoint(ckpt)
    assert 'backbone.conv1.weight' in state['state_dict']
    assert state['meta']['dataset_meta']['classes'] == ('circle', 'triangle', 'square')

    class Evil:
        def __reduce__(self):
            return getattr, (collections.Counter, 'fromkeys')
    bad = str(tmp_path / 'bad.pth')
    torch.save({'x': Evil()}, bad)
    with mmengine_checkpoint_loading(), pytest.raises(pickle.UnpicklingError):
        torch.load(bad, map_location='cpu')
    with pytest.raises(pickle.UnpicklingError):  # and outside the block
        torch.load(bad, map_location='cpu')


# ------------------------------------------------------------------ the data generator
def test_demo_data_is_deterministic(tmp_path):
    from resnet_backbone.demo.shapes import generate_split
    a = generate_split(str(tmp_path / 'a'), 'train', 5, seed=3)
    b = generate_split(str(tmp_path / 'b'), 'train', 5, seed=3)
    c = generate_split(str(tmp_path / 'c'), 'train', 5, seed=4)
    assert open(a).read() == open(b).read() != open(c).read()
    for i in range(5):
        name = f'{i:06d}.png'
        assert (open(tmp_path / 'a' / 'train' / name, 'rb').read()
                == open(tmp_path / 'b' / 'train' / name, 'rb').read())


def test_demo_data_annotations_are_consistent(tmp_path):
    import cv2
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    from resnet_backbone.demo.shapes import CLASSES, generate_split, shape_polygon
    path = generate_split(str(tmp_path), 'val', 30, seed=0, min_radius=14.0, max_radius=32.0)
    coco = COCO(path)
    anns = coco.loadAnns(coco.getAnnIds())
    assert {c['name'] for c in coco.loadCats(coco.getCatIds())} == set(CLASSES)
    assert {a['category_id'] for a in anns} == {1, 2, 3}
    per_image = [len(coco.getAnnIds(imgIds=[i])) for i in coco.getImgIds()]
    assert min(per_image) >= 1 and max(per_image) >= 4
    areas = np.array([a['area'] for a in anns])
    assert areas.min() >= 20 and areas.max() / areas.min() > 5  # varied sizes
    occluded = 0
    for a in anns:
        m = coco.annToMask(a)
        assert m.sum() == a['area']
        rle = mask_utils.encode(np.asfortranarray(m))
        assert list(mask_utils.toBbox(rle)) == pytest.approx(a['bbox'])
        xy = np.concatenate([np.reshape(p, (-1, 2)) for p in a['segmentation']])
        assert xy.min() >= 0 and xy.max() <= 128
        occluded += len(a['segmentation']) > 1 or len(a['segmentation'][0]) // 2 not in (3, 4, 32)
    assert occluded >= 5, 'no overlap/occlusion generated'
    # masks are where the image shows the object: inside a mask the colour is uniform
    for image_id in coco.getImgIds()[:5]:
        img = cv2.imread(osp.join(tmp_path, 'val', coco.loadImgs(image_id)[0]['file_name']))
        for a in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            inside = img[coco.annToMask(a).astype(bool)].astype(float)
            close = np.abs(inside - np.median(inside, 0)).max(1) < 30  # noise sigma is 6
            assert close.mean() > 0.97, (image_id, a['id'], close.mean())
    # the geometry helpers: a unit shape has the expected number of vertices
    assert shape_polygon('circle', 0, 0, 1, 0).shape == (32, 2)


def test_demo_data_kept_when_identical(tmp_path):
    from resnet_backbone.demo.shapes import make_shapes_dataset
    root = str(tmp_path / 'shapes')
    _, made = make_shapes_dataset(root, num_train=2, num_val=1, seed=0)
    _, again = make_shapes_dataset(root, num_train=2, num_val=1, seed=0)
    _, other = make_shapes_dataset(root, num_train=2, num_val=1, seed=1)
    assert (made, again, other) == (True, False, True)


def _load_tool(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f'_tool_{name}', osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_test_dev_and_options_rewrite_the_config(tmp_path):
    tool = _load_tool('test')
    args = tool.parse_args(['configs/mask_rcnn_r50.py', 'x.pth', '--test-dev', '--work-dir',
                            str(tmp_path), '--data-root', '/coco', '--classwise'])
    cfg = tool.build_cfg(args)
    ds = cfg.test_dataloader.dataset
    assert (ds.data_root, ds.ann_file, ds.data_prefix.img) == (
        '/coco/', 'annotations/image_info_test-dev2017.json', 'test2017/')
    assert all(t.type != 'LoadAnnotations' for t in ds.pipeline)
    ev = cfg.test_evaluator
    assert ev.format_only and ev.classwise
    assert ev.ann_file == '/coco/annotations/image_info_test-dev2017.json'
    assert ev.outfile_prefix == osp.join(str(tmp_path), 'test_dev_results')
    assert cfg.load_from == 'x.pth'
    with pytest.raises(SystemExit):
        tool.parse_args(['configs/mask_rcnn_r50.py', 'x.pth', '--format-only'])


def test_train_options_rewrite_the_config(tmp_path):
    tool = _load_tool('train')
    args = tool.parse_args(['configs/faster_rcnn_r50.py', '--auto-scale-lr', '--resume',
                            'w/iter_8.pth', '--cfg-options', 'train_cfg.max_epochs=2'])
    cfg = tool.build_cfg(args)
    assert cfg.auto_scale_lr.enable and cfg.resume and cfg.load_from == 'w/iter_8.pth'
    assert cfg.train_cfg.max_epochs == 2
    assert cfg.work_dir == osp.join('work_dirs', 'faster_rcnn_r50')
    cfg = tool.build_cfg(tool.parse_args(['configs/faster_rcnn_r50.py', '--resume']))
    assert cfg.resume is True and cfg.load_from is None
