# Faster R-CNN ResNeXt-101-32x4d-FPN 1x, OpenMMLab ImageNet weights (pytorch style).
_base_ = './faster_rcnn_r50.py'
model = dict(
    backbone=dict(
        type='ResNeXtBackbone',
        depth=101,
        groups=32,
        base_width=4,
        init_cfg=dict(type='Pretrained', checkpoint='open-mmlab://resnext101_32x4d')))
