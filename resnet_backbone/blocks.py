"""Residual blocks: BasicBlock, Bottleneck and their pre-activation twins.

A block computes ``relu(F(x) + shortcut(x))``: conv -> norm -> ReLU ... -> add ->
ReLU, as in torchvision. Pre-activation blocks compute ``F(x) + shortcut(x)``
with BN -> ReLU -> conv inside F. Child names (``conv1``, ``bn1``,
``downsample.0``...) match MMDetection and torchvision, so checkpoints load
strictly. Each conv + norm (+ sum, + ReLU) goes through ``ops.conv_norm``.
"""
import math

import torch
import torch.nn.functional as F
from mmcv.cnn import build_conv_layer, build_plugin_layer
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import ops
from .dcn import DeformConv2dPack, parse_dcn_cfg
from .errors import check_bool, check_choice, check_int
from .norms import build_norm

PLUGIN_POSITIONS = ('after_conv1', 'after_conv2', 'after_conv3')
STYLES = ('pytorch', 'caffe')


def check_plugins(plugins, num_stages=None):
    """MMDetection-style plugin dicts: ``cfg`` of a registered type and a ``position``."""
    if plugins is None:
        return
    if not isinstance(plugins, (list, tuple)):
        raise TypeError(f'plugins must be a list of dicts, got {type(plugins).__name__}')
    for p in plugins:
        if not isinstance(p, dict) or 'cfg' not in p or 'position' not in p:
            raise ValueError(f"each plugin needs 'cfg' and 'position' keys, got {p!r}")
        check_choice('plugins position', p['position'], PLUGIN_POSITIONS)
        kind = p['cfg'].get('type') if isinstance(p['cfg'], dict) else None
        if kind is None or (isinstance(kind, str) and not _is_registered(kind)):
            raise ValueError(f'plugins cfg type={kind!r} is not a registered plugin; use a '
                             "type from mmcv or MMDetection, e.g. 'ContextBlock', "
                             "'GeneralizedAttention', 'NonLocal2d'")
        stages = p.get('stages')
        if num_stages is not None and stages is not None and len(stages) != num_stages:
            raise ValueError(f'plugins stages={tuple(stages)!r} has {len(stages)} entries; '
                             f'it needs num_stages={num_stages}')


def _is_registered(kind):
    """Whether mmcv's ``build_plugin_layer`` finds ``kind`` (in the default scope's registry,
    e.g. MMDetection's, and its parents)."""
    with MODELS.switch_scope_and_registry(None) as registry:
        return registry.get(kind) is not None


