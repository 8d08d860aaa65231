"""COCO evaluation: bbox/segm AP with pycocotools or faster-coco-eval.

Importing this package registers ``CocoAPMetric`` in MMDetection's METRICS.
"""
from .coco_eval import (AP_ITEMS, BACKENDS, CocoResult, class_table, coco_backend, evaluate,
                        faster_coco_eval_available, load_coco, metric_table)
from .metric import CocoAPMetric

__all__ = ['AP_ITEMS', 'BACKENDS', 'CocoResult', 'CocoAPMetric', 'class_table', 'coco_backend',
           'evaluate', 'faster_coco_eval_available', 'load_coco', 'metric_table']
