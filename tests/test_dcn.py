"""Deformable stages: MMDetection parity, both backends, gradcheck, autocast, small maps."""
import copy

import pytest
import torch
import torch.nn.functional as F

from helpers import (assert_parity, max_diff, mmdet_backbone, ours_from_mmdet_cfg, randomize,
                     run_with_grad)
from resnet_backbone import DeformConv2dPack, ResNetBackbone
from resnet_backbone.dcn import deform_conv, mmcv_ops_available

TOL = 1e-5
BACKENDS = ['torchvision', pytest.param('mmcv', marks=pytest.mark.skipif(
    not mmcv_ops_available(), reason='mmcv.ops not built'))]


def dcn_cfg(depth=50, dcn_type='DCN', groups=1, **kw):
    cfg = dict(type='ResNet', depth=depth, frozen_stages=1, norm_eval=True, style='pytorch',
               base_channels=16,
               dcn=dict(type=dcn_type, deform_groups=groups, fallback_on_stride=False),
               stage_with_dcn=(False, True, True, True))
    cfg.update(kw)
    return cfg


GRID = {
    'r50-dcn-g1': dcn_cfg(),
    'r50-dcn-g4': dcn_cfg(groups=4),
    'r50-dcnv2-g1': dcn_cfg(dcn_type='DCNv2'),
    'r50-dcnv2-g4': dcn_cfg(dcn_type='DCNv2', groups=4),
    'r101-dcn': dcn_cfg(101),
    'r50-dcn-caffe': dcn_cfg(style='caffe'),
    'r50-dc5-dcnv2': dcn_cfg(dcn_type='DCNv2', strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2)),
    'r50-dcn-old-spelling': dict(dcn_cfg(), dcn=dict(type='DCN', deformable_groups=1,
                                                     fallback_on_stride=False)),
    'resnext50-dcn': dict(dcn_cfg(dcn_type='DCN'), type='ResNeXt', groups=8, base_width=4),
}


