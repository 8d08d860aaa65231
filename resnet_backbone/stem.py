"""The input stem: 7x7 conv (ResNet-B) or three 3x3 convs (deep stem, ResNet-C/D).

Modules are attached to the backbone itself so the keys stay ``conv1``/``bn1``
(plain) or ``stem.0``…``stem.7`` (deep), as in MMDetection.
"""
import torch
import torch.nn.functional as F
from mmcv.cnn import build_conv_layer
from torch import nn
from torch.nn.modules.utils import _pair

from .fusion import (conv_norm, foldable_conv, folded_weight_and_bias,
                     pointwise_conv_applies)
from .norms import build_norm
from .train_conv import conv_output_size, convolution_with_post_ops

POOL_BAND_ROWS = 16  # max-pool output rows per band of the banded stem


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
            x = conv_norm(x, stem[i], stem[i + 1], relu=True)
        return x
    return conv_norm(x, backbone.conv1, getattr(backbone, backbone.norm1_name), relu=True)


def forward_stem_and_pool(backbone, x, hooked):
    """``maxpool(stem(x))``; the frozen plain stem runs in bands where it can.

    Without gradients on CPU the 7x7 conv (+ folded BN + ReLU) and the max-pool
    run band by band of output rows, so the stride-2 map (R-50 at 800x1216:
    62 MB, 4x the pooled one) never exists whole: each band stays in cache and
    no full-size buffer is mapped in (stem + pool there: 32 vs 43 ms, medians
    of 11). ``hooked``: a hook on the max-pool must see its input, so then it
    runs as a module.
    """
    banded = None if hooked or backbone.deep_stem else _banded_stem_params(backbone, x)
    if banded is None:
        return backbone.maxpool(forward_stem(backbone, x))
    return _banded_stem_and_pool(x, *banded)


def _banded_stem_params(backbone, x):
    """(folded weight, bias, conv) when the banded stem computes the same result."""
    conv, pool = backbone.conv1, backbone.maxpool
    if not (foldable_conv(conv) and x.device.type == 'cpu' and type(pool) is nn.MaxPool2d):
        return None
    folded = folded_weight_and_bias(conv, getattr(backbone, backbone.norm1_name))
    if folded is None:
        return None
    weight, bias = folded
    standard_pool = (_pair(pool.kernel_size), _pair(pool.stride), _pair(pool.padding),
                     _pair(pool.dilation)) == ((3, 3), (2, 2), (1, 1), (1, 1))
    stem_rows = conv_output_size(x.shape[2], conv.kernel_size[0], conv.stride[0],
                                 conv.padding[0])
    return ((weight, bias, conv) if standard_pool and not pool.ceil_mode
            and not pool.return_indices and conv.dilation == (1, 1) and conv.groups == 1
            and stem_rows > 2 * POOL_BAND_ROWS
            and pointwise_conv_applies(x, weight, bias, conv, None) else None)


def _banded_stem_and_pool(x, weight, bias, conv):
    n, _, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    stem_h, stem_w = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    out_h, out_w = conv_output_size(stem_h, 3, 2, 1), conv_output_size(stem_w, 3, 2, 1)
    out = torch.empty((n, weight.shape[0], out_h, out_w), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    for m0 in range(0, out_h, POOL_BAND_ROWS):
        m1 = min(out_h, m0 + POOL_BAND_ROWS)
        # pooled row m reads stem rows 2m-1..2m+1; stem row r reads input rows
        # sh*r-ph .. sh*r-ph+kh-1
        s0, s1 = max(0, 2 * m0 - 1), min(stem_h, 2 * m1)
        i0, i1 = sh * s0 - ph, sh * (s1 - 1) - ph + kh
        band = x[:, :, max(0, i0):min(h, i1)]
        if i0 < 0 or i1 > h:
            band = F.pad(band, (0, 0, max(0, -i0), max(0, i1 - h)))
        stem = convolution_with_post_ops(band.contiguous(memory_format=torch.channels_last),
                                         weight, bias, (sh, sw), (0, pw), (1, 1), 1, relu=True)
        # the stem ends in a ReLU, so zero rows pad the pool as -inf would
        top, bottom = s0 - (2 * m0 - 1), 2 * m1 - s1
        if top or bottom:
            stem = F.pad(stem, (0, 0, top, bottom))
        out[:, :, m0:m1] = F.max_pool2d(stem, 3, 2, (0, 1))
    return out
