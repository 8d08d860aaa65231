"""The torchvision stand-in for mmcv's compiled ops (resnet_backbone.mmcv_ext).

The stand-in runs in a pinned subprocess (tests/mmcv_reference.py) through
mmcv's own Python wrappers, and its results are compared with those mmcv's
compiled CPU kernels gave on the same inputs (tests/data/mmcv_reference/,
written by tools/make_mmcv_reference.py).
"""
import ast
import glob
import os
import os.path as osp
import subprocess
import sys
import sysconfig
import textwrap

import pytest
import torch
from mmcv_reference import (LAYOUTS, PARTS, pinned_command, reference_path, run_roi_align,
                            standin_kernels)

from resnet_backbone import mmcv_ext

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def replayed(tmp_path_factory):
    """{part: (reference, stand-in results)} for every part, from one pinned subprocess;
    ``dcn_ours`` is the backbone's own DCN op on the DCN reference cases."""
    out = str(tmp_path_factory.mktemp('standin'))
    cmd, env = pinned_command(out, '--standin', *PARTS, 'dcn_ours')
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = {part: (load(reference_path(part)), load(osp.join(out, f'{part}.pt')))
               for part in PARTS}
    results['dcn_ours'] = (results['dcn'][0], load(osp.join(out, 'dcn_ours.pt')))
    return results


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-12)).item()


# --------------------------------------------------------------- the names
def mmcv_ext_names():
    """Every name mmcv's ops ask _ext for, read from the installed mmcv's sources."""
    import mmcv
    names = set()
    for path in glob.glob(osp.join(osp.dirname(mmcv.__file__), '**', '*.py'), recursive=True):
        with open(path, encoding='utf-8') as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and getattr(node.func, 'attr', None) == 'load_ext'
                    and len(node.args) == 2 and isinstance(node.args[1], ast.List)):
                names.update(ast.literal_eval(node.args[1]))
    return names


def test_every_name_mmcv_asks_for_exists():
    names = mmcv_ext_names()
    assert len(names) == 112
    assert names == set(mmcv_ext.__all__)
    assert all(callable(getattr(mmcv_ext, n)) for n in names)
    assert set(mmcv_ext.PROVIDED) <= names and not set(mmcv_ext.PROVIDED) & set(mmcv_ext.MISSING)


def test_the_installed_mmcv_runs_on_the_stand_in():
    """make setup installs mmcv 2.1.0+torchvision, whose _ext is this package's stand-in."""
    from importlib.metadata import version

    import mmcv
    import mmcv._ext
    assert version('mmcv') == '2.1.0+torchvision' and mmcv.__version__ == '2.1.0'
    assert mmcv_ext.mmcv_ext_kind() == 'torchvision'
    assert mmcv._ext.roi_align_forward is mmcv_ext.roi_align_forward
    assert 'torchvision kernels' in mmcv_ext.mmcv_ops_summary()


@pytest.mark.parametrize('name, users', [('nms_rotated', 'MMRotate'),
                                         ('ms_deform_attn_forward', 'DINO'),
                                         ('carafe_forward', 'CARAFE'),
                                         ('sync_bn_forward_mean', "type='SyncBN'"),
                                         ('knn_forward', 'MMDetection3D')])
def test_a_missing_kernel_names_the_op_its_users_and_the_way_out(name, users):
    with pytest.raises(mmcv_ext.MissingKernelError) as info:
        getattr(mmcv_ext, name)(torch.zeros(1))
    message = str(info.value)
    assert f"'{name}'" in message and users in message
    assert 'make setup MMCV_OPS=compiled' in message


def test_a_missing_kernel_through_mmcvs_wrapper():
    from mmcv.ops import nms_rotated
    with standin_kernels(), pytest.raises(mmcv_ext.MissingKernelError, match="'nms_rotated'"):
        nms_rotated(torch.rand(3, 5), torch.rand(3), 0.5)


