"""The ResNet family: ResNet-D, ResNeXt, Wide ResNet, pre-activation, plugins, any depth."""
import pytest
import torch
import torchvision

from helpers import assert_parity, max_diff, paired, randomize
from resnet_backbone import (PreActBasicBlock, PreActBottleneck, ResNet50D, ResNetBackbone,
                             ResNeXt101_32x4d, ResNeXt101_64x4d, WideResNet50_2)
from resnet_backbone.checkpoint import load_checkpoint
from test_parity_torchvision import torchvision_features

TOL = 1e-5


def _parity(cfg, x=None, train_modes=(False, True)):
    x = torch.randn(2, 3, 64, 64) if x is None else x
    assert_parity(*paired(cfg), x, train_modes, TOL)


@pytest.mark.parametrize('depth,groups', [(50, 32), (101, 32), (50, 64), (101, 64)])
def test_resnext_parity_with_mmdet(depth, groups):
    # the grouped width does not shrink with base_channels (MMDetection's rule),
    # so keep the input small; train mode once, on the cheapest
    _parity(dict(type='ResNeXt', depth=depth, groups=groups, base_width=4, frozen_stages=1),
            torch.randn(1, 3, 64, 64),
            train_modes=(False, True) if (depth, groups) == (50, 32) else (False,))


@pytest.mark.parametrize('avg_down_only', [False, True])
def test_resnetv1d_parity_with_mmdet(avg_down_only):
    if avg_down_only:
        _parity(dict(type='ResNet', depth=50, avg_down=True, frozen_stages=-1))
    else:
        _parity(dict(type='ResNetV1d', depth=50, frozen_stages=1))


def test_resnext_groups1_is_plain_resnet():
    """MMDetection's ResNeXt ignores base_width when groups=1; so do we."""
    _parity(dict(type='ResNeXt', depth=50, groups=1, base_width=4), train_modes=(False,))


@pytest.mark.parametrize('arch,kwargs', [
    ('resnext50_32x4d', dict(depth=50, groups=32, base_width=4)),
    ('resnext101_32x8d', dict(depth=101, groups=32, base_width=8)),
    ('wide_resnet50_2', dict(depth=50, widen_factor=2)),
])
def test_torchvision_family_parity(arch, kwargs):
    tv = randomize(getattr(torchvision.models, arch)(weights=None)).eval()
    ours = ResNetBackbone(**kwargs).eval()
    report = load_checkpoint(ours, tv.state_dict(), strict=True)
    assert report.dialect == 'torchvision' and not report.missing
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert max_diff(ours(x), torchvision_features(tv, x)) <= TOL


def test_timm_resnet50d_parity(tmp_path):
    timm = pytest.importorskip('timm')
    ref = randomize(timm.create_model('resnet50d', pretrained=False)).eval()
    path = tmp_path / 'resnet50d_timm.pth'
    torch.save(ref.state_dict(), path)
    assert 'conv1.0.weight' in ref.state_dict() and 'bn1.weight' in ref.state_dict()
    ours = ResNet50D(init_cfg=dict(type='Pretrained', checkpoint=str(path))).eval()
    ours.init_weights()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = ref.maxpool(ref.act1(ref.bn1(ref.conv1(x))))
        expected = []
        for name in ('layer1', 'layer2', 'layer3', 'layer4'):
            feats = getattr(ref, name)(feats)
            expected.append(feats)
        assert max_diff(ours(x), expected) <= TOL


def test_presets():
    r50d = ResNet50D()
    assert r50d.deep_stem and r50d.avg_down and r50d.depth == 50
    x101 = ResNeXt101_32x4d()
    assert x101.layer1[0].conv2.groups == 32 and x101.layer1[0].conv2.out_channels == 128
    assert ResNeXt101_64x4d().layer1[0].conv2.out_channels == 256
    wide = WideResNet50_2()
    assert wide.layer1[0].conv2.out_channels == 128 and wide.layer1[0].conv3.out_channels == 256
    from mmdet.registry import MODELS
    for name in ('ResNet50D', 'ResNeXt101_32x4d', 'ResNeXt101_64x4d', 'WideResNet50_2',
                 'ResNetBackbone', 'ResNetV1dBackbone', 'ResNeXtBackbone'):
        assert MODELS.get(name) is not None, name
    # a preset accepts overrides like any constructor argument
    assert ResNeXt101_32x4d(frozen_stages=2, out_indices=(3,)).out_channels == [2048]


def test_1202_layer_network_trains():
    model = ResNetBackbone(depth=1202, stage_blocks=(200, 200, 200), num_stages=3,
                           strides=(1, 2, 2), dilations=(1, 1, 1), out_indices=(0, 1, 2),
                           base_channels=4, stem_channels=4)
    assert model.block_kind == 'basic'
    convs = sum(1 for m in model.modules() if isinstance(m, torch.nn.Conv2d)
                and m.kernel_size == (3, 3))
    assert convs == 1200  # 600 blocks x 2 convs; + stem + fc-less head = 1202 - 1
    model.train()
    outs = model(torch.randn(2, 3, 32, 32))
    sum(o.mean() for o in outs).backward()
    assert model.layer1[0].conv1.weight.grad is not None
    assert torch.isfinite(model.conv1.weight.grad).all()


