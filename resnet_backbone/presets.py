"""Presets: drop-ins for MMDetection's ResNetV1d and ResNeXt, and common variants.

Each is ``ResNetBackbone`` with other defaults; every argument can still be
overridden. Their registered names: :mod:`resnet_backbone.registry`.
"""
from .backbone import ResNetBackbone


def _preset(name, doc, **defaults):
    def __init__(self, **kwargs):
        for key, value in defaults.items():
            kwargs.setdefault(key, value)
        ResNetBackbone.__init__(self, **kwargs)

    cls = type(name, (ResNetBackbone,), {'__init__': __init__, '__doc__': doc,
                                          'preset': dict(defaults)})
    cls.__module__ = __name__
    return cls


ResNetV1dBackbone = _preset(
    'ResNetV1dBackbone', "Drop-in for MMDetection's ResNetV1d: deep stem + avg-pool shortcut.",
    deep_stem=True, avg_down=True)
ResNeXtBackbone = _preset(
    'ResNeXtBackbone', "Drop-in for MMDetection's ResNeXt (set groups and base_width).")
ResNet50D = _preset('ResNet50D', 'ResNet-50-D (timm resnet50d, MMDetection ResNetV1d-50).',
                    depth=50, deep_stem=True, avg_down=True)
ResNeXt101_32x4d = _preset('ResNeXt101_32x4d', 'ResNeXt-101 32x4d.', depth=101, groups=32,
                           base_width=4)
ResNeXt101_64x4d = _preset('ResNeXt101_64x4d', 'ResNeXt-101 64x4d.', depth=101, groups=64,
                           base_width=4)
WideResNet50_2 = _preset('WideResNet50_2', 'Wide ResNet-50-2 (torchvision wide_resnet50_2).',
                         depth=50, widen_factor=2)

PRESETS = (ResNetV1dBackbone, ResNeXtBackbone, ResNet50D, ResNeXt101_32x4d, ResNeXt101_64x4d,
           WideResNet50_2)
