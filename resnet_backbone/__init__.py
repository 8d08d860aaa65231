"""resnet_backbone: a drop-in ResNet backbone family for MMDetection 3.x.

``import resnet_backbone`` registers the backbone names (:mod:`.registry`) and
the training hooks (:mod:`.runtime`); it patches nothing in mmengine or torch.
The runtime safety patches (safe resume on torch >= 2.6, atomic checkpoints)
are :func:`resnet_backbone.runtime.install`, run by ``SafeCheckpointsHook``
(on in this project's configs) and by this project's tools.
"""
from . import registry  # noqa: F401  (MMDetection and mmengine names)
from . import runtime  # noqa: F401  (training hooks)
from .backbone import ResNetBackbone
from .blocks import BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck
from .cpu import enabled as cpu_kernels_enabled
from .cpu import set_enabled as set_cpu_kernels
from .dcn import DeformConv2dPack
from .norms import FrozenBatchNorm2d
from .ops import fold_bn_enabled, set_fold_bn
from .presets import (ResNet50D, ResNetV1dBackbone, ResNeXt101_32x4d, ResNeXt101_64x4d,
                      ResNeXtBackbone, WideResNet50_2)
from .stage import ResStage, make_stage

__version__ = '0.1.0'
__all__ = ['ResNetBackbone', 'ResNetV1dBackbone', 'ResNeXtBackbone', 'ResNet50D',
           'ResNeXt101_32x4d', 'ResNeXt101_64x4d', 'WideResNet50_2', 'BasicBlock',
           'Bottleneck', 'PreActBasicBlock', 'PreActBottleneck', 'ResStage', 'make_stage',
           'DeformConv2dPack', 'FrozenBatchNorm2d', 'set_cpu_kernels', 'cpu_kernels_enabled',
           'set_fold_bn', 'fold_bn_enabled']