class ResidualBlock(BaseModule):
    """What every block shares: argument checks, norms by position, plugins, with_cp."""

    expansion = 1
    num_convs = 2
    preact = False

    def __init__(self, inplanes, planes, stride, dilation, downsample, style, with_cp,
                 plugins, init_cfg):
        super().__init__(init_cfg)
        for name, value in (('inplanes', inplanes), ('planes', planes), ('stride', stride),
                            ('dilation', dilation)):
            check_int(name, value, minimum=1)
        check_choice('style', style, STYLES)
        check_bool('with_cp', with_cp)
        if downsample is not None and not isinstance(downsample, nn.Module):
            raise TypeError(f'downsample must be an nn.Module (e.g. nn.Sequential(conv, norm)) '
                            f'or None, got {type(downsample).__name__}')
        check_plugins(plugins)
        self.stride, self.dilation, self.style, self.with_cp = stride, dilation, style, with_cp
        self.plugin_names = {pos: [] for pos in PLUGIN_POSITIONS}
        self._plugin_cfgs = plugins or []

    def norm(self, index):
        return getattr(self, self.norm_names[index - 1])

    @property
    def norm1(self):
        return self.norm(1)

    @property
    def norm2(self):
        return self.norm(2)

    @property
    def last_norm(self):
        """The norm whose zero init makes the block an identity map."""
        return self.norm(self.num_convs)

    def add_convs_and_norms(self, convs, norm_cfg, norm_channels):
        """Register conv1, norm1, conv2, norm2... in MMDetection's order (keys and order)."""
        self.norm_names = []
        for i, (conv, c) in enumerate(zip(convs, norm_channels), start=1):
            name, norm = build_norm(norm_cfg, c, postfix=i)
            self.add_module(f'conv{i}', conv)
            self.add_module(name, norm)
            self.norm_names.append(name)

    def add_plugins(self, channels_at):
        allowed = PLUGIN_POSITIONS[:self.num_convs]
        for plugin in self._plugin_cfgs:
            position = plugin['position']
            if position not in allowed:
                raise ValueError(f"plugins position={position!r} is not available in "
                                 f"{type(self).__name__}; allowed: {', '.join(allowed)}")
            cfg = dict(plugin['cfg'])
            name, layer = build_plugin_layer(cfg, in_channels=channels_at[position],
                                             postfix=cfg.pop('postfix', ''))
            if hasattr(self, name):
                raise ValueError(f'plugins: two plugins would both be named {name!r}; give '
                                 "them different 'postfix' values")
            self.add_module(name, layer)
            self.plugin_names[position].append(name)
        del self._plugin_cfgs

    def run_plugins(self, x, position):
        for name in self.plugin_names[position]:
            x = getattr(self, name)(x)
        return x

    def shortcut(self, x):
        """``downsample(x)``; MMDetection's (pool,) conv, norm Sequential through the seam."""
        d = self.downsample
        if d is None:
            return x
        if not (isinstance(d, nn.Sequential) and len(d) >= 2 and isinstance(d[-2], nn.Conv2d)):
            return d(x)
        *pool, conv, norm = d
        for p in pool:
            x = p(x)
        return ops.conv_norm(x, conv, norm)

    def last_conv_add_relu(self, out, identity):
        """``relu(norm(conv(out)) + identity)`` for the last conv, plugins in between."""
        conv, norm = getattr(self, f'conv{self.num_convs}'), self.last_norm
        position = PLUGIN_POSITIONS[self.num_convs - 1]
        if not self.plugin_names[position]:
            return ops.conv_norm(out, conv, norm, relu=True, add=identity)
        return ops.add_relu(self.run_plugins(ops.conv_norm(out, conv, norm), position),
                            add=identity)

    def residual(self, x):
        """The block's output, computed directly (``forward`` may checkpoint it)."""
        raise NotImplementedError

    def checkpoints(self, x):
        """Whether ``with_cp`` applies to this call: grad mode and something to differentiate."""
        return self.with_cp and torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in self.parameters()))

    def forward(self, x):
        if self.checkpoints(x):
            return checkpoint(self.residual, x, use_reentrant=False)
        return self.residual(x)


def make_conv3x3(conv_cfg, dcn, in_channels, out_channels, stride, dilation, groups):
    """A 3x3 conv, deformable when ``dcn`` is set (and not falling back on stride)."""
    if dcn is not None:
        modulated, kwargs, fallback_on_stride = parse_dcn_cfg(dcn)
        if not (fallback_on_stride and stride > 1):
            if conv_cfg is not None:
                raise ValueError(f'conv_cfg={conv_cfg!r} cannot be combined with dcn; '
                                 'set conv_cfg=None for DCN stages')
            return DeformConv2dPack(in_channels, out_channels, 3, stride=stride,
                                    padding=dilation, dilation=dilation, groups=groups,
                                    modulated=modulated, **kwargs)
    return build_conv_layer(conv_cfg, in_channels, out_channels, 3, stride=stride,
                            padding=dilation, dilation=dilation, groups=groups, bias=False)


class BasicBlock(ResidualBlock):
    """Two 3x3 convs (ResNet-18/34). With ``dcn``, conv2 is deformable."""

    expansion = 1
    num_convs = 2

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None, style='pytorch',
                 with_cp=False, conv_cfg=None, norm_cfg=dict(type='BN'), dcn=None, plugins=None,
                 groups=1, base_width=4, base_channels=64, widen_factor=1, init_cfg=None):
        super().__init__(inplanes, planes, stride, dilation, downsample, style, with_cp, plugins,
                         init_cfg)
        if groups != 1 or widen_factor != 1:
            raise ValueError(f'BasicBlock supports only groups=1 and widen_factor=1, got '
                             f'groups={groups}, widen_factor={widen_factor}; use a Bottleneck '
                             'depth (50/101/152) for ResNeXt and Wide ResNet')
        conv1 = build_conv_layer(conv_cfg, inplanes, planes, 3, stride=stride, padding=dilation,
                                 dilation=dilation, bias=False)
        conv2 = make_conv3x3(conv_cfg, dcn, planes, planes, 1, 1, 1)
        self.add_convs_and_norms((conv1, conv2), norm_cfg, self.norm_channels(inplanes, planes))
        self.downsample = downsample  # after the convs: MMDetection's key order
        self.add_plugins({'after_conv1': planes, 'after_conv2': planes})

    def norm_channels(self, inplanes, planes):
        return planes, planes

    def residual(self, x):
        identity = self.shortcut(x)
        out = ops.conv_norm(x, self.conv1, self.norm1, relu=True)
        out = self.run_plugins(out, 'after_conv1')
        return self.last_conv_add_relu(out, identity)


