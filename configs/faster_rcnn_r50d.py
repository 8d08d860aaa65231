# Faster R-CNN ResNet-50-D-FPN 1x: deep stem and average-pool shortcuts (ResNetV1d),
# timm resnet50d ImageNet weights.
_base_ = './faster_rcnn_r50.py'
model = dict(
    backbone=dict(
        type='ResNet50D',
        init_cfg=dict(type='Pretrained', checkpoint='timm://resnet50d')))
