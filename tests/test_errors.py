"""Every invalid argument or input: a ValueError/TypeError naming parameter, value, allowed."""
import pytest
import torch

from resnet_backbone import ResNetBackbone

BAD_ARGS = [
    (dict(depth=42), ValueError, ['depth=42', '18, 34, 50, 101, 152']),
    (dict(depth='50'), ValueError, ["depth='50'"]),
    (dict(depth=50, num_stages=0), ValueError, ['num_stages=0', '1 to 4']),
    (dict(depth=50, num_stages=5), ValueError, ['num_stages=5', '1 to 4']),
    (dict(depth=50, out_indices=(0, 4)), ValueError, ['out_indices', '4', '0 to 3']),
    (dict(depth=50, out_indices=(-1,)), ValueError, ['out_indices', '-1', '0 to 3']),
    (dict(depth=50, out_indices=(1, 1)), ValueError, ['out_indices=(1, 1)', 'repeats']),
    (dict(depth=50, strides=(1, 2, 2)), ValueError, ['strides=(1, 2, 2)', '4']),
    (dict(depth=50, dilations=(1, 1, 1, 1, 1)), ValueError, ['dilations', '4']),
    (dict(depth=50, strides=(1, 0, 2, 2)), ValueError, ['strides', '>= 1']),
    (dict(depth=50, frozen_stages=7), ValueError, ['frozen_stages=7', '-1 to 4']),
    (dict(depth=50, frozen_stages=-2), ValueError, ['frozen_stages=-2', '-1 to 4']),
    (dict(depth=50, style='tf'), ValueError, ["style='tf'", "'pytorch', 'caffe'"]),
    (dict(depth=50, norm_eval='yes'), TypeError, ['norm_eval', "'yes'"]),
    (dict(depth=50, norm_cfg='BN'), TypeError, ['norm_cfg', "'BN'"]),
    (dict(depth=18, groups=32), ValueError, ['groups=32', 'bottleneck']),
    (dict(depth=42, stage_blocks=(2, 2)), ValueError, ['depth=42', 'stage_blocks=(2, 2)']),
    (dict(depth=50, stage_blocks=(2, 2)), ValueError, ['num_stages=4', '1 to 2']),
    (dict(depth=50, block='pyramid'), ValueError, ["block='pyramid'", "'basic'"]),
    (dict(depth=50, dcn=dict(type='DCNv3')), ValueError, ["dcn.type='DCNv3'", "'DCN'"]),
    (dict(depth=50, dcn=dict(type='DCN'), stage_with_dcn=(True,)), ValueError,
     ['stage_with_dcn', '4']),
    (dict(depth=50, dcn=dict(type='DCN', backend='cuda')), ValueError, ["dcn.backend='cuda'"]),
    (dict(depth=50, plugins=[dict(cfg=dict(type='ContextBlock'), position='after_conv4')]),
     ValueError, ["'after_conv4'", 'after_conv1']),
    (dict(depth=50, in_channels=0), ValueError, ['in_channels=0']),
    (dict(depth=50, channels_last='yes'), ValueError, ["channels_last='yes'", "'auto'"]),
    (dict(depth=50, init_cfg=dict(type='Pretrained', checkpoint='x'), pretrained='y'),
     ValueError, ['init_cfg', 'pretrained']),
]


@pytest.mark.parametrize('kwargs,exc,words', BAD_ARGS, ids=[str(a[0]) for a in BAD_ARGS])
def test_bad_argument(kwargs, exc, words):
    with pytest.raises(exc) as info:
        ResNetBackbone(**kwargs)
    for w in words:
        assert w in str(info.value), f'{w!r} missing from: {info.value}'


BAD_INPUTS = [
    (torch.randn(3, 64, 64), ValueError, ['4-D', '(3, 64, 64)']),
    (torch.randn(1, 1, 3, 64, 64), ValueError, ['4-D']),
    (torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), TypeError,
     ['floating', 'torch.uint8']),
    (torch.randn(1, 4, 64, 64), ValueError, ['4 channels', 'in_channels=3']),
    ([[1.0]], TypeError, ['torch.Tensor', 'list']),
]


@pytest.mark.parametrize('x,exc,words', BAD_INPUTS, ids=['3d', '5d', 'uint8', 'channels', 'list'])
def test_bad_input(x, exc, words):
    model = ResNetBackbone(depth=18).eval()
    with pytest.raises(exc) as info:
        model(x)
    for w in words:
        assert w in str(info.value), f'{w!r} missing from: {info.value}'


def test_nan_detected_with_debug_flag():
    x = torch.randn(1, 3, 64, 64)
    x[0, 0, 3, 3] = float('nan')
    ResNetBackbone(depth=18).eval()(x)  # off by default: no cost, no error
    with pytest.raises(ValueError, match='NaN or Inf'):
        ResNetBackbone(depth=18, check_finite=True).eval()(x)


# the exported blocks and make_stage check their own arguments, as the backbone does
BAD_BLOCK_ARGS = [
    ('Bottleneck', dict(inplanes=64, planes=64, style='tensorflow', stride=2), ValueError,
     ["style='tensorflow'", "'pytorch', 'caffe'"]),
    ('Bottleneck', dict(inplanes=64, planes=64, stride=0), ValueError, ['stride=0', '1 to inf']),
    ('BasicBlock', dict(inplanes=64, planes=64, dilation=0), ValueError,
     ['dilation=0', '1 to inf']),
    ('Bottleneck', dict(inplanes=64, planes=16, groups=0), ValueError, ['groups=0']),
    ('BasicBlock', dict(inplanes=64, planes=64, with_cp=1), TypeError, ['with_cp', '1']),
    ('Bottleneck', dict(inplanes=64, planes=64, downsample='conv'), TypeError,
     ['downsample', 'str']),
    ('Bottleneck', dict(inplanes=64, planes=64,
                        plugins=[dict(cfg=dict(type='WrongPlugin'), position='after_conv2')]),
     ValueError, ["type='WrongPlugin'", 'not a registered plugin']),
    ('make_stage', dict(block='Bottleneck', inplanes=64, planes=64, num_blocks=0), ValueError,
     ['num_blocks=0']),
    ('make_stage', dict(block=torch.nn.Conv2d, inplanes=64, planes=64, num_blocks=2),
     TypeError, ['block must be a residual block class']),
    ('ResStage', dict(blocks=(torch.nn.Identity(),)), TypeError,
     ['residual blocks', 'Identity']),
]


@pytest.mark.parametrize('what,kwargs,exc,words', BAD_BLOCK_ARGS,
                         ids=[f'{a[0]}-{sorted(a[1])[-1]}' for a in BAD_BLOCK_ARGS])
def test_bad_block_and_stage_argument(what, kwargs, exc, words):
    import resnet_backbone as rb
    kwargs = dict(kwargs)
    if kwargs.get('block') == 'Bottleneck':
        kwargs['block'] = rb.Bottleneck
    with pytest.raises(exc) as info:
        if what == 'ResStage':
            rb.ResStage(*kwargs['blocks'])
        else:
            getattr(rb, what)(**kwargs)
    for w in words:
        assert w in str(info.value), f'{w!r} missing from: {info.value}'
