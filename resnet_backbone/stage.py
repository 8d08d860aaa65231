"""A ResNet stage (``layerN``): its blocks in order, checkpointed in pairs under with_cp."""
from mmcv.cnn import build_conv_layer
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import ops
from .blocks import ResidualBlock
from .errors import check_bool, check_int
from .norms import build_norm

CHECKPOINT_SPAN = 2  # blocks per with_cp checkpoint


def _run_blocks(blocks, x):
    for block in blocks:
        x = block.residual(x)
    return x


class ResStage(nn.Sequential):
    """The blocks of one stage, under MMDetection's keys (``layer2.0.conv1`` ...).

    A with_cp checkpoint keeps only its input and recomputes the rest in the
    backward. Spanning two blocks, it keeps half the maps that one checkpoint
    per block (MMDetection) keeps, for the same single recompute of each block;
    the backward of a span then holds the activations of two blocks at once.
    Blocks run on their own (``block(x)``) still checkpoint one by one. Inside
    a span the blocks run through ``residual``, so forward hooks on the blocks
    themselves do not fire there; hooks on the stage do.
    """

    def __init__(self, *blocks):
        for i, block in enumerate(blocks):
            if not isinstance(block, ResidualBlock):
                raise TypeError(f'ResStage takes residual blocks (BasicBlock, Bottleneck...); '
                                f'block {i} is a {type(block).__name__}')
        super().__init__(*blocks)

    def forward(self, x):
        with ops.reusing_maps(self):
            return self._run(x)

    def _run(self, x):
        blocks = list(self)
        i = 0
        while i < len(blocks):
            span = [blocks[i]]
            if blocks[i].checkpoints(x):
                while (len(span) < CHECKPOINT_SPAN and i + len(span) < len(blocks)
                       and blocks[i + len(span)].with_cp):
                    span.append(blocks[i + len(span)])
                x = checkpoint(_run_blocks, span, x, use_reentrant=False)
            else:
                x = blocks[i](x)
            i += len(span)
        return x


def make_downsample(inplanes, outplanes, stride, avg_down=False, conv_cfg=None,
                    norm_cfg=dict(type='BN'), with_norm=True):
    """The projection shortcut: a strided 1x1 conv and a norm, or with ``avg_down``
    (ResNet-D) an average pool, then a 1x1 conv and a norm. Index 0 always holds the
    pool when ``avg_down``, so keys match MMDetection."""
    layers = []
    conv_stride = stride
    if avg_down:
        conv_stride = 1
        layers.append(nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)
                      if stride != 1 else nn.Identity())
    layers.append(build_conv_layer(conv_cfg, inplanes, outplanes, 1, stride=conv_stride,
                                   bias=False))
    if with_norm:
        layers.append(build_norm(norm_cfg, outplanes)[1])
    return nn.Sequential(*layers)


def make_stage(block, inplanes, planes, num_blocks, stride=1, avg_down=False, conv_cfg=None,
               norm_cfg=dict(type='BN'), **block_kwargs):
    """One stage: ``num_blocks`` blocks of type ``block``; the first strides and projects.

    ``block_kwargs`` go to every block (``dilation``, ``style``, ``with_cp``, ``dcn``,
    ``plugins``, ``groups``...).
    """
    if not (isinstance(block, type) and issubclass(block, ResidualBlock)):
        raise TypeError(f'block must be a residual block class (BasicBlock, Bottleneck...), '
                        f'got {block!r}')
    for name, value in (('inplanes', inplanes), ('planes', planes),
                        ('num_blocks', num_blocks), ('stride', stride)):
        check_int(name, value, minimum=1)
    check_bool('avg_down', avg_down)
    outplanes = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != outplanes:
        # a pre-activation shortcut takes the pre-activated input: no norm after its conv
        downsample = make_downsample(inplanes, outplanes, stride, avg_down, conv_cfg, norm_cfg,
                                     with_norm=not block.preact)
    common = dict(planes=planes, conv_cfg=conv_cfg, norm_cfg=norm_cfg, **block_kwargs)
    blocks = [block(inplanes=inplanes, stride=stride, downsample=downsample, **common)]
    blocks += [block(inplanes=outplanes, stride=1, **common) for _ in range(1, num_blocks)]
    return ResStage(*blocks)
