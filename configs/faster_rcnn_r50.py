# Faster R-CNN R-50-FPN, 1x COCO schedule, pytorch style, torchvision ImageNet weights.
_base_ = [
    './_base_/models/faster_rcnn_r50_fpn.py', './_base_/datasets/coco_detection.py',
    './_base_/schedules/schedule_1x.py', './_base_/default_runtime.py'
]
