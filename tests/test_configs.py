"""Every config in configs/ builds, takes one training step and predicts, on CPU.

Inputs are tiny (one 128x128 synthetic image through the config's own pipelines, with
the Resize scale shrunk) and the proposal/RoI counts are cut, so each config takes a
few seconds. Weights are random: the Pretrained init_cfg is dropped (offline).
Also: the configs agree with MMDetection's zoo configs, normalisation matches the
weights, and the data root moves.
"""
import copy
import glob
import os
import os.path as osp

import pytest
import torch

from helpers import load_json, plain

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_DIR = osp.join(ROOT, 'configs')
CONFIGS = sorted(p for p in glob.glob(osp.join(CONFIG_DIR, '**', '*.py'), recursive=True)
                 if '_base_' not in p.split(os.sep))
OUR_BACKBONES = {'ResNetBackbone', 'ResNetV1dBackbone', 'ResNeXtBackbone', 'ResNet50D',
                 'ResNeXt101_32x4d', 'ResNeXt101_64x4d', 'WideResNet50_2'}
SIZE = 128


def rel(path):
    return osp.relpath(path, CONFIG_DIR)


def load(path):
    from mmengine.config import Config
    return Config.fromfile(path)


@pytest.fixture(scope='module')
def sample(tmp_path_factory):
    """A data_info dict (as CocoDataset gives it) for one synthetic image."""
    import json

    from resnet_backbone.demo.shapes import generate_split
    root = str(tmp_path_factory.mktemp('shapes'))
    ann = load_json(generate_split(root, 'val', 3, seed=11, size=SIZE))
    image = max(ann['images'], key=lambda im: sum(a['image_id'] == im['id']
                                                  for a in ann['annotations']))
    instances = []
    for a in ann['annotations']:
        if a['image_id'] == image['id']:
            x, y, w, h = a['bbox']
            instances.append(dict(bbox=[x, y, x + w, y + h], bbox_label=a['category_id'] - 1,
                                  mask=a['segmentation'], ignore_flag=0))
    assert len(instances) >= 2
    return dict(img_path=osp.join(root, 'val', image['file_name']), img_id=image['id'],
                height=SIZE, width=SIZE, instances=instances)


def small_pipeline(pipeline):
    pipeline = copy.deepcopy(pipeline)
    for t in pipeline:
        if t['type'] == 'Resize':
            t['scale'] = (SIZE, SIZE)
    return pipeline


def shrink(cfg):
    """Fewer proposals, RoIs and detections: same code paths, less work."""
    train, test = cfg.model.train_cfg, cfg.model.test_cfg
    train.rpn_proposal.update(nms_pre=200, max_per_img=64)
    train.rcnn.sampler.num = 32
    test.rpn.update(nms_pre=200, max_per_img=32)
    # random weights score every class about equally: keep a few detections anyway
    test.rcnn.update(score_thr=0.0, max_per_img=8)


def batch(pipeline_cfg, sample):
    from mmcv.transforms import Compose
    from mmengine.dataset import pseudo_collate
    return pseudo_collate([Compose(small_pipeline(pipeline_cfg))(copy.deepcopy(sample))])


