# Faster R-CNN R-50-FPN 1x with modulated deformable convolutions (DCNv2) in c3-c5.
_base_ = './faster_rcnn_r50.py'
model = dict(
    backbone=dict(
        dcn=dict(type='DCNv2', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)))
