"""Every ResNet / ResNetV1d / ResNeXt backbone in MMDetection's model zoo, with only
``type`` changed: same state-dict keys (strict load), same trainable parameters,
same outputs, input gradients and BN statistics as MMDetection's own backbone.

The zoo configs ship inside the mmdet wheel (``mmdet/.mim/configs``); each
distinct backbone dict (``init_cfg`` aside) is checked once, in float64: there
rounding cannot hide a structural difference (observed: about 1e-13, up to
6e-8 for input gradients through DCN). Float32 closeness is shown feature by
feature in test_parity_mmdet.py; at full width, 101 layers of batch-statistics BN or GN amplify float32 rounding
(different conv kernels) to about 1e-4 relative, so it is not re-checked here.
"""
import copy
import glob
import json
import os.path as osp

import pytest
import torch

from helpers import max_diff, paired, plain, run_with_grad

ZOO_TYPES = ('ResNet', 'ResNetV1d', 'ResNeXt')
TOL = 1e-6


def zoo_backbones():
    """{canonical json: (backbone dict, first config using it)} over the zoo."""
    import mmdet
    from mmengine.config import Config
    root = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs')
    if not osp.isdir(root):
        pytest.skip("mmdet's zoo configs are not in this install")
    found = {}
    for path in sorted(glob.glob(osp.join(root, '**', '*.py'), recursive=True)):
        if '_base_' in path:
            continue
        try:
            backbone = Config.fromfile(path).model.get('backbone')
        except Exception:  # noqa: BLE001  (configs of other model kinds, projects)
            continue
        if not isinstance(backbone, dict) or backbone.get('type') not in ZOO_TYPES:
            continue
        backbone = plain(backbone)
        backbone.pop('init_cfg', None)
        backbone.pop('pretrained', None)
        key = json.dumps(backbone, sort_keys=True)
        found.setdefault(key, (backbone, osp.relpath(path, root)))
    return found


def _trainable(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


def test_every_zoo_backbone_is_a_drop_in():
    settings = zoo_backbones()
    # mmdet 3.3.0 ships 76 distinct settings across 531 configs; far fewer means
    # the sweep lost its input, not that the zoo shrank.
    assert len(settings) >= 70, f'only {len(settings)} zoo backbone settings found'
    failures = []
    for backbone, where in settings.values():
        try:
            check_drop_in(copy.deepcopy(backbone))
        except Exception as e:  # noqa: BLE001  (collect all, report together)
            failures.append(f'{where}: {type(e).__name__}: {e}')
    assert not failures, f'{len(failures)} of {len(settings)} zoo backbones differ:\n' + \
        '\n'.join(failures)


def check_drop_in(backbone):
    ref, ours = paired(backbone)
    assert list(ours.state_dict()) == list(ref.state_dict()), 'state-dict keys'
    ref.train()
    ours.train()
    assert _trainable(ours) == _trainable(ref), 'trainable parameters'
    ref, ours = ref.double(), ours.double()
    # mmcv's DCN needs C5 >= 3x3
    size = 96 if backbone.get('dcn') else 64
    x = torch.randn(1, 3, size, size, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    for train in (False, True):
        ref_out, ref_grad = run_with_grad(ref, x, train)
        out, grad = run_with_grad(ours, x, train)
        assert [o.shape for o in out] == [o.shape for o in ref_out], 'output shapes'
        assert max_diff(out, ref_out) <= TOL, f'outputs differ (train={train})'
        assert (grad - ref_grad).abs().max().item() <= TOL, f'input grads differ (train={train})'
    ours_sd = ours.state_dict()
    for key, value in ref.state_dict().items():
        if 'running' in key:
            assert torch.allclose(ours_sd[key], value, atol=TOL), f'BN statistics {key}'