def bottleneck_width(planes, groups, base_width, base_channels, widen_factor):
    """Width of the 3x3 conv: ResNet ``planes``, ResNeXt ``floor(planes*bw/bc)*groups``."""
    width = planes if groups == 1 else math.floor(planes * base_width / base_channels) * groups
    return width * widen_factor


class Bottleneck(ResidualBlock):
    """1x1 -> 3x3 -> 1x1 (ResNet-50/101/152, ResNeXt, Wide ResNet).

    ``style='pytorch'`` strides the 3x3 conv, ``'caffe'`` the first 1x1.
    """

    expansion = 4
    num_convs = 3

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None, style='pytorch',
                 with_cp=False, conv_cfg=None, norm_cfg=dict(type='BN'), dcn=None, plugins=None,
                 groups=1, base_width=4, base_channels=64, widen_factor=1, init_cfg=None):
        super().__init__(inplanes, planes, stride, dilation, downsample, style, with_cp, plugins,
                         init_cfg)
        for name, value in (('groups', groups), ('base_width', base_width),
                            ('base_channels', base_channels), ('widen_factor', widen_factor)):
            check_int(name, value, minimum=1)
        width = bottleneck_width(planes, groups, base_width, base_channels, widen_factor)
        if width < 1:
            raise ValueError(f'planes={planes}, groups={groups}, base_width={base_width}, '
                             f'base_channels={base_channels} give a 3x3 conv of width {width}')
        out_channels = planes * self.expansion
        conv1_stride, conv2_stride = (1, stride) if style == 'pytorch' else (stride, 1)
        convs = (build_conv_layer(conv_cfg, inplanes, width, 1, stride=conv1_stride, bias=False),
                 make_conv3x3(conv_cfg, dcn, width, width, conv2_stride, dilation, groups),
                 build_conv_layer(conv_cfg, width, out_channels, 1, bias=False))
        self.add_convs_and_norms(convs, norm_cfg,
                                 self.norm_channels(inplanes, width, out_channels))
        self.downsample = downsample  # after the convs: MMDetection's key order
        self.add_plugins({'after_conv1': width, 'after_conv2': width,
                          'after_conv3': out_channels})

    def norm_channels(self, inplanes, width, out_channels):
        return width, width, out_channels

    @property
    def norm3(self):
        return self.norm(3)

    def residual(self, x):
        identity = self.shortcut(x)
        out = ops.conv_norm(x, self.conv1, self.norm1, relu=True)
        out = self.run_plugins(out, 'after_conv1')
        out = ops.conv_norm(out, self.conv2, self.norm2, relu=True)
        out = self.run_plugins(out, 'after_conv2')
        return self.last_conv_add_relu(out, identity)


class PreActMixin:
    """Pre-activation (He et al. 2016, "Identity Mappings"): BN-ReLU-conv branches.

    The identity path is untouched; a projection shortcut takes the
    pre-activated input, as in the paper's reference code. ``downsample``
    holds the conv alone (no norm).
    """

    preact = True

    def shortcut(self, x):
        return x if self.downsample is None else self.downsample(x)

    def residual(self, x):
        pre = F.relu(self.norm(1)(x))
        shortcut = x if self.downsample is None else self.shortcut(pre)
        out = pre
        for i in range(1, self.num_convs + 1):
            if i > 1:
                out = F.relu(self.norm(i)(out))
            out = getattr(self, f'conv{i}')(out)
            out = self.run_plugins(out, PLUGIN_POSITIONS[i - 1])
        return out + shortcut


class PreActBasicBlock(PreActMixin, BasicBlock):
    def norm_channels(self, inplanes, planes):
        return inplanes, planes


class PreActBottleneck(PreActMixin, Bottleneck):
    def norm_channels(self, inplanes, width, out_channels):
        return inplanes, width, width
