"""Checkpoint dialects, safe loading and broken files."""
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision

from helpers import max_diff, randomize
from resnet_backbone import ResNetBackbone
from resnet_backbone.checkpoint import (CheckpointError, UnsafeCheckpointError,
                                        check_normalization, convert_state_dict,
                                        load_checkpoint, normalization_for, resolve_checkpoint)
from test_dcn import randomize_offsets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
X = torch.randn(1, 3, 64, 64)


NARROW = dict(depth=50, base_channels=16)  # converters do not care about width


def reference(**kw):
    ref = randomize(ResNetBackbone(**NARROW, **kw)).eval()
    randomize_offsets(ref)
    return ref


def load_via_init_cfg(path, narrow=True, **kw):
    arch = NARROW if narrow else dict(depth=50)
    model = ResNetBackbone(**arch, init_cfg=dict(type='Pretrained', checkpoint=str(path)), **kw)
    model.init_weights()
    return model.eval()


def same_outputs(a, b):
    with torch.no_grad():
        return max_diff(a(X), b(X)) == 0


def test_torchvision_dialect(tmp_path):
    tv = randomize(torchvision.models.resnet50(weights=None))
    torch.save(tv.state_dict(), tmp_path / 'tv.pth')
    ours = load_via_init_cfg(tmp_path / 'tv.pth', narrow=False)
    ref = ResNetBackbone(depth=50).eval()
    ref.load_state_dict({k: v for k, v in tv.state_dict().items() if not k.startswith('fc.')})
    assert same_outputs(ours, ref)


def test_mmdet_backbone_and_detector_dialects(tmp_path):
    ref = reference()
    torch.save({'meta': {'epoch': 12}, 'state_dict': ref.state_dict()}, tmp_path / 'bb.pth')
    assert same_outputs(load_via_init_cfg(tmp_path / 'bb.pth'), ref)
    detector = {'backbone.' + k: v for k, v in ref.state_dict().items()}
    detector['neck.lateral_convs.0.conv.weight'] = torch.zeros(256, 64, 1, 1)
    detector['rpn_head.rpn_cls.weight'] = torch.zeros(3, 256, 1, 1)
    torch.save({'meta': {}, 'state_dict': detector}, tmp_path / 'det.pth')
    assert same_outputs(load_via_init_cfg(tmp_path / 'det.pth'), ref)


def detectron2_key(k):
    """Our key -> detectron2's, from detectron2's documented naming."""
    if k.startswith('conv1.'):
        return 'stem.conv1.' + k[6:]
    if k.startswith('bn1.'):
        return 'stem.conv1.norm.' + k[4:]
    m = re.match(r'layer(\d)\.(\d+)\.(.*)', k)
    stage, block, rest = int(m[1]) + 1, m[2], m[3]
    rest = re.sub(r'^bn(\d)\.', r'conv\1.norm.', rest)
    rest = re.sub(r'^conv(\d)\.conv_offset\.', r'conv\1_offset.', rest)
    rest = rest.replace('downsample.0.', 'shortcut.').replace('downsample.1.', 'shortcut.norm.')
    return f'res{stage}.{block}.{rest}'


DCN = dict(dcn=dict(type='DCNv2', deform_groups=1), stage_with_dcn=(False, True, True, True))


@pytest.mark.parametrize('fmt', ['pkl', 'pth'])
def test_detectron2_dialect_with_dcn(tmp_path, fmt):
    ref = reference(**DCN)
    state = {detectron2_key(k): v for k, v in ref.state_dict().items()
             if not k.endswith('num_batches_tracked')}
    assert 'res3.0.conv2_offset.weight' in state and 'res2.0.shortcut.norm.weight' in state
    if fmt == 'pkl':
        path = tmp_path / 'R-50.pkl'
        with open(path, 'wb') as f:
            pickle.dump({'model': {k: v.numpy() for k, v in state.items()},
                         '__author__': 'test', 'matching_heuristics': True}, f)
    else:
        path = tmp_path / 'model_final.pth'
        torch.save({'model': {'backbone.bottom_up.' + k: v for k, v in state.items()}}, path)
    assert same_outputs(load_via_init_cfg(path, **DCN), ref)