@pytest.mark.parametrize('depth,block_cls', [(18, PreActBasicBlock), (50, PreActBottleneck)])
def test_preact_branch_is_bn_relu_conv(depth, block_cls):
    model = ResNetBackbone(depth=depth, preact=True, frozen_stages=-1, norm_eval=False).eval()
    block = model.layer1[1]
    assert isinstance(block, block_cls) and block.downsample is None
    order = []
    hooks = [getattr(block, name).register_forward_hook(lambda m, i, o, n=name: order.append(n))
             for name in dict(block.named_children()) if name[:2] in ('bn', 'co')]
    x = torch.randn(1, block.conv1.in_channels, 8, 8)
    block(x)
    for h in hooks:
        h.remove()
    expected = []
    for i in range(1, block.num_convs + 1):
        expected += [f'bn{i}', f'conv{i}']
    assert order == expected
    # identity path untouched: with the branch zeroed the block is exactly the identity,
    # negative inputs included (a ReLU after the sum would clip them)
    torch.nn.init.zeros_(getattr(block, f'conv{block.num_convs}').weight)
    assert torch.equal(block(x), x)
    assert (x < 0).any()
    # every returned level is normalised: BN-ReLU output is non-negative
    outs = model(torch.randn(1, 3, 64, 64))
    assert all((o >= 0).all() for o in outs) and len(model.post_norms) == 4


def test_preact_training_lowers_loss():
    torch.manual_seed(0)
    model = ResNetBackbone(depth=18, preact=True, base_channels=8, frozen_stages=-1,
                           norm_eval=False, out_indices=(3,)).train()
    head = torch.nn.Linear(64, 2)
    x = torch.randn(16, 3, 32, 32)
    y = (x[:, 0].mean(dim=(1, 2)) > 0).long()
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.05,
                          momentum=0.9)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        logits = head(model(x)[0].mean(dim=(2, 3)))
        loss = torch.nn.functional.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


PLUGINS = {
    'context-1/4': [dict(cfg=dict(type='ContextBlock', ratio=1. / 4),
                         stages=(False, True, True, True), position='after_conv3')],
    'context-1/16': [dict(cfg=dict(type='ContextBlock', ratio=1. / 16),
                          stages=(False, True, True, True), position='after_conv3')],
    'gen-attention+nonlocal': [
        dict(cfg=dict(type='GeneralizedAttention', spatial_range=-1, num_heads=8,
                      attention_type='0010', kv_stride=2),
             stages=(False, False, True, True), position='after_conv2'),
        dict(cfg=dict(type='NonLocal2d', reduction=4), stages=(False, False, True, True),
             position='after_conv2')],
}


@pytest.mark.parametrize('name', list(PLUGINS))
def test_plugins_parity_with_mmdet(name):
    _parity(dict(type='ResNet', depth=50, frozen_stages=1, plugins=PLUGINS[name]))


def test_a_plugin_registered_in_mmdetection_only():
    """mmcv builds plugins from the default scope's registry (mmdet in MMDetection configs):
    a type only MMDetection registers (DropBlock) is accepted, as mmcv would build it."""
    from helpers import mmdet_backbone, ours_from_mmdet_cfg
    from mmdet.models.layers import DropBlock
    cfg = dict(type='ResNet', depth=50, base_channels=16, plugins=[dict(
        cfg=dict(type='DropBlock', drop_prob=0.1, block_size=3), position='after_conv2',
        stages=(False, False, True, True))])
    ref = randomize(mmdet_backbone(cfg))
    ours = ours_from_mmdet_cfg(cfg)
    assert sum(isinstance(m, DropBlock) for m in ours.modules()) == 9
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.eval()
    x = torch.randn(1, 3, 64, 64)
    assert max_diff(ref(x), ours.eval()(x)) < 1e-4


@pytest.mark.parametrize('downsample', [torch.nn.Identity(), torch.nn.Sequential(
    torch.nn.Identity()), torch.nn.Conv2d(16, 16, 1)], ids=['module', 'sequential', 'conv'])
def test_any_downsample_module_is_called(downsample):
    """A block's ``downsample`` may be any module, as in MMDetection: it is called."""
    from resnet_backbone import Bottleneck
    torch.manual_seed(0)
    block = randomize(Bottleneck(16, 4, downsample=downsample)).eval()
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        out = block(x)
        expected = torch.relu(block.bn3(block.conv3(torch.relu(block.bn2(block.conv2(
            torch.relu(block.bn1(block.conv1(x)))))))) + downsample(x))
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-5)
