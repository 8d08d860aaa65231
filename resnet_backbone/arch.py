"""The ResNet family's architecture table and the backbone's argument checks.

Every bad argument raises a ValueError/TypeError that names the parameter, the
value and what is allowed (docs/bad_inputs.md).
"""
import warnings

from .blocks import STYLES, BasicBlock, Bottleneck, PreActBasicBlock, PreActBottleneck, \
    check_plugins
from .dcn import parse_dcn_cfg
from .errors import check_bool, check_choice, check_int, check_int_sequence

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


def resolve_architecture(depth, stage_blocks, block):
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


def pretrained_init_cfg(pretrained, init_cfg):
    """``init_cfg``, or the one the deprecated ``pretrained`` path stands for."""
    if init_cfg is not None and pretrained is not None:
        raise ValueError('pass either init_cfg or pretrained, not both (pretrained is '
                         'deprecated: use init_cfg=dict(type="Pretrained", checkpoint=...))')
    if pretrained is None:
        return init_cfg
    if not isinstance(pretrained, str):
        raise TypeError(f'pretrained must be a str path/URL or None, got {pretrained!r}')
    warnings.warn('pretrained is deprecated, use init_cfg=dict(type="Pretrained", '
                  'checkpoint=...)', DeprecationWarning)
    return dict(type='Pretrained', checkpoint=pretrained)


def check_backbone_args(a):
    """Check the arguments of ``ResNetBackbone`` (a dict); returns the normalised ones:
    block kind, blocks per stage, strides, dilations, out_indices, stage_with_dcn."""
    kind, all_stage_blocks = resolve_architecture(a['depth'], a['stage_blocks'], a['block'])
    num_stages = a['num_stages']
    check_int('num_stages', num_stages, 1, 4 if a['stage_blocks'] is None else None)
    if num_stages > len(all_stage_blocks):
        raise ValueError(f'num_stages={num_stages} is out of range; allowed: 1 to '
                         f'{len(all_stage_blocks)} (stage_blocks={tuple(all_stage_blocks)})')
    for name in ('in_channels', 'base_channels', 'groups', 'base_width', 'widen_factor'):
        check_int(name, a[name], minimum=1)
    if a['stem_channels'] is not None:
        check_int('stem_channels', a['stem_channels'], minimum=1)
    strides = check_int_sequence('strides', a['strides'], num_stages, minimum=1)
    dilations = check_int_sequence('dilations', a['dilations'], num_stages, minimum=1)
    out_indices = check_int_sequence('out_indices', a['out_indices'])
    if not out_indices and not a['out_stem']:
        raise ValueError('out_indices=() selects no output; allowed: indices 0 to '
                         f'{num_stages - 1}')
    for i in out_indices:
        if not 0 <= i < num_stages:
            raise ValueError(f'out_indices={out_indices} has {i}; allowed: 0 to '
                             f'{num_stages - 1} (num_stages={num_stages}; 0 is C2)')
    if len(set(out_indices)) != len(out_indices):
        raise ValueError(f'out_indices={out_indices} repeats an index; each stage can be '
                         'returned once')
    check_choice('style', a['style'], STYLES)
    check_int('frozen_stages', a['frozen_stages'], -1, num_stages)
    for name in ('deep_stem', 'avg_down', 'norm_eval', 'with_cp', 'zero_init_residual',
                 'preact', 'out_stem', 'check_finite'):
        check_bool(name, a[name])
    if a['channels_last'] not in (True, False, 'auto'):
        raise ValueError(f"channels_last={a['channels_last']!r} is not supported; allowed: "
                         "True, False, 'auto'")
    norm_cfg = a['norm_cfg']
    if not isinstance(norm_cfg, dict) or 'type' not in norm_cfg:
        raise TypeError(f"norm_cfg must be a dict with a 'type' key, e.g. dict(type='BN'), "
                        f'got {norm_cfg!r}')
    stage_with_dcn = tuple(a['stage_with_dcn'])
    if a['dcn'] is not None:
        parse_dcn_cfg(a['dcn'])
        if len(stage_with_dcn) != num_stages:
            raise ValueError(f'stage_with_dcn={stage_with_dcn} has {len(stage_with_dcn)} '
                             f'entries; it needs one per stage ({num_stages})')
    check_plugins(a['plugins'], num_stages)
    if kind == 'basic' and (a['groups'] != 1 or a['widen_factor'] != 1):
        raise ValueError(f"groups={a['groups']}/widen_factor={a['widen_factor']} need "
                         f"bottleneck blocks, but depth={a['depth']} uses basic blocks; use "
                         'depth 50/101/152')
    if a['deep_stem'] and (a['stem_channels'] or a['base_channels']) < 2:
        raise ValueError('deep_stem needs stem_channels >= 2')
    return (kind, tuple(all_stage_blocks[:num_stages]), strides, dilations, out_indices,
            stage_with_dcn)
