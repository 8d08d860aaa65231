# Faster R-CNN R-50-FPN 1x with deformable convolutions (DCNv1) in the 3x3 convs of c3-c5.
_base_ = './faster_rcnn_r50.py'
model = dict(
    backbone=dict(
        dcn=dict(type='DCN', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True)))
