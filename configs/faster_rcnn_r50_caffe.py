# Faster R-CNN R-50-FPN 1x, caffe style with the MSRA (Detectron) ImageNet weights: frozen
# BN affine, and the BGR, mean-only normalisation those weights were trained with
# (resnet_backbone.checkpoint.normalization_for gives the same numbers).
_base_ = './faster_rcnn_r50.py'
model = dict(
    data_preprocessor=dict(
        mean=[103.53, 116.28, 123.675], std=[1.0, 1.0, 1.0], bgr_to_rgb=False),
    backbone=dict(
        norm_cfg=dict(requires_grad=False),
        style='caffe',
        init_cfg=dict(type='Pretrained',
                      checkpoint='detectron2://ImageNetPretrained/MSRA/R-50.pkl')))