def caffe2_name(k):
    """Our key -> Detectron1/Caffe2 blob name (AffineChannel BN: _bn_s, _bn_b)."""
    parts = k.split('.')
    if k == 'conv1.weight':
        return 'conv1_w'
    if parts[0] == 'bn1':
        return {'weight': 'res_conv1_bn_s', 'bias': 'res_conv1_bn_b'}.get(parts[1])
    if not parts[0].startswith('layer') or parts[-1] not in ('weight', 'bias'):
        return None
    prefix = f'res{int(parts[0][5:]) + 1}_{parts[1]}_branch'
    if parts[2] == 'downsample':
        branch, is_conv = '1', parts[3] == '0'
    else:
        branch, is_conv = {'1': '2a', '2': '2b', '3': '2c'}[parts[2][-1]], parts[2][:4] == 'conv'
    if is_conv:
        return f'{prefix}{branch}_w'
    return f'{prefix}{branch}_bn_{"s" if parts[-1] == "weight" else "b"}'


def test_caffe2_dialect(tmp_path):
    ref = reference(style='caffe')
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # AffineChannel: statistics 0/1
            m.running_mean.zero_()
            m.running_var.fill_(1)
    blobs = {caffe2_name(k): v.numpy() for k, v in ref.state_dict().items()
             if caffe2_name(k)}
    assert 'res2_0_branch2a_bn_s' in blobs and 'res2_0_branch1_w' in blobs
    blobs['fc1000_w'] = np.zeros((1000, 2048), np.float32)
    with open(tmp_path / 'R-50-caffe2.pkl', 'wb') as f:
        pickle.dump({'blobs': blobs}, f, protocol=2)
    ours = load_via_init_cfg(tmp_path / 'R-50-caffe2.pkl', style='caffe')
    assert same_outputs(ours, ref)


def test_timm_plain_dialect(tmp_path):
    timm = pytest.importorskip('timm')
    t = randomize(timm.create_model('resnet50', pretrained=False))
    torch.save(t.state_dict(), tmp_path / 'timm_r50.pth')
    ours = load_via_init_cfg(tmp_path / 'timm_r50.pth', narrow=False)
    ref = ResNetBackbone(depth=50).eval()
    ref.load_state_dict({k: v for k, v in t.state_dict().items() if not k.startswith('fc.')})
    assert same_outputs(ours, ref)


def test_report_lists_missing_and_unexpected_but_not_fc():
    ref = reference()
    state = dict(ref.state_dict())
    state['fc.weight'] = torch.zeros(1000, 512)
    state['mystery.weight'] = torch.zeros(3)
    del state['layer4.2.bn3.weight']
    report = load_checkpoint(ResNetBackbone(**NARROW), state)
    assert report.unexpected == ['mystery.weight']
    assert report.missing == ['layer4.2.bn3.weight']
    with pytest.raises(CheckpointError, match='strict'):
        load_checkpoint(ResNetBackbone(**NARROW), state, strict=True)


class _CreatesFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


@pytest.mark.parametrize('ext', ['pkl', 'pth'])
def test_malicious_checkpoint_runs_nothing(tmp_path, ext):
    marker = tmp_path / 'pwned.txt'
    path = tmp_path / f'evil.{ext}'
    payload = {'model': {'conv1.weight': _CreatesFile(str(marker))}}
    if ext == 'pkl':
        with open(path, 'wb') as f:
            pickle.dump(payload, f)
    else:
        torch.save(payload, path)
    model = ResNetBackbone(**NARROW)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(model, str(path))
    assert 'Nothing was run' in str(info.value)
    assert not marker.exists()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _unchanged_after_error(path, match):
    model = ResNetBackbone(**NARROW)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(model, str(path))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_truncated_empty_and_wrong_architecture(tmp_path):
    torch.save(reference().state_dict(), tmp_path / 'good.pth')
    data = (tmp_path / 'good.pth').read_bytes()
    (tmp_path / 'truncated.pth').write_bytes(data[:len(data) // 2])
    _unchanged_after_error(tmp_path / 'truncated.pth', 'truncated or corrupt')
    (tmp_path / 'empty.pth').write_bytes(b'')
    _unchanged_after_error(tmp_path / 'empty.pth', 'empty')
    (tmp_path / 'truncated.pkl').write_bytes(pickle.dumps({'model': {'a': np.ones(3)}})[:20])
    _unchanged_after_error(tmp_path / 'truncated.pkl', 'truncated or corrupt')
    torch.save(ResNetBackbone(depth=18, base_channels=16).state_dict(), tmp_path / 'r18.pth')
    _unchanged_after_error(tmp_path / 'r18.pth', r'layer1\.0\.conv1\.weight: checkpoint '
                           r'\(16, 16, 3, 3\) vs model \(16, 16, 1, 1\)')
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), tmp_path / 'alex.pth')
    _unchanged_after_error(tmp_path / 'alex.pth', 'another architecture')


