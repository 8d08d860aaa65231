"""Input normalisation implied by the weights, and a check that a config agrees.

Caffe/MSRA weights (detectron2 ``R-50.pkl``, ``open-mmlab://*_caffe``) expect
BGR 0-255 input minus the mean, unscaled, and ``style='caffe'``; torchvision
and timm weights expect RGB input with the ImageNet mean/std.
"""
import warnings

WEIGHT_NORMALIZATION = {
    'caffe': dict(mean=[103.530, 116.280, 123.675], std=[1.0, 1.0, 1.0], bgr_to_rgb=False,
                  style='caffe'),
    'pytorch': dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                    bgr_to_rgb=True, style='pytorch'),
}


def weights_family(checkpoint):
    """'caffe' for MSRA/Caffe2 weights, 'pytorch' for torchvision/timm, else None."""
    name = str(checkpoint)
    if ('caffe' in name or name.startswith('detectron2://ImageNetPretrained/MSRA')
            or name.endswith('.pkl')):
        return 'caffe'
    if name.startswith(('torchvision://', 'timm://')) or 'pytorch' in name:
        return 'pytorch'
    return None


def normalization_for(checkpoint):
    """``data_preprocessor`` mean/std/bgr_to_rgb and backbone style for these weights."""
    family = weights_family(checkpoint)
    if family is None:
        raise ValueError(f'cannot tell which normalisation {checkpoint!r} was trained with; '
                         f'pick one of {list(WEIGHT_NORMALIZATION)} explicitly')
    return dict(WEIGHT_NORMALIZATION[family])


def check_normalization(cfg):
    """Warn when a config's data preprocessor or style disagrees with its weights.

    Returns the list of problems found (empty when consistent or unknown).
    """
    model = cfg.get('model', {}) if hasattr(cfg, 'get') else {}
    backbone = model.get('backbone', {}) or {}
    init_cfg = backbone.get('init_cfg') or {}
    checkpoint = init_cfg.get('checkpoint') if isinstance(init_cfg, dict) else None
    family = weights_family(checkpoint) if checkpoint else None
    if family is None:
        return []
    expected = WEIGHT_NORMALIZATION[family]
    pre = model.get('data_preprocessor', {}) or {}
    problems = []
    for key in ('mean', 'std', 'bgr_to_rgb'):
        if key in pre and pre[key] is not None:
            got = list(pre[key]) if isinstance(pre[key], (list, tuple)) else pre[key]
            want = expected[key]
            if (isinstance(want, list) and [round(float(g), 2) for g in got]
                    != [round(w, 2) for w in want]) or (not isinstance(want, list) and got != want):
                problems.append(f'data_preprocessor.{key}={got} but {family} weights need {want}')
    style = backbone.get('style', 'pytorch')
    if style != expected['style']:
        problems.append(f"backbone style={style!r} but {family} weights need "
                        f"style={expected['style']!r}")
    if problems:
        warnings.warn(f'{checkpoint}: normalisation does not match the weights: '
                      + '; '.join(problems) + ' (resnet_backbone.checkpoint.normalization_for '
                      'gives the right values)', UserWarning)
    return problems
