"""ResNetBackbone: the registered, drop-in ResNet family for MMDetection.

One class covers ResNet (B, C, D), ResNeXt, Wide ResNet and pre-activation
ResNet through orthogonal arguments; constructor names, defaults and
state-dict keys follow MMDetection's ``ResNet``.
"""
import math

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import ops
from .arch import ARCH_SETTINGS, BLOCKS, check_backbone_args, pretrained_init_cfg
from .blocks import ResidualBlock
from .dcn import DeformConv2dPack
from .norms import build_norm
from .stage import make_stage
from .stem import add_stem, forward_stem, stem_modules


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
            (default) does so on CPU with the CPU kernels on (oneDNN is faster
            there), not on CUDA (fp32 cuDNN is faster in NCHW); ``True``/``False``
            force it. Outputs come back in the input's memory format.
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
        args = dict(locals())
        super().__init__(pretrained_init_cfg(pretrained, init_cfg))
        kind, stage_blocks, strides, dilations, out_indices, stage_with_dcn = \
            check_backbone_args(args)

        self.depth = depth
        self.block_kind = kind
        self.block = BLOCKS[(kind, preact)]
        self.stage_blocks = stage_blocks
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
        self.dcn, self.stage_with_dcn = dcn, stage_with_dcn
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
            layer = make_stage(
                self.block, inplanes, planes, num_blocks, strides[i], avg_down, conv_cfg,
                norm_cfg, dilation=dilations[i], style=style, with_cp=with_cp,
                dcn=dcn if dcn is not None and stage_with_dcn[i] else None,
                plugins=self.make_stage_plugins(plugins, i), groups=groups,
                base_width=base_width, base_channels=base_channels, widen_factor=widen_factor)
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
                                              and ops.prefers_channels_last(device))

    def _sync_weight_format(self, channels_last=None):
        """Conv weights in the layout the forward runs in (checked on one weight)."""
        weight = self.conv1.weight if not self.deep_stem else self.stem[0].weight
        if channels_last is None:
            channels_last = self.uses_channels_last(weight.device)
        if weight.dim() == 4 and \
                weight.is_contiguous(memory_format=torch.channels_last) != channels_last:
            self.convert_conv_weights(torch.channels_last if channels_last
                                      else torch.contiguous_format)

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
                        m, (ResNetBackbone, ResidualBlock)):
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
                if isinstance(m, ResidualBlock) and m.last_norm.weight is not None:
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
        self._sync_weight_format(channels_last)
        # outputs keep the caller's layout (mmcv's own CPU RoIAlign misreads channels_last)
        hand_back = channels_last and not ops.is_channels_last(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outs = self.forward_features(x)
        return tuple(ops.to_nchw(o) for o in outs) if hand_back else outs

    def forward_features(self, x):
        outs = []
        x = forward_stem(self, x)
        if self.out_stem:
            outs.append(x)
        x = self.maxpool(x)
        for i, name in enumerate(self.res_layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(F.relu(self.post_norms[name](x)) if self.preact else x)
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
            if isinstance(m, ResidualBlock):
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
            conv = conv_owner._modules[conv_name]
            params = ops.fold_conv_bn(conv, norm_owner._modules[norm_name])
            if params is None:
                continue
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                              conv.stride, conv.padding, conv.dilation, conv.groups, bias=True,
                              device=conv.weight.device, dtype=conv.weight.dtype)
            fused.weight.copy_(params[0])
            fused.bias.copy_(params[1])
            conv_owner._modules[conv_name] = fused
            norm_owner._modules[norm_name] = nn.Identity()
        self._sync_weight_format()
        self.fused = True
        return self

    @property
    def norm1(self):
        return getattr(self, self.norm1_name)
