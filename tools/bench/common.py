"""Constants, cached imports and small helpers shared by the benchmark's modules."""
import contextlib
import importlib
import os

os.environ.setdefault('KINETO_LOG_LEVEL', '5')  # the memory profiler's startup chatter
import torch  # noqa: E402

BACKBONE_MODES = ('eval', 'train', 'train_cp')
MODES = BACKBONE_MODES + ('dcn', 'detector')
DEFAULT_MODES = BACKBONE_MODES + ('dcn',)
DTYPES = {'fp32': None, 'bf16': torch.bfloat16}
LAYOUTS = {'off': 'nchw', 'on': 'cl'}
COMPILES = {'off': 'eager', 'on': 'compiled'}
REFERENCE = 'mmdet'
SEED = 0
MIB = 1024.0 ** 2
# A train row has the "same" gradients as MMDetection when its norm-wise error
# against float64 is within max(factor x MMDetection's in that setting, floor of
# the dtype). The floors sit above what ReLU-mask flips alone give and far below
# what a wrong formula gives.
GRAD_SAME_FACTOR = 2.0
GRAD_SAME_FLOOR = {'fp32': 1e-4, 'bf16': 3e-2}
MASK_RCNN_CONFIG = ('mask_rcnn', 'mask-rcnn_r50_fpn_1x_coco.py')
_CACHE = {}


def _once(key, fn):
    if key not in _CACHE:
        _CACHE[key] = fn()
    return _CACHE[key]


def _import_class(module, name, what):
    """(the class or None, its dotted name or why it could not be imported)."""
    def load():
        try:
            return getattr(importlib.import_module(module), name), f'{module}.{name}'
        except Exception as e:
            return None, f'{what} unavailable ({type(e).__name__}: {e})'
    return _once(f'{module}.{name}', load)


def mmdet_resnet():
    return _import_class('mmdet.models.backbones', 'ResNet', 'MMDetection ResNet')


def ours_class():
    return _import_class('resnet_backbone', 'ResNetBackbone', 'resnet_backbone')


def mmcv_ops_status():
    def load():
        try:
            from mmcv.ops import RoIAlign, deform_conv2d, nms  # noqa: F401
            from resnet_backbone.mmcv_ext import mmcv_ext_kind
            kind = {'compiled': "mmcv's compiled ops",
                    'torchvision': 'torchvision kernels via resnet_backbone.mmcv_ext'}
            return True, f'mmcv.ops imports ({kind.get(mmcv_ext_kind(), mmcv_ext_kind())})'
        except Exception as e:
            return False, f'mmcv.ops unavailable ({type(e).__name__}: {str(e)[:160]})'
    return _once('mmcv_ops', load)


def autocast_ctx(device, amp_dtype):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