@pytest.mark.parametrize('content', [b'\x10\x00\x00\x00\x00\x00\x00\x00{not json at all',
                                     b'garbage', b'\xff' * 64], ids=['bad-json', 'short', 'ff'])
def test_damaged_safetensors_name_the_file(tmp_path, content):
    """safetensors' own error does not say which file: ours does, like every loader's."""
    path = tmp_path / 'weights.safetensors'
    path.write_bytes(content)
    _unchanged_after_error(path, re.escape(str(path)) + r'.*not a valid safetensors file')


def test_offline_name_says_what_to_download(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))

    def offline(*a, **k):
        raise urllib.error.URLError('no network')

    monkeypatch.setattr(urllib.request, 'urlopen', offline)
    with pytest.raises(FileNotFoundError) as info:
        resolve_checkpoint('torchvision://resnet50')
    msg = str(info.value)
    assert 'https://download.pytorch.org/models/resnet50-' in msg
    assert str(tmp_path) in msg and 'put it at' in msg
    with pytest.raises(FileNotFoundError, match='dl.fbaipublicfiles.com/detectron2/'
                       'ImageNetPretrained/MSRA/R-50.pkl'):
        resolve_checkpoint('detectron2://ImageNetPretrained/MSRA/R-50.pkl')
    with pytest.raises(FileNotFoundError, match='huggingface.co/timm/resnet50d.ra2_in1k'):
        resolve_checkpoint('timm://resnet50d')
    with pytest.raises(FileNotFoundError, match='resnet50_caffe'):
        resolve_checkpoint('open-mmlab://detectron2/resnet50_caffe')
    # once the file is where the message says, it is used
    cached = os.path.join(str(tmp_path), 'hub', 'checkpoints', msg.split('put it at')[1].split(
        os.sep)[-1].strip())
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    torch.save(reference().state_dict(), cached)
    assert resolve_checkpoint('torchvision://resnet50') == cached


def test_normalisation_tied_to_weights():
    caffe = normalization_for('detectron2://ImageNetPretrained/MSRA/R-50.pkl')
    assert caffe['std'] == [1.0, 1.0, 1.0] and caffe['style'] == 'caffe'
    assert not caffe['bgr_to_rgb']
    tv = normalization_for('torchvision://resnet50')
    assert tv['bgr_to_rgb'] and tv['style'] == 'pytorch'
    mixed = dict(model=dict(
        data_preprocessor=dict(mean=tv['mean'], std=tv['std'], bgr_to_rgb=True),
        backbone=dict(style='pytorch', init_cfg=dict(
            type='Pretrained', checkpoint='open-mmlab://detectron2/resnet50_caffe'))))
    with pytest.warns(UserWarning, match='normalisation does not match'):
        problems = check_normalization(mixed)
    assert len(problems) == 4  # mean, std, bgr_to_rgb, style
    good = dict(model=dict(data_preprocessor=dict(mean=tv['mean'], std=tv['std'],
                                                  bgr_to_rgb=True),
                           backbone=dict(init_cfg=dict(type='Pretrained',
                                                       checkpoint='torchvision://resnet50'))))
    assert check_normalization(good) == []


def test_convert_tool(tmp_path):
    ref = reference(**DCN)
    state = {detectron2_key(k): v.numpy() for k, v in ref.state_dict().items()
             if not k.endswith('num_batches_tracked')}
    with open(tmp_path / 'd2.pkl', 'wb') as f:
        pickle.dump({'model': state}, f)
    out = tmp_path / 'converted.pth'
    run = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'convert_checkpoint.py'),
                          str(tmp_path / 'd2.pkl'), str(out), '--from', 'detectron2'],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert 'detectron2' in run.stdout
    converted = torch.load(out, weights_only=True)
    assert 'layer2.0.conv2.conv_offset.weight' in converted
    model = ResNetBackbone(**NARROW, **DCN).eval()
    model.load_state_dict(converted, strict=False)
    assert same_outputs(model, ref)
    pytest.importorskip('safetensors')
    from safetensors.torch import load_file
    assert set(load_file(str(out.with_suffix('.safetensors')))) == set(converted)


def test_unknown_dialect_is_clear():
    with pytest.raises(ValueError, match="dialect='onnx'"):
        convert_state_dict({'a': torch.ones(1)}, 'onnx')
