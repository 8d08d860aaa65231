"""Every name this package registers with MMDetection and mmengine, in one place.

``import resnet_backbone`` (a config's ``custom_imports``) runs this module:

* MMDetection's ``MODELS``: ``ResNetBackbone`` (MMDetection's ``ResNet``) and the
  presets ``ResNetV1dBackbone``, ``ResNeXtBackbone``, ``ResNet50D``,
  ``ResNeXt101_32x4d``, ``ResNeXt101_64x4d``, ``WideResNet50_2``;
* mmengine's ``MODELS``: the norm type ``FrozenBN`` (``norm_cfg=dict(type='FrozenBN')``).

The training hooks, the dataset and transform (``resnet_backbone.runtime``) and
the COCO metric (``resnet_backbone.evaluation``) register themselves when a
config imports those modules.
"""
from mmdet.registry import MODELS
from mmengine.registry import MODELS as MMENGINE_MODELS

from .backbone import ResNetBackbone
from .norms import FrozenBatchNorm2d
from .presets import PRESETS

BACKBONES = (ResNetBackbone, ) + PRESETS

for _cls in BACKBONES:
    MODELS.register_module(_cls.__name__, module=_cls, force=True)
MMENGINE_MODELS.register_module('FrozenBN', module=FrozenBatchNorm2d, force=True)