@pytest.mark.parametrize('path', CONFIGS, ids=rel)
def test_config_trains_one_step_and_predicts(path, sample):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.optim import build_optim_wrapper

    from resnet_backbone import ResNetBackbone
    register_all_modules(init_default_scope=True)
    cfg = load(path)
    assert cfg.model.backbone.type in OUR_BACKBONES, f'{rel(path)} does not use our backbone'
    assert 'resnet_backbone' in cfg.custom_imports['imports']
    cfg.model.backbone.init_cfg = None  # offline: random weights
    shrink(cfg)
    model = MODELS.build(cfg.model)
    model.init_weights()
    assert isinstance(model.backbone, ResNetBackbone)
    with_mask = 'mask_head' in cfg.model.roi_head

    # prediction first: one SGD step at the COCO learning rate on random weights can
    # blow up the caffe-normalised (0-255 input) models, which real weights would not
    model.eval()
    test_data = batch(cfg.test_dataloader.dataset.pipeline, sample)
    with torch.no_grad():
        out = model.test_step(test_data)
    assert len(out) == 1
    pred = out[0].pred_instances
    n = len(pred)
    assert 1 <= n <= 8
    assert pred.bboxes.shape == (n, 4)
    assert ((pred.scores >= 0) & (pred.scores <= 1)).all()
    assert (pred.labels < cfg.model.roi_head.bbox_head.num_classes).all()
    assert (pred.bboxes[:, 2:] >= pred.bboxes[:, :2]).all()
    if with_mask:
        assert pred.masks.shape == (n, SIZE, SIZE)

    data = batch(cfg.train_dataloader.dataset.pipeline, sample)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    watched = model.rpn_head.rpn_conv.weight
    before = watched.detach().clone()
    model.train()
    log_vars = model.train_step(data, optim_wrapper)
    expected = {'loss', 'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'acc'}
    if with_mask:
        expected.add('loss_mask')
    assert expected <= set(log_vars), sorted(log_vars)
    for key, value in log_vars.items():
        assert torch.isfinite(torch.as_tensor(value)).all(), f'{key} = {value}'
    assert float(log_vars['loss']) > 0
    assert not torch.equal(before, watched.detach()), 'the optimizer step changed nothing'


# ------------------------------------------------------------ agreement with the zoo
MMDET_TWINS = {
    'faster_rcnn_r50.py': 'faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py',
    'mask_rcnn_r50.py': 'mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    'faster_rcnn_r50_caffe.py': 'faster_rcnn/faster-rcnn_r50-caffe_fpn_1x_coco.py',
    'mask_rcnn_r50_caffe.py': 'mask_rcnn/mask-rcnn_r50-caffe_fpn_1x_coco.py',
    'faster_rcnn_r50_dcn.py': 'dcn/faster-rcnn_r50-dconv-c3-c5_fpn_1x_coco.py',
    'mask_rcnn_r50_dcn.py': 'dcn/mask-rcnn_r50-dconv-c3-c5_fpn_1x_coco.py',
    'faster_rcnn_r50_dcnv2.py': 'dcnv2/faster-rcnn_r50-mdconv-c3-c5_fpn_1x_coco.py',
    'mask_rcnn_r50_dcnv2.py': 'dcnv2/mask-rcnn_r50-mdconv-c3-c5_fpn_1x_coco.py',
    'faster_rcnn_r50_caffe_dc5.py': 'faster_rcnn/faster-rcnn_r50-caffe-dc5_1x_coco.py',
    'faster_rcnn_r101.py': 'faster_rcnn/faster-rcnn_r101_fpn_1x_coco.py',
    'mask_rcnn_r101.py': 'mask_rcnn/mask-rcnn_r101_fpn_1x_coco.py',
    'faster_rcnn_x101_32x4d.py': 'faster_rcnn/faster-rcnn_x101-32x4d_fpn_1x_coco.py',
    'mask_rcnn_x101_32x4d.py': 'mask_rcnn/mask-rcnn_x101-32x4d_fpn_1x_coco.py',
}
TYPE_MAP = {'ResNet': 'ResNetBackbone', 'ResNeXt': 'ResNeXtBackbone'}


def _mmdet_zoo():
    import mmdet
    path = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs')
    if not osp.isdir(path):
        pytest.skip("mmdet's zoo configs are not in this install")
    return path


def _model_without_weights(cfg):
    model = plain(cfg.model)
    backbone = model['backbone']
    backbone['type'] = TYPE_MAP.get(backbone['type'], backbone['type'])
    backbone.pop('init_cfg', None)
    return model


@pytest.mark.parametrize('ours', sorted(MMDET_TWINS))
def test_config_matches_mmdet_zoo(ours):
    """Same model, schedule, pipelines and metrics as MMDetection's config; only the
    backbone type (ours), the evaluator type and, for caffe, the weight name differ."""
    theirs = load(osp.join(_mmdet_zoo(), MMDET_TWINS[ours]))
    cfg = load(osp.join(CONFIG_DIR, ours))
    assert _model_without_weights(cfg) == _model_without_weights(theirs)
    for key in ('train_cfg', 'param_scheduler', 'optim_wrapper', 'auto_scale_lr'):
        assert plain(cfg[key]) == plain(theirs[key]), key
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        a, b = plain(cfg[loader]), plain(theirs[loader])
        assert a['dataset']['pipeline'] == b['dataset']['pipeline'], loader
        for key in ('ann_file', 'data_prefix', 'data_root', 'type'):
            assert a['dataset'].get(key) == b['dataset'].get(key), (loader, key)
        assert a['batch_size'] == b['batch_size']
    ours_eval, theirs_eval = cfg.val_evaluator, theirs.val_evaluator
    assert ours_eval.type == 'CocoAPMetric'
    assert ours_eval.ann_file == theirs_eval.ann_file
    assert plain(ours_eval.metric) == plain(theirs_eval.metric)
    ours_w = cfg.model.backbone.init_cfg.checkpoint
    theirs_w = theirs.model.backbone.init_cfg.checkpoint
    if 'caffe' in ours:
        assert ours_w == 'detectron2://ImageNetPretrained/MSRA/R-50.pkl'
    else:
        assert ours_w == theirs_w


def test_r50d_and_mask_dc5_variants():
    r50 = load(osp.join(CONFIG_DIR, 'mask_rcnn_r50.py'))
    r50d = load(osp.join(CONFIG_DIR, 'mask_rcnn_r50d.py'))
    assert r50d.model.backbone.type == 'ResNet50D'
    assert r50d.model.backbone.init_cfg.checkpoint == 'timm://resnet50d'
    a, b = plain(r50.model), plain(r50d.model)
    a.pop('backbone'), b.pop('backbone')
    assert a == b
    faster_dc5 = load(osp.join(CONFIG_DIR, 'faster_rcnn_r50_caffe_dc5.py'))
    mask_dc5 = load(osp.join(CONFIG_DIR, 'mask_rcnn_r50_caffe_dc5.py'))
    bb = mask_dc5.model.backbone
    assert tuple(bb.strides) == (1, 2, 2, 1) and tuple(bb.dilations) == (1, 1, 1, 2)
    assert tuple(bb.out_indices) == (3, ) and 'neck' not in mask_dc5.model
    mask_roi = mask_dc5.model.roi_head
    assert mask_roi.mask_roi_extractor.out_channels == 2048
    assert list(mask_roi.mask_roi_extractor.featmap_strides) == [16]
    assert mask_roi.mask_head.in_channels == 2048
    assert plain(mask_roi.bbox_head) == plain(faster_dc5.model.roi_head.bbox_head)
    assert plain(mask_dc5.model.rpn_head) == plain(faster_dc5.model.rpn_head)


@pytest.mark.parametrize('path', CONFIGS, ids=rel)
def test_normalisation_matches_weights(path):
    import warnings

    from resnet_backbone.checkpoint import check_normalization, normalization_for
    cfg = load(path)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert check_normalization(cfg) == []
    init = cfg.model.backbone.get('init_cfg')
    if init and 'caffe' in osp.basename(path):
        want = normalization_for(init.checkpoint)
        pre = cfg.model.data_preprocessor
        assert want['style'] == cfg.model.backbone.style == 'caffe'
        assert list(pre.mean) == pytest.approx(want['mean'])
        assert list(pre.std) == pytest.approx(want['std'])
        assert pre.bgr_to_rgb is want['bgr_to_rgb'] is False
        assert cfg.model.backbone.norm_cfg.requires_grad is False


def test_schedules_are_mmdetections():
    base = osp.join(CONFIG_DIR, '_base_', 'schedules')
    for name, epochs, milestones in (('schedule_1x', 12, [8, 11]),
                                     ('schedule_2x', 24, [16, 22]),
                                     ('schedule_20e', 20, [16, 19])):
        cfg = load(osp.join(base, name + '.py'))
        assert cfg.train_cfg.max_epochs == epochs
        warmup, steps = cfg.param_scheduler
        assert (warmup.type, warmup.end, warmup.start_factor) == ('LinearLR', 500, 0.001)
        assert list(steps.milestones) == milestones and steps.end == epochs
        assert cfg.optim_wrapper.optimizer.lr == 0.02


def test_data_root_from_environment(monkeypatch, tmp_path):
    root = str(tmp_path / 'coco') + '/'
    monkeypatch.setenv('COCO_ROOT', root)
    cfg = load(osp.join(CONFIG_DIR, 'mask_rcnn_r50.py'))
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader].dataset.data_root == root
    assert cfg.val_evaluator.ann_file == root + 'annotations/instances_val2017.json'