@torch.no_grad()
def randomize_offsets(model, seed=1, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if 'conv_offset' in name:
            p.copy_(torch.randn(p.shape, generator=g) * scale / p[0].numel() ** 0.5
                    if p.dim() > 1 else torch.randn(p.shape, generator=g) * scale)


def paired_dcn(cfg, backend):
    ref = randomize(mmdet_backbone(cfg))
    randomize_offsets(ref)
    ours_cfg = copy.deepcopy(cfg)
    ours_cfg['dcn'] = dict(ours_cfg['dcn'], backend=backend)
    ours = ours_from_mmdet_cfg(ours_cfg)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.parametrize('name', list(GRID))
def test_dcn_parity_with_mmdet(name):
    """The network around the deformable convs, against MMDetection's. Both sides run the
    same kernel here (mmcv's wrapper on the torchvision stand-in, and torchvision): the
    kernels themselves are compared with mmcv's compiled ones in test_mmcv_ext.py."""
    # 128 px: mmdet's DCNv1 with compiled mmcv raises "input image is smaller than kernel"
    # when C5 < 3x3
    assert_parity(*paired_dcn(GRID[name], 'torchvision'), torch.randn(2, 3, 128, 128), tol=TOL)


@pytest.mark.skipif(not mmcv_ops_available(), reason='mmcv.ops not built')
@pytest.mark.parametrize('modulated', [False, True])
def test_backends_agree_on_one_module(modulated):
    """Our two code paths (torchvision directly, or mmcv's wrappers with their small-map
    padding) give the same results; each against mmcv's compiled kernels: test_mmcv_ext.py."""
    m = DeformConv2dPack(16, 16, 3, padding=1, deform_groups=2, modulated=modulated)
    randomize_offsets(m)
    x = torch.randn(2, 16, 12, 10)
    outs = {}
    for backend in ('torchvision', 'mmcv'):
        m.backend = backend
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        y.square().sum().backward()
        outs[backend] = (y.detach(), xi.grad, m.weight.grad.clone())
        m.zero_grad()
    for a, b in zip(outs['torchvision'], outs['mmcv']):
        assert (a - b).abs().max().item() <= TOL


def test_gradcheck_torchvision_backend():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    offset = (0.5 * torch.randn(1, 2 * 9, 5, 4, dtype=torch.float64)).requires_grad_(True)
    mask = torch.rand(1, 9, 5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)

    def fn(x, offset, mask, weight):
        return deform_conv(x, offset, mask, weight, None, (1, 1), (1, 1), (1, 1), 1, 1)

    assert torch.autograd.gradcheck(fn, (x, offset, mask, weight), eps=1e-6, atol=1e-5)


def test_fresh_dcn_equals_plain_conv():
    m = DeformConv2dPack(8, 8, 3, padding=1, modulated=False)
    x = torch.randn(1, 8, 9, 9)
    assert torch.allclose(m(x), F.conv2d(x, m.weight, padding=1), atol=1e-5)
    m2 = DeformConv2dPack(8, 8, 3, padding=1, modulated=True)
    # DCNv2's mask starts at sigmoid(0) = 0.5
    assert torch.allclose(m2(x), 0.5 * F.conv2d(x, m2.weight, padding=1), atol=1e-5)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('size', [(1, 1), (2, 2), (2, 1)])
def test_maps_smaller_than_kernel(size, backend):
    m = DeformConv2dPack(4, 4, 3, padding=1, backend=backend)
    x = torch.randn(1, 4, *size)
    assert torch.allclose(m(x), F.conv2d(x, m.weight, padding=1), atol=1e-6)


def test_small_image_whole_backbone():
    model = ResNetBackbone(depth=50, dcn=dict(type='DCN'),
                           stage_with_dcn=(False, True, True, True)).eval()
    randomize_offsets(model)
    outs = model(torch.randn(1, 3, 40, 40))  # C5 is 2x2, smaller than the 3x3 kernel
    assert outs[-1].shape == (1, 2048, 2, 2)
    assert all(torch.isfinite(o).all() for o in outs)


def test_basic_block_dcn():
    model = ResNetBackbone(depth=18, dcn=dict(type='DCNv2'),
                           stage_with_dcn=(False, True, True, True)).eval()
    assert isinstance(model.layer2[0].conv2, DeformConv2dPack)
    assert not isinstance(model.layer1[0].conv2, DeformConv2dPack)
    plain = ResNetBackbone(depth=18).eval()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all('conv_offset' in k for k in unexpected)
    model.init_weights()  # offsets zero: DCNv2 = 0.5 * plain conv, so compare structure only
    assert all(torch.count_nonzero(p) == 0 for n, p in model.named_parameters()
               if 'conv_offset' in n)
    assert model(torch.randn(1, 3, 64, 64))[-1].shape == (1, 512, 2, 2)


def test_fallback_on_stride():
    model = ResNetBackbone(depth=50, dcn=dict(type='DCN', fallback_on_stride=True),
                           stage_with_dcn=(False, True, True, True))
    assert not isinstance(model.layer2[0].conv2, DeformConv2dPack)  # strided: plain
    assert isinstance(model.layer2[1].conv2, DeformConv2dPack)


def _baseline_and(variant_kw, **kw):
    base = dict(depth=50, dcn=dict(type='DCNv2'), stage_with_dcn=(False, True, True, True), **kw)
    ref = randomize(ResNetBackbone(**base))
    randomize_offsets(ref)
    other = ResNetBackbone(**{**base, **variant_kw})
    other.load_state_dict(ref.state_dict())
    return ref, other


@pytest.mark.parametrize('variant', ['with_cp', 'frozen', 'channels_last'])
def test_dcn_combinations(variant):
    x = torch.randn(2, 3, 64, 64)
    kw = {'with_cp': dict(with_cp=True), 'frozen': dict(frozen_stages=2),
          'channels_last': {}}[variant]
    ref, other = _baseline_and(kw, strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2))
    xin = x
    if variant == 'channels_last':
        other = other.to(memory_format=torch.channels_last)
        xin = x.contiguous(memory_format=torch.channels_last)
    ref_out, ref_grad = run_with_grad(ref, x, True)
    out, grad = run_with_grad(other, xin, True)
    assert max_diff(out, ref_out) <= 1e-4
    # relative: the input gradient reaches |33| here, and a frozen stage folds its BN
    # where the trainable one may run it on the output (float32 rounding apart)
    assert (grad - ref_grad).abs().max().item() <= 1e-5 * ref_grad.abs().max().item()


def test_bf16_autocast_cpu():
    model = ResNetBackbone(depth=50, dcn=dict(type='DCNv2'),
                           stage_with_dcn=(False, True, True, True)).eval()
    randomize(model)
    randomize_offsets(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = model(x)
    for a, b in zip(out, ref):
        rel = (a.float() - b).norm() / b.norm()
        assert rel < 0.05, f'bf16 relative error {rel:.3f} (documented bound 5%)'


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_autocast_cuda(dtype):
    model = ResNetBackbone(depth=50, dcn=dict(type='DCNv2', backend='torchvision'),
                           stage_with_dcn=(False, True, True, True)).cuda().eval()
    randomize(model)
    randomize_offsets(model)
    x = torch.randn(2, 3, 128, 128, device='cuda')
    with torch.no_grad():
        ref = model(x)
        with torch.autocast('cuda', dtype=dtype):
            out = model(x)
    for a, b in zip(out, ref):
        assert ((a.float() - b).norm() / b.norm()) < 0.05
    model.train()
    with torch.autocast('cuda', dtype=dtype):
        loss = sum(o.float().mean() for o in model(x))
    loss.backward()
    assert torch.isfinite(model.layer3[0].conv2.weight.grad).all()
