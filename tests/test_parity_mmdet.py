"""Same weights, same numbers: our backbone against the installed MMDetection ResNet,
with the CPU kernels on (the default) and off (plain PyTorch), and BN folding off."""
import pytest
import torch

from helpers import assert_parity, paired
from resnet_backbone import set_cpu_kernels, set_fold_bn

SETTINGS = {'cpu-kernels': (True, True), 'plain': (False, True), 'plain-no-fold': (False, False)}


@pytest.fixture(params=list(SETTINGS))
def setting(request):
    yield from _apply(request)


@pytest.fixture(params=['cpu-kernels', 'plain'])
def kernels(request):
    yield from _apply(request)


def _apply(request):
    kernels, fold = SETTINGS[request.param]
    previous = set_cpu_kernels(kernels), set_fold_bn(fold)
    yield request.param
    set_cpu_kernels(previous[0])
    set_fold_bn(previous[1])


TOL = 1e-5


def cfg(depth=50, narrow=True, **kw):
    """An mmdet backbone dict; ``narrow`` uses base_channels=16 to keep the grid fast
    (parity is structural: every width goes through the same code)."""
    base = dict(type='ResNet', depth=depth, num_stages=4, out_indices=(0, 1, 2, 3),
                frozen_stages=1, norm_cfg=dict(type='BN', requires_grad=True), norm_eval=True,
                style='pytorch')
    if narrow:
        base.update(base_channels=16)
    base.update(kw)
    return base


GN = dict(type='GN', num_groups=8, requires_grad=True)
GRID = {
    'r18-full': cfg(18, narrow=False),
    'r50-full': cfg(50, narrow=False),
    'r34': cfg(34),
    'r101': cfg(101),
    'r18-caffe': cfg(18, style='caffe'),
    'r50-caffe': cfg(50, style='caffe'),
    'r50-dc5': cfg(50, strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2)),
    'r50-os8': cfg(50, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)),
    'r18-dc5': cfg(18, strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2)),
    'r50-gn': cfg(50, norm_cfg=GN),
    'r50-gn-ws': cfg(50, conv_cfg=dict(type='ConvWS'), norm_cfg=GN),
    'r50-cp': cfg(50, with_cp=True),
    'r18-cp-nofreeze': cfg(18, with_cp=True, frozen_stages=-1),
    'r50-out13': cfg(50, out_indices=(1, 3)),
    'r50-3stages': cfg(50, num_stages=3, strides=(1, 2, 2), dilations=(1, 1, 1),
                       out_indices=(0, 2), frozen_stages=-1),
    'r50-stem32-base8': cfg(50, base_channels=8, stem_channels=32),
    'r18-stem24-base32': cfg(18, stem_channels=24, base_channels=32),
    'r50-v1d': dict(cfg(50), type='ResNetV1d'),
}
FROZEN = [(f, n) for f in range(-1, 5) for n in (True, False)]
# Train-mode BN normalises with batch statistics; 96x96 gives C5 enough values
# per channel that the statistics are well conditioned.
X = (2, 3, 96, 96)


def _check(config, x, train_modes=(False, True)):
    ref, ours = assert_parity(*paired(config), x, train_modes, TOL)
    # BN statistics moved the same way in train mode
    ref_sd, sd = ref.state_dict(), ours.state_dict()
    for k in ref_sd:
        if 'running' in k:
            assert torch.allclose(ref_sd[k], sd[k], atol=TOL), k


@pytest.mark.parametrize('name', list(GRID))
def test_parity_grid(name, setting):
    _check(GRID[name], torch.randn(*X))


@pytest.mark.parametrize('frozen_stages,norm_eval', FROZEN)
def test_parity_frozen_and_norm_eval(frozen_stages, norm_eval, kernels):
    _check(cfg(50, frozen_stages=frozen_stages, norm_eval=norm_eval), torch.randn(*X))


def test_parity_r152_eval():
    _check(cfg(152), torch.randn(1, 3, 64, 64),
           train_modes=(False,))


def test_state_dict_keys_identical():
    ref, ours = paired(cfg(50, narrow=False))
    assert list(ref.state_dict()) == list(ours.state_dict())
    assert 'layer1.0.downsample.0.weight' in ours.state_dict()
    assert 'layer1.0.downsample.1.running_var' in ours.state_dict()
