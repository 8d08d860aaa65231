"""resnet_backbone: a drop-in ResNet backbone family for MMDetection 3.x."""
from .backbone import ResNetBackbone
from .blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from .dcn import DeformConv2dPack
from .norms import FrozenBatchNorm2d
from . import runtime  # noqa: F401  (safe resume allowlist, atomic checkpoints)
from .presets import (ResNet50D, ResNetV1dBackbone, ResNeXt101_32x4d, ResNeXt101_64x4d,
                      ResNeXtBackbone, WideResNet50_2)

__version__ = '0.1.0'
__all__ = ['ResNetBackbone', 'ResNetV1dBackbone', 'ResNeXtBackbone', 'ResNet50D',
           'ResNeXt101_32x4d', 'ResNeXt101_64x4d', 'WideResNet50_2', 'BasicBlock',
           'Bottleneck', 'PreActBasicBlock', 'PreActBottleneck', 'DeformConv2dPack',
           'FrozenBatchNorm2d']