def test_roi_align_max_mode_is_refused_clearly():
    from mmcv.ops import roi_align
    rois = torch.tensor([[0.0, 1.0, 1.0, 6.0, 6.0]])
    with standin_kernels(), pytest.raises(mmcv_ext.MissingKernelError, match="pool_mode='max'"):
        roi_align(torch.rand(1, 2, 8, 8), rois, 2, 1.0, 0, 'max', True)


def test_a_compiled_ext_wins_over_the_stand_in(tmp_path):
    """Beside mmcv/_ext.py, an extension module _ext is what Python imports."""
    import mmcv
    package = tmp_path / 'mmcv'
    import shutil
    shutil.copytree(osp.dirname(mmcv.__file__), package)
    assert (package / '_ext.py').is_file()
    source = tmp_path / 'fake_ext.c'
    source.write_text(textwrap.dedent('''
        #include <Python.h>
        static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_ext", "a compiled _ext", -1};
        PyMODINIT_FUNC PyInit__ext(void) { return PyModule_Create(&def); }
    '''))
    target = package / ('_ext' + sysconfig.get_config_var('EXT_SUFFIX'))
    subprocess.run(['gcc', '-shared', '-fPIC', '-I', sysconfig.get_paths()['include'],
                    str(source), '-o', str(target)], check=True)
    probe = ('import mmcv._ext, resnet_backbone.mmcv_ext as s; '
             'print(mmcv._ext.__file__, mmcv._ext.__doc__, s.mmcv_ext_kind())')
    env = dict(os.environ, PYTHONPATH=f'{tmp_path}{os.pathsep}{ROOT}')
    out = subprocess.run([sys.executable, '-c', probe], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[0] == str(target) and out[-1] == 'compiled'
    assert ' '.join(out[1:-1]) == 'a compiled _ext'


# ------------------------------------------------------------------ RoIAlign
def test_roi_align_matches_the_compiled_kernel_bitwise(replayed):
    reference, standin = replayed['roi_align']
    cases = [n for n in reference if 'layout' not in reference[n]]
    assert len(cases) == 34 and standin.keys() == reference.keys()
    for name in cases:
        ref, got = reference[name], standin[name]
        assert ref['output'].shape == got['output'].shape, name
        assert torch.equal(got['output'], ref['output']), name
        assert torch.equal(got['grad_input'], ref['grad_input']), name
    # the cases reach the kernel's corners: empty bins, all-zero outputs, gradients
    assert reference['no-rois']['output'].shape[0] == 0
    assert all(reference[n]['output'].abs().sum() > 0 for n in cases if n != 'no-rois')


@pytest.mark.parametrize('layout', LAYOUTS)
def test_roi_align_reads_channels_last_and_strided_maps(replayed, layout):
    """mmcv's CPU kernel reads such maps as if they were contiguous NCHW: the recorded
    compiled result is wrong. The stand-in returns what the contiguous map gives."""
    reference, standin = replayed['roi_align']
    name = next(n for n in reference if reference[n].get('layout') == layout)
    correct = reference[name[:-len(layout) - 1]]
    assert torch.equal(standin[name]['output_as_read'], correct['output'])
    assert torch.equal(standin[name]['grad_input_as_read'], correct['grad_input'])
    assert not torch.allclose(reference[name]['output_as_read'], correct['output'])


def test_roi_align_runs_in_process_too():
    """The same kernel outside the pinned process, with autograd, on a float64 map."""
    case = dict(input=torch.randn(1, 2, 10, 12, dtype=torch.float64),
                rois=torch.tensor([[0.0, 2.0, 3.0, 30.0, 25.0]], dtype=torch.float64),
                output_size=7, spatial_scale=0.25, sampling_ratio=2, aligned=True)
    import torchvision
    with standin_kernels():
        out, grad = run_roi_align(case)
    expected = torchvision.ops.roi_align(case['input'], case['rois'], 7, 0.25, 2, True)
    assert out.dtype == torch.float64 and torch.equal(out, expected)
    assert grad.shape == case['input'].shape and grad.abs().sum() > 0


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_amp_dtypes_run_in_float32(dtype):
    """Under AMP, mmcv's wrappers hand the kernels bfloat16/half maps, RoIs, gradients and
    boxes; torchvision's backward kernels take neither bfloat16 nor, on CPU, half. The
    stand-in computes in float32 and rounds the results to the caller's dtype."""
    from mmcv.ops import deform_conv2d, nms
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 3, 12, 14, generator=g).to(dtype)
    rois = torch.tensor([[0, 1.5, 2.0, 30.0, 25.0], [1, 0.0, 4.0, 50.0, 40.0]]).to(dtype)
    grad_out = torch.randn(2, 3, 7, 7, generator=g).to(dtype)
    case = dict(output_size=7, spatial_scale=0.25, sampling_ratio=2, aligned=True)
    with standin_kernels():
        low = run_roi_align(dict(case, input=feat, rois=rois), grad=grad_out)
        full = run_roi_align(dict(case, input=feat.float(), rois=rois.float()),
                             grad=grad_out.float())
    for got, expected in zip(low, full):
        assert got.dtype == dtype and torch.equal(got, expected.to(dtype))

    x, offset = torch.randn(1, 4, 7, 7, generator=g), torch.randn(1, 18, 7, 7, generator=g)
    weight = torch.randn(3, 4, 3, 3, generator=g)
    results = []
    for dt in (dtype, torch.float32):
        leaves = [t.to(dtype).to(dt).requires_grad_(True) for t in (x, offset, weight)]
        with standin_kernels():
            out = deform_conv2d(*leaves, 1, 1)
            out.backward(torch.ones_like(out))
        results.append([out.detach()] + [t.grad for t in leaves])
    for got, expected in zip(*results):
        assert got.dtype == dtype and torch.equal(got, expected.to(dtype))

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    with standin_kernels():
        for offset_ in (0, 1):
            _, keep = nms(boxes.to(dtype), scores.to(dtype), 0.5, offset=offset_)
            assert keep.tolist() == [0, 2]


