"""Deformable convolution (DCNv1 / DCNv2) with mmcv-compatible parameters.

Parameters and state-dict keys are those of mmcv's ``DeformConv2dPack``
(``DCN``) and ``ModulatedDeformConv2dPack`` (``DCNv2``): ``weight``, optional
``bias`` and ``conv_offset.weight/bias``. Two backends compute the op:

* ``torchvision``: ``torchvision.ops.deform_conv2d``; nothing to compile,
  CPU and CUDA.
* ``mmcv``: mmcv's op wrappers (``mmcv.ops``): mmcv's compiled kernels where
  they are built (``make setup MMCV_OPS=compiled``), else the torchvision
  stand-in (:mod:`resnet_backbone.mmcv_ext`).

``auto`` picks torchvision: it needs no compiled ops and was at least as fast
as mmcv's compiled CPU kernels (docs/benchmarks.md).
Reduced precision (fp16/bf16, e.g. under autocast) is computed in float32,
because neither backend has reduced-precision CPU kernels; the result is cast
back to the input's dtype.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from .errors import check_choice, check_int
from .functional import is_channels_last

DCN_TYPES = ('DCN', 'DCNv2')
DCN_BACKENDS = ('auto', 'torchvision', 'mmcv')


def mmcv_ops_available():
    try:
        from mmcv.ops import deform_conv2d, modulated_deform_conv2d  # noqa: F401
    except Exception:  # a missing or broken mmcv._ext
        return False
    return True


def resolve_backend(backend):
    check_choice('dcn.backend', backend, DCN_BACKENDS)
    if backend == 'mmcv' and not mmcv_ops_available():
        raise RuntimeError(
            "dcn.backend='mmcv' needs mmcv.ops, but 'from mmcv.ops import deform_conv2d' "
            "failed. Use backend='torchvision' (or 'auto'), or run make setup (README.md).")
    return 'torchvision' if backend == 'auto' else backend


class DeformConv2dPack(nn.Module):
    """Deformable 3x3 conv whose offsets (and DCNv2 masks) come from ``conv_offset``.

    ``modulated=False`` is DCNv1 (mmcv ``DCN``), ``True`` is DCNv2 (``DCNv2``).
    The offset conv starts at zero, so a fresh module equals a plain conv.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, deform_groups=1, bias=False, modulated=False,
                 backend='auto'):
        super().__init__()
        check_int('dcn.deform_groups', deform_groups, minimum=1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f'groups={groups} must divide in_channels={in_channels} and '
                             f'out_channels={out_channels}')
        if in_channels % deform_groups:
            raise ValueError(f'dcn.deform_groups={deform_groups} must divide the conv input '
                             f'channels ({in_channels})')
        if bias and not modulated:
            raise ValueError("dcn bias=True is only supported by type='DCNv2'")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deform_groups = deform_groups
        self.modulated = modulated
        self.backend = resolve_backend(backend)
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        per_point = 3 if modulated else 2
        self.conv_offset = nn.Conv2d(
            in_channels, deform_groups * per_point * self.kernel_size[0] * self.kernel_size[1],
            self.kernel_size, self.stride, self.padding, self.dilation, bias=True)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        self.init_offset()

    def init_offset(self):
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def offset_and_mask(self, x):
        out = self.conv_offset(x)
        if not self.modulated:
            return out, None
        o1, o2, mask = torch.chunk(out, 3, dim=1)
        return torch.cat((o1, o2), dim=1), torch.sigmoid(mask)

    def forward(self, x):
        offset, mask = self.offset_and_mask(x)
        return deform_conv(x, offset, mask, self.weight, self.bias, self.stride, self.padding,
                           self.dilation, self.groups, self.deform_groups, self.backend)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Old mmcv / detectron2 checkpoints name the offset conv ``conv2_offset``.
        old_prefix = prefix[:-1] + '_offset.'
        for name in ('weight', 'bias'):
            if prefix + 'conv_offset.' + name not in state_dict and old_prefix + name in state_dict:
                state_dict[prefix + 'conv_offset.' + name] = state_dict.pop(old_prefix + name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self):
        kind = 'DCNv2' if self.modulated else 'DCN'
        return (f'{kind}: {self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, '
                f'stride={self.stride}, padding={self.padding}, dilation={self.dilation}, '
                f'groups={self.groups}, deform_groups={self.deform_groups}, '
                f'backend={self.backend}')


def deform_conv(x, offset, mask, weight, bias, stride, padding, dilation, groups,
                deform_groups, backend='torchvision'):
    """Deformable conv on either backend; reduced precision runs in float32."""
    out_dtype = x.dtype
    channels_last = is_channels_last(x)
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=x.device.type, enabled=False):
        args = [t.to(compute_dtype) if t is not None else None
                for t in (x, offset, mask, weight, bias)]
        if backend == 'mmcv':
            out = _mmcv_deform_conv(*args, stride, padding, dilation, groups, deform_groups)
        else:
            from torchvision.ops import deform_conv2d
            xin, off, msk, w, b = args
            out = deform_conv2d(xin.contiguous(), off.contiguous(), w, b, stride=stride,
                                padding=padding, dilation=dilation,
                                mask=None if msk is None else msk.contiguous())
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out.to(out_dtype)


def _mmcv_deform_conv(x, offset, mask, weight, bias, stride, padding, dilation, groups,
                      deform_groups):
    from mmcv.ops import deform_conv2d, modulated_deform_conv2d
    x, offset, weight = x.contiguous(), offset.contiguous(), weight.contiguous()
    if mask is None:
        # mmcv's DCNv1 kernel rejects maps smaller than the kernel: zero-pad, then crop
        pad_h, pad_w = (max(k - s, 0) for k, s in zip(weight.shape[2:], x.shape[2:]))
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h)).contiguous()
            offset = F.pad(offset, (0, pad_w, 0, pad_h)).contiguous()
        out = deform_conv2d(x, offset, weight, stride, padding, dilation, groups, deform_groups,
                            False, 32)
        if pad_h or pad_w:
            out = out[:, :, :out.shape[2] - pad_h, :out.shape[3] - pad_w].contiguous()
        return out if bias is None else out + bias.reshape(1, -1, 1, 1)
    return modulated_deform_conv2d(x, offset, mask.contiguous(), weight, bias, stride, padding,
                                   dilation, groups, deform_groups)


def parse_dcn_cfg(dcn):
    """Validate an mmdet-style ``dcn`` dict; returns (modulated, kwargs, fallback)."""
    if not isinstance(dcn, dict):
        raise TypeError(f'dcn must be a dict like dict(type="DCNv2", deform_groups=1), '
                        f'got {type(dcn).__name__}: {dcn!r}')
    cfg = dict(dcn)
    kind = cfg.pop('type', None)
    check_choice('dcn.type', kind, DCN_TYPES)
    if 'deformable_groups' in cfg:  # the old spelling, still in zoo configs
        cfg.setdefault('deform_groups', cfg.pop('deformable_groups'))
    fallback_on_stride = cfg.pop('fallback_on_stride', False)
    kwargs = dict(deform_groups=cfg.pop('deform_groups', 1), backend=cfg.pop('backend', 'auto'))
    check_choice('dcn.backend', kwargs['backend'], DCN_BACKENDS)
    if cfg.pop('bias', False):
        kwargs['bias'] = True
    if cfg:
        raise ValueError(f'dcn has unknown keys {sorted(cfg)}; allowed: type, deform_groups '
                         '(or deformable_groups), fallback_on_stride, backend, bias')
    return kind == 'DCNv2', kwargs, fallback_on_stride
