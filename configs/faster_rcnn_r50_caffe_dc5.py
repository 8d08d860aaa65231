# Faster R-CNN R-50-DC5 1x (dilated C5, single-level C5 RPN and box head), caffe style
# with the MSRA weights and their BGR normalisation.
_base_ = [
    './_base_/models/faster_rcnn_r50_caffe_dc5.py', './_base_/datasets/coco_detection.py',
    './_base_/schedules/schedule_1x.py', './_base_/default_runtime.py'
]