# ----------------------------------------------------------------------- NMS
def test_nms_keeps_the_same_boxes_in_the_same_order(replayed):
    reference, standin = replayed['nms']
    assert len(reference) == 20 and standin.keys() == reference.keys()
    for name, ref in reference.items():
        got = standin[name]
        assert torch.equal(got['keep'], ref['keep']), name
        assert torch.equal(got['dets'], ref['dets']), name
    assert reference['nms-empty']['keep'].numel() == 0
    # ties decide the order here: torchvision's own stable order would differ
    ref = reference['nms-tied-iou0.5-offset0']
    import torchvision
    assert not torch.equal(torchvision.ops.nms(ref['boxes'], ref['scores'], 0.5), ref['keep'])


def test_nms_threshold_is_compared_in_float32():
    """mmcv's kernel takes the threshold as a float. These boxes overlap by exactly
    float32(0.3) (3x10 inside 10x10), which is above the double 0.3: torchvision with the
    double would suppress the second box, mmcv keeps it."""
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 3.0, 10.0]])
    scores = torch.tensor([0.9, 0.8])
    assert torch.tensor(0.3).item() > 0.3
    assert mmcv_ext.nms(boxes, scores, 0.3, 0).tolist() == [0, 1]
    assert mmcv_ext.nms(boxes, scores, 0.29, 0).tolist() == [0]


# ---------------------------------------------------------------------- DCN
@pytest.mark.parametrize('part', ['dcn', 'dcn_ours'])
def test_dcn_forward_is_bitwise_and_gradients_within_1e5(replayed, part):
    """mmcv's DCN wrappers on the stand-in, and the backbone's own DCN op
    (resnet_backbone.dcn, torchvision backend), against mmcv's compiled kernels."""
    reference, standin = replayed[part]
    assert len(reference) == 18 and standin.keys() == reference.keys()
    for name, ref in reference.items():
        got = standin[name]
        assert torch.equal(got['output'], ref['output']), name
        for key in [k for k in ref if k.startswith('grad_')]:
            err = relative_error(got[key], ref[key])
            assert err <= 1e-5, f'{name} {key}: {err:.2e}'
            assert ref[key].abs().sum() > 0, f'{name} {key} is all zero'


