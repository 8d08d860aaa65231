"""MMDetection zoo detectors with this backbone and no compiled mmcv ops.

Each R-50 config from MMDetection's zoo, with only the backbone's ``type``
changed (no pretrained download; fewer proposals and RoIs, no score threshold),
builds, takes one CPU training step on two small images and predicts. The kernels mmcv's wrappers called are counted: they
are the torchvision stand-in's (resnet_backbone.mmcv_ext). This is the check
behind the coverage table in docs/mmcv_ops.md.
"""
import collections
import os.path as osp

import pytest
import torch
from mmcv_reference import WRAPPER_MODULES, mask_rcnn_inputs, packed

from resnet_backbone import mmcv_ext

TYPES = {'ResNet': 'ResNetBackbone', 'ResNetV1d': 'ResNetV1dBackbone',
         'ResNeXt': 'ResNeXtBackbone'}
# config -> the stand-in kernels one step and a prediction must call (on CPU)
CONFIGS = {
    'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py': {'roi_align_forward', 'roi_align_backward',
                                                    'nms'},
    'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py': {'roi_align_forward', 'roi_align_backward',
                                                'nms'},
    'cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py': {'roi_align_forward', 'roi_align_backward',
                                                      'nms'},
    'cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py': {'roi_align_forward',
                                                           'roi_align_backward', 'nms'},
    # dense heads: nms only (their focal loss takes mmcv's kernel on CUDA alone)
    'retinanet/retinanet_r50_fpn_1x_coco.py': {'nms'},
    'fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py': {'nms'},
    'dcn/mask-rcnn_r50-dconv-c3-c5_fpn_1x_coco.py': {'roi_align_forward',
                                                     'roi_align_backward', 'nms'},
}


class CountingKernels:
    """The stand-in, counting the calls mmcv's wrappers make."""

    def __init__(self):
        self.calls = collections.Counter()

    def __getattr__(self, name):
        kernel = getattr(mmcv_ext, name)

        def counted(*args, **kwargs):
            self.calls[name] += 1
            return kernel(*args, **kwargs)
        return counted


@pytest.fixture
def counted_kernels(monkeypatch):
    import importlib
    kernels = CountingKernels()
    for name in WRAPPER_MODULES:
        monkeypatch.setattr(importlib.import_module(f'mmcv.ops.{name}'), 'ext_module', kernels)
    return kernels


def small(node):
    """The config's train/test settings with fewer proposals and sampled RoIs (CPU time),
    and no score threshold, so that a freshly initialised model still reaches NMS."""
    if isinstance(node, (list, tuple)):
        for item in node:
            small(item)
    elif isinstance(node, dict):
        for key, cap in (('nms_pre', 200), ('max_per_img', 20), ('num', 64)):
            if isinstance(node.get(key), int):
                node[key] = min(node[key], cap)
        if 'score_thr' in node:
            node['score_thr'] = 0.0
        for value in node.values():
            small(value)


def zoo_detector(config):
    import mmdet
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    import resnet_backbone  # noqa: F401  (registers the backbone types)
    register_all_modules()
    cfg = Config.fromfile(osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs', config))
    backbone = cfg.model.backbone
    backbone.type = TYPES[backbone.type]
    backbone.init_cfg = None
    small(cfg.model.get('train_cfg'))
    small(cfg.model.get('test_cfg'))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


@pytest.mark.parametrize('config', list(CONFIGS))
def test_zoo_detector_trains_and_predicts(config, counted_kernels):
    model = zoo_detector(config)
    assert type(model.backbone).__name__ in TYPES.values()
    inputs = mask_rcnn_inputs()
    model.train()
    losses = model(**model.data_preprocessor(packed(inputs, True), True), mode='loss')
    loss, log_vars = model.parse_losses(losses)
    assert torch.isfinite(loss) and loss > 0, log_vars
    loss.backward()
    trainable = [p for p in model.backbone.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    assert any(p.grad.abs().sum() > 0 for p in trainable)
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(packed(inputs, False), False),
                        mode='predict')
    assert len(results) == 2 and all('pred_instances' in r for r in results)
    assert set(counted_kernels.calls) == CONFIGS[config], dict(counted_kernels.calls)
