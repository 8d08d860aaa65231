"""The input stem: 7x7 conv (ResNet-B) or three 3x3 convs (deep stem, ResNet-C/D).

Modules are attached to the backbone itself so the keys stay ``conv1``/``bn1``
(plain) or ``stem.0``...``stem.7`` (deep), as in MMDetection.
"""
from mmcv.cnn import build_conv_layer
from torch import nn

from . import ops
from .norms import build_norm


def add_stem(backbone, in_channels, stem_channels, deep_stem, conv_cfg, norm_cfg):
    if deep_stem:
        half = stem_channels // 2
        layers = []
        for cin, cout, stride in ((in_channels, half, 2), (half, half, 1),
                                  (half, stem_channels, 1)):
            layers += [build_conv_layer(conv_cfg, cin, cout, 3, stride=stride, padding=1,
                                        bias=False),
                       build_norm(norm_cfg, cout)[1], nn.ReLU(inplace=True)]
        backbone.stem = nn.Sequential(*layers)
    else:
        backbone.conv1 = build_conv_layer(conv_cfg, in_channels, stem_channels, 7, stride=2,
                                          padding=3, bias=False)
        backbone.norm1_name, norm1 = build_norm(norm_cfg, stem_channels, postfix=1)
        backbone.add_module(backbone.norm1_name, norm1)
    backbone.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


def stem_modules(backbone):
    """The modules frozen by ``frozen_stages >= 0``."""
    if backbone.deep_stem:
        return [backbone.stem]
    return [backbone.conv1, getattr(backbone, backbone.norm1_name)]


def forward_stem(backbone, x):
    """Stem output before the max-pool (stride 2)."""
    if backbone.deep_stem:
        stem = backbone.stem
        for i in range(0, len(stem), 3):
            x = ops.conv_norm(x, stem[i], stem[i + 1], relu=True)
        return x
    return ops.conv_norm(x, backbone.conv1, getattr(backbone, backbone.norm1_name), relu=True)