def test_dcn_weight_gradient_without_the_input_gradient():
    """mmcv asks for the weight gradient alone when neither input nor offset needs one."""
    from mmcv.ops import deform_conv2d
    g = torch.Generator().manual_seed(0)
    x, offset = torch.randn(2, 4, 7, 7, generator=g), torch.randn(2, 18, 7, 7, generator=g)
    weight = torch.randn(3, 4, 3, 3, generator=g)
    with standin_kernels():
        w_alone = weight.clone().requires_grad_(True)
        deform_conv2d(x, offset, w_alone, 1, 1).sum().backward()
        w_both, x_grad = weight.clone().requires_grad_(True), x.clone().requires_grad_(True)
        deform_conv2d(x_grad, offset, w_both, 1, 1).sum().backward()
    assert torch.equal(w_alone.grad, w_both.grad) and w_alone.grad.abs().sum() > 0


# -------------------------------------------------------- sigmoid focal loss
def py_focal_loss(pred, target, gamma, alpha, weight=None):
    """The loss in float64 from its definition (MMDetection's py_sigmoid_focal_loss)."""
    one_hot = torch.nn.functional.one_hot(target, pred.size(1) + 1)[:, :-1].to(pred.dtype)
    p = pred.sigmoid()
    pt = (1 - p) * one_hot + p * (1 - one_hot)
    focal = (alpha * one_hot + (1 - alpha) * (1 - one_hot)) * pt.pow(gamma)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        pred, one_hot, reduction='none') * focal
    if weight is not None:
        loss = loss * torch.cat([weight, weight.new_ones(1)])[target].unsqueeze(1)
    return loss


@pytest.mark.parametrize('with_weight', [False, True])
def test_sigmoid_focal_loss_forward_and_backward(with_weight):
    from mmcv.ops import sigmoid_focal_loss
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(50, 4, generator=g) * 3
    target = torch.randint(0, 5, (50,), generator=g)  # 4 = background
    weight = torch.rand(4, generator=g) + 0.5 if with_weight else None
    x = pred.clone().requires_grad_(True)
    with standin_kernels():
        loss = sigmoid_focal_loss(x, target, 2.0, 0.25, weight, 'none')
        upstream = torch.rand(loss.shape, generator=g)
        loss.backward(upstream)
    x64 = pred.double().requires_grad_(True)
    ref = py_focal_loss(x64, target, 2.0, 0.25, None if weight is None else weight.double())
    ref.backward(upstream.double())
    assert relative_error(loss.detach().double(), ref.detach()) < 1e-6
    assert relative_error(x.grad.double(), x64.grad) < 1e-6
    with standin_kernels():
        mean = sigmoid_focal_loss(pred, target, 2.0, 0.25, weight, 'mean')
    assert mean.item() == pytest.approx(ref.sum().item() / 50, rel=1e-5)


# ----------------------------------------------- Mask R-CNN, one whole step
def test_mask_rcnn_step_and_prediction_are_identical(replayed):
    """MMDetection's Mask R-CNN R-18-FPN: one training step and a prediction, mmcv's
    compiled kernels vs the stand-in: the same losses, gradients and detections."""
    reference, standin = replayed['mask_rcnn']
    assert standin['log_vars'].keys() == reference['log_vars'].keys()
    for key, value in reference['log_vars'].items():
        assert torch.equal(standin['log_vars'][key], value), key
    assert len(reference['grad_digests']) > 80
    differing = [n for n, d in reference['grad_digests'].items()
                 if standin['grad_digests'].get(n) != d]
    assert not differing, [(n, standin['grad_norms'][n].item(),
                            reference['grad_norms'][n].item()) for n in differing[:5]]
    assert standin['grad_digests'].keys() == reference['grad_digests'].keys()
    for ref, got in zip(reference['detections'], standin['detections'], strict=True):
        assert len(ref['scores']) == 30  # score_thr 0: a full list to compare
        for key in ('bboxes', 'scores', 'labels', 'mask_pixels'):
            assert torch.equal(got[key], ref[key]), key
        assert got['masks_digest'] == ref['masks_digest']


