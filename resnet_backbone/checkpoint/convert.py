"""Map state dicts from other ecosystems to this backbone's keys.

Dialects:
  ours/mmdet   ``conv1``, ``bn1`` | ``stem.N``, ``layerK.M.convJ``, ``bnJ``, ``downsample.N``
  torchvision  the same keys plus the classifier ``fc.*``
  timm         torchvision keys; the deep stem is ``conv1.N`` + ``bn1``
  detectron2   ``stem.conv1(.norm)``, ``resS.M.convJ(.norm)``, ``shortcut(.norm)``,
               ``convJ_offset`` (DCN)
  caffe2       Detectron1 / MSRA names: ``resS_M_branch2a_w``, ``_bn_s``/``_bn_b``
Wrappers (``state_dict``, ``model``) and prefixes of detector checkpoints
(``backbone.``, ``backbone.bottom_up.``, ``module.``) are removed first.
"""
import re

import torch

from .safe_load import CheckpointError, to_tensor_dict

DIALECTS = ('auto', 'mmdet', 'torchvision', 'timm', 'detectron2', 'caffe2')
_PREFIXES = ('module.', 'backbone.bottom_up.', 'backbone.body.', 'backbone.')
_CAFFE2_KEY = re.compile(r'^(res\d+_\d+_branch|res_conv1_bn|conv1_w$)')


def unwrap_state_dict(obj):
    """The backbone's tensors from a raw checkpoint object (wrappers, prefixes removed)."""
    if not isinstance(obj, dict):
        raise CheckpointError(f'a checkpoint must hold a dict of tensors, got '
                              f'{type(obj).__name__}')
    for wrapper in ('state_dict', 'model', 'module', 'blobs'):
        if wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
            break
    state = to_tensor_dict(obj)
    if not state:
        raise CheckpointError('the checkpoint holds no tensors (looked in the top level and in '
                              "'state_dict'/'model')")
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in state):
            # detector checkpoints: keep the backbone's part only
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            break
    return state


def detect_dialect(state):
    keys = set(state)
    if any(_CAFFE2_KEY.match(k) for k in keys):
        return 'caffe2'
    if any(k.startswith('stem.conv1') or re.match(r'res\d\.', k) for k in keys):
        return 'detectron2'
    if 'conv1.0.weight' in keys:
        return 'timm'
    if any(k.startswith('fc.') for k in keys):
        return 'torchvision'
    return 'mmdet'


def _from_timm(state):
    if 'conv1.0.weight' not in state:
        return dict(state)
    out = {}
    for k, v in state.items():
        if k.startswith('conv1.'):
            k = 'stem.' + k[len('conv1.'):]
        elif k.startswith('bn1.'):
            k = 'stem.7.' + k[len('bn1.'):]
        out[k] = v
    return out


def _detectron2_key(k, deep_stem):
    m = re.match(r'^stem\.conv(\d)\.(norm\.)?(.*)$', k)
    if m:
        index, is_norm, rest = int(m[1]), bool(m[2]), m[3]
        if deep_stem:  # DeepLab stem: three convs with norms -> stem.0 .. stem.7
            return f'stem.{3 * (index - 1) + int(is_norm)}.{rest}'
        return f'{"bn1" if is_norm else "conv1"}.{rest}'
    m = re.match(r'^res(\d)\.(\d+)\.(.*)$', k)
    if not m:
        return k
    stage, block, rest = int(m[1]) - 1, m[2], m[3]
    rest = re.sub(r'^conv(\d)\.norm\.', r'bn\1.', rest)
    rest = re.sub(r'^conv(\d)_offset\.', r'conv\1.conv_offset.', rest)
    rest = re.sub(r'^shortcut\.norm\.', 'downsample.1.', rest)
    rest = re.sub(r'^shortcut\.', 'downsample.0.', rest)
    return f'layer{stage}.{block}.{rest}'


def _from_detectron2(state):
    deep_stem = 'stem.conv2.weight' in state
    return {_detectron2_key(k, deep_stem): v for k, v in state.items()}


_CAFFE2_BRANCH = {'2a': '1', '2b': '2', '2c': '3'}


def _from_caffe2(state):
    out = {}
    for k, v in state.items():
        if k == 'conv1_w':
            out['conv1.weight'] = v
            continue
        if k.startswith('res_conv1_bn_'):
            out[f'bn1.{"weight" if k.endswith("_s") else "bias"}'] = v
            continue
        m = re.match(r'^res(\d+)_(\d+)_branch(1|2[abc])_(w|b|bn_s|bn_b)$', k)
        if not m:
            out[k] = v  # reported as unexpected by the loader (e.g. fc1000_w)
            continue
        stage, block, branch, kind = int(m[1]) - 1, m[2], m[3], m[4]
        base = f'layer{stage}.{block}.'
        if branch == '1':
            conv, norm = base + 'downsample.0', base + 'downsample.1'
        else:
            conv, norm = base + 'conv' + _CAFFE2_BRANCH[branch], base + 'bn' + _CAFFE2_BRANCH[branch]
        if kind in ('w', 'b'):
            out[f'{conv}.{"weight" if kind == "w" else "bias"}'] = v
        else:
            out[f'{norm}.{"weight" if kind == "bn_s" else "bias"}'] = v
            # AffineChannel: an already-folded BN, i.e. running stats 0 / 1
            out.setdefault(f'{norm}.running_mean', torch.zeros_like(v))
            out.setdefault(f'{norm}.running_var', torch.ones_like(v))
    return out


_CONVERTERS = {'mmdet': dict, 'torchvision': dict, 'timm': _from_timm,
               'detectron2': _from_detectron2, 'caffe2': _from_caffe2}


def convert_state_dict(obj, dialect='auto'):
    """Return ``(state_dict_in_our_keys, dialect)`` for a raw checkpoint object."""
    if dialect not in DIALECTS:
        raise ValueError(f'dialect={dialect!r} is not supported; allowed: {", ".join(DIALECTS)}')
    state = unwrap_state_dict(obj)
    if dialect == 'auto':
        dialect = detect_dialect(state)
    return _CONVERTERS[dialect](state), dialect
