# Mask R-CNN R-101-FPN 1x, torchvision ImageNet weights.
_base_ = './mask_rcnn_r50.py'
model = dict(
    backbone=dict(
        depth=101,
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet101')))
