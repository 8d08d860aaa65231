"""ResNetBackbone: the registered, drop-in ResNet family for MMDetection.

One class covers ResNet (B, C, D), ResNeXt, Wide ResNet and pre-activation
ResNet through orthogonal arguments; constructor names, defaults and
state-dict keys follow MMDetection's ``ResNet``.
"""
import math
import warnings

import torch
import torch.nn.functional as F
from mmcv.cnn import build_conv_layer
from mmengine.model import BaseModule
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .blocks import (PLUGIN_POSITIONS, BasicBlock, Bottleneck, PreActBasicBlock,
                     PreActBottleneck)
from .dcn import DeformConv2dPack, parse_dcn_cfg
from .errors import check_bool, check_choice, check_int, check_int_sequence
from .fusion import fold_conv_bn
from .layout import is_channels_last, to_nchw
from .norms import build_norm
from .stage import ResStage, is_hooked
from .stem import add_stem, forward_stem, forward_stem_and_pool, stem_modules

ARCH_SETTINGS = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}
BLOCKS = {('basic', False): BasicBlock, ('bottleneck', False): Bottleneck,
          ('basic', True): PreActBasicBlock, ('bottleneck', True): PreActBottleneck}
LAYERS_PER_BLOCK = {'basic': 2, 'bottleneck': 3}
STYLES = ('pytorch', 'caffe')


def _resolve_architecture(depth, stage_blocks, block):
    """(block kind, blocks per stage) from depth, or from explicit stage_blocks."""
    if block is not None:
        check_choice('block', block, tuple(LAYERS_PER_BLOCK))
    if stage_blocks is None:
        if depth not in ARCH_SETTINGS:
            raise ValueError(f'depth={depth!r} is not a standard ResNet depth; allowed: '
                             f'{", ".join(map(str, ARCH_SETTINGS))}, or pass stage_blocks '
                             'for any other depth')
        kind, stage_blocks = ARCH_SETTINGS[depth]
        return block or kind, stage_blocks
    stage_blocks = check_int_sequence('stage_blocks', stage_blocks, minimum=1)
    if not stage_blocks:
        raise ValueError('stage_blocks=() is empty; give the number of blocks of each stage')
    if block is None:
        kinds = [k for k, n in LAYERS_PER_BLOCK.items() if depth == n * sum(stage_blocks) + 2]
        if depth in ARCH_SETTINGS and ARCH_SETTINGS[depth][0] not in kinds:
            kinds.insert(0, ARCH_SETTINGS[depth][0])
        if not kinds:
            raise ValueError(
                f'depth={depth!r} does not match stage_blocks={stage_blocks}: basic blocks give '
                f'depth {2 * sum(stage_blocks) + 2}, bottlenecks {3 * sum(stage_blocks) + 2}; '
                "fix depth or pass block='basic'|'bottleneck'")
        block = kinds[0]
    return block, stage_blocks


def _check_norm_cfg(norm_cfg):
    if not isinstance(norm_cfg, dict) or 'type' not in norm_cfg:
        raise TypeError(f"norm_cfg must be a dict with a 'type' key, e.g. dict(type='BN'), "
                        f'got {norm_cfg!r}')


def _check_plugins(plugins, num_stages):
    if plugins is None:
        return
    if not isinstance(plugins, (list, tuple)):
        raise TypeError(f'plugins must be a list of dicts, got {type(plugins).__name__}')
    for p in plugins:
        if not isinstance(p, dict) or 'cfg' not in p or 'position' not in p:
            raise ValueError(f"each plugin needs 'cfg' and 'position' keys, got {p!r}")
        check_choice('plugins position', p['position'], PLUGIN_POSITIONS)
        stages = p.get('stages')
        if stages is not None and len(stages) != num_stages:
            raise ValueError(f'plugins stages={tuple(stages)!r} has {len(stages)} entries; '
                             f'it needs num_stages={num_stages}')