# ------------------------------------------------ CUDA (tools/gpu_check.sh)
def cuda_replay(cases, run, device='cuda'):
    """Each case's inputs moved to ``device``, run through mmcv's wrappers on the stand-in."""
    out = {}
    with standin_kernels():
        for name, case in cases.items():
            moved = {k: v.to(device) if torch.is_tensor(v) else v for k, v in case.items()}
            out[name] = run(moved)
    return out


@pytest.mark.cuda
def test_roi_align_on_cuda_matches_the_cpu_reference():
    reference = load(reference_path('roi_align'))
    cases = {n: c for n, c in reference.items() if 'layout' not in c}
    for name, (out, grad) in cuda_replay(cases, run_roi_align).items():
        ref = reference[name]
        assert (out.cpu() - ref['output']).abs().max().item() <= 1e-5, name
        assert (grad.cpu() - ref['grad_input']).abs().max().item() <= 1e-5, name


@pytest.mark.cuda
def test_nms_on_cuda_keeps_the_cpu_reference_boxes():
    """Distinct scores: the same boxes in the same order (no overlap sits exactly at a
    threshold here). Tied scores: CUDA's sort may order ties differently, as mmcv's does."""
    from mmcv_reference import run_nms
    reference = load(reference_path('nms'))
    cases = {n: c for n, c in reference.items() if 'tied' not in n}
    for name, (dets, keep) in cuda_replay(cases, run_nms).items():
        assert torch.equal(keep.cpu(), reference[name]['keep']), name


@pytest.mark.cuda
def test_dcn_on_cuda_matches_the_cpu_reference():
    from mmcv_reference import run_dcn
    reference = load(reference_path('dcn'))
    for name, (out, grads) in cuda_replay(reference, run_dcn).items():
        ref = reference[name]
        assert relative_error(out.cpu(), ref['output']) <= 1e-5, name
        for key, grad in grads.items():
            assert relative_error(grad.cpu(), ref[key]) <= 1e-4, f'{name} {key}'


@pytest.mark.cuda
def test_sigmoid_focal_loss_on_cuda_matches_cpu():
    from mmcv.ops import sigmoid_focal_loss
    pred = torch.randn(64, 5, generator=torch.Generator().manual_seed(0)) * 3
    target = torch.arange(64) % 6
    results = []
    for device in ('cpu', 'cuda'):
        x = pred.to(device).requires_grad_(True)
        with standin_kernels():
            loss = sigmoid_focal_loss(x, target.to(device), 2.0, 0.25, None, 'sum')
        loss.backward()
        results.append((loss.item(), x.grad.cpu()))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-5)
    assert relative_error(results[1][1], results[0][1]) <= 1e-5


def test_mmsyncbn_becomes_torch_syncbn_without_compiled_ops():
    """mmcv's MMSyncBN runs kernels the stand-in lacks: a norm_cfg asking for it is
    built as torch's SyncBatchNorm (plain BN outside a process group)."""
    from resnet_backbone.norms import build_norm, mmsyncbn_as_syncbn
    with pytest.warns(UserWarning, match="type='MMSyncBN' needs mmcv's compiled ops"):
        cfg = mmsyncbn_as_syncbn(dict(type='MMSyncBN', stats_mode='N', requires_grad=True))
    assert cfg == dict(type='SyncBN', requires_grad=True)
    name, layer = build_norm(dict(type='MMSyncBN'), 8)
    assert isinstance(layer, torch.nn.SyncBatchNorm) and name == 'bn'
    x = torch.randn(4, 8, 5, 5)
    assert torch.allclose(layer.train()(x), torch.nn.functional.batch_norm(
        x, None, None, layer.weight, layer.bias, True), atol=1e-6)
    assert mmsyncbn_as_syncbn(dict(type='GN', num_groups=4)) == dict(type='GN', num_groups=4)