def test_set_data_root_moves_everything():
    from resnet_backbone.cli import dataset_paths, set_data_root
    cfg = load(osp.join(CONFIG_DIR, 'demo', 'mask_rcnn_r18_shapes.py'))
    set_data_root(cfg, '/elsewhere/shapes')
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        paths = dataset_paths(cfg, loader)
        assert paths and all(p.startswith('/elsewhere/shapes/') for _, p in paths), paths
    for ev in (cfg.val_evaluator, cfg.test_evaluator):
        assert ev.ann_file == '/elsewhere/shapes/annotations/instances_val.json'


def test_demo_config_is_offline_and_consistent():
    from resnet_backbone.demo.shapes import CLASSES
    cfg = load(osp.join(CONFIG_DIR, 'demo', 'mask_rcnn_r18_shapes.py'))
    assert cfg.model.backbone.init_cfg is None and cfg.model.backbone.depth == 18
    assert tuple(cfg.classes) == CLASSES
    assert cfg.model.roi_head.bbox_head.num_classes == len(CLASSES)
    assert cfg.model.roi_head.mask_head.num_classes == len(CLASSES)
    assert cfg.randomness.seed == 0
    base = load(osp.join(CONFIG_DIR, 'mask_rcnn_r50.py'))
    assert cfg.model.type == base.model.type == 'MaskRCNN'