class ResNetBackbone(BaseModule):
    """ResNet backbone giving C2-C5 (and optionally the stem) as a tuple.

    MMDetection ``ResNet`` arguments, same names and defaults, plus:

    Args:
        stage_blocks (Sequence[int] | None): blocks per stage, for any depth.
        block (str | None): ``'basic'`` or ``'bottleneck'``; inferred by default.
        groups (int), base_width (int): ResNeXt cardinality and width per group
            (MMDetection's rule; ignored when groups=1).
        widen_factor (int): multiplies the bottleneck width (Wide ResNet: 2).
        preact (bool): pre-activation blocks; every output gets a BN-ReLU.
        out_stem (bool): also return the stem output (stride 2), first.
        check_finite (bool): raise on NaN/Inf in the input (debug aid).
        channels_last (bool | str): run convs in channels_last. ``'auto'``
            (default) does so on CPU, where oneDNN is faster with it, and not on
            CUDA, where fp32 cuDNN is faster in NCHW; ``True``/``False`` force it.
            Outputs come back in the input's memory format, so NCHW consumers
            (mmcv's RoIAlign) stay correct.
    """

    arch_settings = ARCH_SETTINGS

    def __init__(self,
                 depth=None,
                 in_channels=3,
                 stem_channels=None,
                 base_channels=64,
                 num_stages=4,
                 strides=(1, 2, 2, 2),
                 dilations=(1, 1, 1, 1),
                 out_indices=(0, 1, 2, 3),
                 style='pytorch',
                 deep_stem=False,
                 avg_down=False,
                 frozen_stages=-1,
                 conv_cfg=None,
                 norm_cfg=dict(type='BN', requires_grad=True),
                 norm_eval=True,
                 dcn=None,
                 stage_with_dcn=(False, False, False, False),
                 plugins=None,
                 with_cp=False,
                 zero_init_residual=True,
                 pretrained=None,
                 init_cfg=None,
                 stage_blocks=None,
                 block=None,
                 groups=1,
                 base_width=4,
                 widen_factor=1,
                 preact=False,
                 out_stem=False,
                 check_finite=False,
                 channels_last='auto'):
        if init_cfg is not None and pretrained is not None:
            raise ValueError('pass either init_cfg or pretrained, not both (pretrained is '
                             'deprecated: use init_cfg=dict(type="Pretrained", checkpoint=...))')
        if pretrained is not None:
            if not isinstance(pretrained, str):
                raise TypeError(f'pretrained must be a str path/URL or None, got {pretrained!r}')
            warnings.warn('pretrained is deprecated, use init_cfg=dict(type="Pretrained", '
                          'checkpoint=...)', DeprecationWarning)
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        super().__init__(init_cfg)

        kind, all_stage_blocks = _resolve_architecture(depth, stage_blocks, block)
        check_int('num_stages', num_stages, 1, 4 if stage_blocks is None else None)
        if num_stages > len(all_stage_blocks):
            raise ValueError(f'num_stages={num_stages} is out of range; allowed: 1 to '
                             f'{len(all_stage_blocks)} (stage_blocks={tuple(all_stage_blocks)})')
        for name, value in (('in_channels', in_channels), ('base_channels', base_channels),
                            ('groups', groups), ('base_width', base_width),
                            ('widen_factor', widen_factor)):
            check_int(name, value, minimum=1)
        if stem_channels is not None:
            check_int('stem_channels', stem_channels, minimum=1)
        strides = check_int_sequence('strides', strides, num_stages, minimum=1)
        dilations = check_int_sequence('dilations', dilations, num_stages, minimum=1)
        out_indices = check_int_sequence('out_indices', out_indices)
        if not out_indices and not out_stem:
            raise ValueError('out_indices=() selects no output; allowed: indices 0 to '
                             f'{num_stages - 1}')
        for i in out_indices:
            if not 0 <= i < num_stages:
                raise ValueError(f'out_indices={out_indices} has {i}; allowed: 0 to '
                                 f'{num_stages - 1} (num_stages={num_stages}; 0 is C2)')
        if len(set(out_indices)) != len(out_indices):
            raise ValueError(f'out_indices={out_indices} repeats an index; each stage can be '
                             'returned once')
        check_choice('style', style, STYLES)
        check_int('frozen_stages', frozen_stages, -1, num_stages)
        for name, value in (('deep_stem', deep_stem), ('avg_down', avg_down),
                            ('norm_eval', norm_eval), ('with_cp', with_cp),
                            ('zero_init_residual', zero_init_residual), ('preact', preact),
                            ('out_stem', out_stem), ('check_finite', check_finite)):
            check_bool(name, value)
        if channels_last not in (True, False, 'auto'):
            raise ValueError(f"channels_last={channels_last!r} is not supported; allowed: "
                             "True, False, 'auto'")
        _check_norm_cfg(norm_cfg)
        if dcn is not None:
            parse_dcn_cfg(dcn)
            stage_with_dcn = tuple(stage_with_dcn)
            if len(stage_with_dcn) != num_stages:
                raise ValueError(f'stage_with_dcn={stage_with_dcn} has {len(stage_with_dcn)} '
                                 f'entries; it needs one per stage ({num_stages})')
        _check_plugins(plugins, num_stages)
        if kind == 'basic' and (groups != 1 or widen_factor != 1):
            raise ValueError(f'groups={groups}/widen_factor={widen_factor} need bottleneck '
                             f'blocks, but depth={depth} uses basic blocks; use depth 50/101/152')
        if deep_stem and (stem_channels or base_channels) < 2:
            raise ValueError('deep_stem needs stem_channels >= 2')

        self.depth = depth
        self.block_kind = kind
        self.block = BLOCKS[(kind, preact)]
        self.stage_blocks = tuple(all_stage_blocks[:num_stages])
        self.in_channels = in_channels
        self.stem_channels = stem_channels = stem_channels or base_channels
        self.base_channels = base_channels
        self.num_stages = num_stages
        self.strides, self.dilations = strides, dilations
        self.out_indices = out_indices
        self.style = style
        self.deep_stem, self.avg_down = deep_stem, avg_down
        self.frozen_stages = frozen_stages
        self.conv_cfg, self.norm_cfg = conv_cfg, norm_cfg
        self.norm_eval = norm_eval
        self.dcn, self.stage_with_dcn = dcn, tuple(stage_with_dcn)
        self.plugins = plugins
        self.with_cp = with_cp
        self.zero_init_residual = zero_init_residual
        self.groups, self.base_width, self.widen_factor = groups, base_width, widen_factor
        self.preact = preact
        self.out_stem = out_stem
        self.check_finite = check_finite
        self.channels_last = channels_last
        self.fused = False

        add_stem(self, in_channels, stem_channels, deep_stem, conv_cfg, norm_cfg)
        self.res_layers = []
        inplanes = stem_channels
        for i, num_blocks in enumerate(self.stage_blocks):
            planes = base_channels * 2**i
            layer = self.make_stage(
                inplanes, planes, num_blocks, strides[i], dilations[i],
                dcn if dcn is not None and self.stage_with_dcn[i] else None,
                self.make_stage_plugins(plugins, i))
            self.add_module(f'layer{i + 1}', layer)
            self.res_layers.append(f'layer{i + 1}')
            inplanes = planes * self.block.expansion
        self.feat_dim = inplanes
        if preact:
            self.post_norms = nn.ModuleDict({
                f'layer{i + 1}': build_norm(norm_cfg, self.stage_channels(i))[1]
                for i in out_indices})
        self._sync_weight_format()
        self._freeze_stages()

    # ----------------------------------------------------------------- build
    def uses_channels_last(self, device):
        return self.channels_last is True or (self.channels_last == 'auto'
                                              and torch.device(device).type == 'cpu')

    def _sync_weight_format(self):
        weight = self.conv1.weight if not self.deep_stem else self.stem[0].weight
        cl = self.uses_channels_last(weight.device)
        if weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last) != cl:
            self.convert_conv_weights(torch.channels_last if cl else torch.contiguous_format)

    def _apply(self, fn, *args, **kwargs):
        # .cuda()/.to(): store conv weights in the layout the new device prefers
        out = super()._apply(fn, *args, **kwargs)
        self._sync_weight_format()
        return out

    @torch.no_grad()
    def convert_conv_weights(self, memory_format):
        """Store plain and deformable conv weights in ``memory_format``.

        Convs built from other conv_cfg types (e.g. ConvWS, which views its
        weight as 2-D) keep their layout.
        """
        for m in self.modules():
            if type(m) is nn.Conv2d or isinstance(m, DeformConv2dPack):
                m.weight.data = m.weight.data.contiguous(memory_format=memory_format)

    def stage_channels(self, i):
        return self.base_channels * 2**i * self.block.expansion

    def make_stage_plugins(self, plugins, stage_idx):
        """Plugin cfgs (with ``position``) that apply to stage ``stage_idx``."""
        selected = []
        for plugin in plugins or []:
            stages = plugin.get('stages')
            if stages is None or stages[stage_idx]:
                selected.append({k: v for k, v in plugin.items() if k != 'stages'})
        return selected or None

    def make_downsample(self, inplanes, outplanes, stride):
        layers = []
        conv_stride = stride
        if self.avg_down:  # index 0 always holds the pool, so keys match MMDetection
            conv_stride = 1
            layers.append(nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
                          if stride != 1 else nn.Identity())
        layers.append(build_conv_layer(self.conv_cfg, inplanes, outplanes, 1, stride=conv_stride,
                                       bias=False))
        if not self.preact:
            layers.append(build_norm(self.norm_cfg, outplanes)[1])
        return nn.Sequential(*layers)

    def make_stage(self, inplanes, planes, num_blocks, stride, dilation, dcn, plugins):
        """One ResNet stage (``layerN``): the first block strides and projects."""
        block = self.block
        outplanes = planes * block.expansion
        downsample = None
        if stride != 1 or inplanes != outplanes:
            downsample = self.make_downsample(inplanes, outplanes, stride)
        common = dict(planes=planes, dilation=dilation, style=self.style, with_cp=self.with_cp,
                      conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, dcn=dcn, plugins=plugins,
                      groups=self.groups, base_width=self.base_width,
                      base_channels=self.base_channels, widen_factor=self.widen_factor)
        blocks = [block(inplanes=inplanes, stride=stride, downsample=downsample, **common)]
        blocks += [block(inplanes=outplanes, stride=1, **common) for _ in range(1, num_blocks)]
        return ResStage(*blocks)

    # ----------------------------------------------------------------- shape
    @property
    def out_channels(self):
        """Channels of each returned feature, in output order."""
        chans = [self.stem_channels] if self.out_stem else []
        return chans + [self.stage_channels(i) for i in self.out_indices]

    def output_shape(self):
        """``{name: dict(channels=, stride=)}`` of each output, e.g. ``c2``…``c5``."""
        shapes = {}
        if self.out_stem:
            shapes['stem'] = dict(channels=self.stem_channels, stride=2)
        stride = 4
        for i in range(self.num_stages):
            stride *= self.strides[i]
            if i in self.out_indices:
                shapes[f'c{i + 2}'] = dict(channels=self.stage_channels(i), stride=stride)
        return shapes

    @property
    def total_stride(self):
        """Stride of the last stage's output."""
        return 4 * math.prod(self.strides)

    # --------------------------------------------------------------- freezing
    def frozen_modules(self):
        if self.frozen_stages < 0:
            return []
        mods = stem_modules(self)
        return mods + [getattr(self, f'layer{i}') for i in range(1, self.frozen_stages + 1)]

    def _freeze_stages(self):
        for m in self.frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def train(self, mode=True):
        """Train mode that keeps frozen stages (and BN under norm_eval) in eval.

        Returns ``self``, like ``nn.Module.train``.
        """
        if mode and self.fused:
            raise RuntimeError('this backbone was fused for inference (fuse()); its BN layers '
                               'are folded into the convs, so it cannot be trained. Build a new '
                               'one (or reload the checkpoint) to train.')
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    # ------------------------------------------------------------------- init
    def init_weights(self):
        from .checkpoint import init_cfg_checkpoint, load_pretrained
        checkpoint = init_cfg_checkpoint(self.init_cfg)
        if checkpoint is not None:
            load_pretrained(self, checkpoint, self.init_cfg)
            self._is_init = True
            return
        if self.init_cfg is not None:
            super().init_weights()
        else:
            self.default_init()
            for m in self.modules():
                if m is not self and hasattr(m, 'init_weights') and not isinstance(
                        m, (ResNetBackbone, BasicBlock, Bottleneck)):
                    m.init_weights()
            self._is_init = True
        for m in self.modules():
            if isinstance(m, DeformConv2dPack):
                m.init_offset()

    @torch.no_grad()
    def default_init(self):
        """MMDetection's default: Kaiming (fan_out) convs, unit norms, zero last norms."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, DeformConv2dPack)):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (_BatchNorm, nn.GroupNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)) and m.last_norm.weight is not None:
                    nn.init.zeros_(m.last_norm.weight)
                    nn.init.zeros_(m.last_norm.bias)

    # ---------------------------------------------------------------- forward
    def check_input(self, x):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f'input must be a torch.Tensor of shape (N, {self.in_channels}, H, W)'
                            f', got {type(x).__name__}')
        if x.dim() != 4:
            raise ValueError(f'input must be 4-D (N, {self.in_channels}, H, W), got shape '
                             f'{tuple(x.shape)}')
        if not x.is_floating_point():
            raise TypeError(f'input must be a floating-point tensor, got dtype {x.dtype}; '
                            'convert images with .float()')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'input has {x.shape[1]} channels (shape {tuple(x.shape)}), but '
                             f'in_channels={self.in_channels}')
        stride = self.total_stride
        if x.shape[2] < stride or x.shape[3] < stride:
            raise ValueError(f'input is {x.shape[2]}x{x.shape[3]}, smaller than the total stride '
                             f'{stride} of this backbone, so its last stage would see only '
                             f'padding; resize or pad images to at least {stride}x{stride} '
                             f'(MMDetection: data_preprocessor pad_size_divisor={stride})')
        if self.check_finite and not torch.isfinite(x).all():
            raise ValueError('input contains NaN or Inf (check_finite=True)')

    def forward(self, x):
        self.check_input(x)
        channels_last = self.uses_channels_last(x.device)
        # outputs keep the caller's layout (mmcv's CPU RoIAlign misreads channels_last maps)
        to_caller = to_nchw if channels_last and not is_channels_last(x) else None
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.forward_features(x, to_caller)

    def forward_features(self, x, to_caller=None):
        outs = []
        if self.out_stem:
            x = forward_stem(self, x)
            outs.append(to_caller(x) if to_caller else x)
            x = self.maxpool(x)
        else:
            x = forward_stem_and_pool(self, x, hooked=is_hooked(self.maxpool))
        # a checkpointed stage stores its input: give it the map we return, held once
        share_outputs = to_caller is not None and self.with_cp and not self.preact \
            and torch.is_grad_enabled()
        for i, name in enumerate(self.res_layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                out = F.relu(self.post_norms[name](x)) if self.preact else x
                if to_caller is not None:
                    out = to_caller(out)
                    if share_outputs:
                        x = out
                outs.append(out)
        return tuple(outs)

    # ----------------------------------------------------------------- deploy
    def conv_norm_pairs(self):
        """(conv owner, conv name, norm owner, norm name) for every conv followed by a norm."""
        if self.deep_stem:
            yield from ((self.stem, str(i), self.stem, str(i + 1)) for i in (0, 3, 6))
        else:
            yield self, 'conv1', self, self.norm1_name
        if self.preact:  # norms precede convs there: nothing to fold
            return
        for m in self.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                for k in range(1, m.num_convs + 1):
                    yield m, f'conv{k}', m, m.norm_names[k - 1]
                if m.downsample is not None:
                    n = len(m.downsample)
                    yield m.downsample, str(n - 2), m.downsample, str(n - 1)

    @torch.no_grad()
    def fuse(self):
        """Fold every eval-mode BN into its conv for inference. Returns self.

        Keys change (convs gain a bias, BNs become Identity), so load
        checkpoints before fusing. Training a fused backbone is refused.
        """
        self.eval()
        for conv_owner, conv_name, norm_owner, norm_name in list(self.conv_norm_pairs()):
            fused = fold_conv_bn(conv_owner._modules[conv_name], norm_owner._modules[norm_name])
            if fused is not None:
                conv_owner._modules[conv_name] = fused
                norm_owner._modules[norm_name] = nn.Identity()
        self._sync_weight_format()
        self.fused = True
        return self

    @property
    def norm1(self):
        return getattr(self, self.norm1_name)
