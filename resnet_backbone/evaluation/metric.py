"""``CocoAPMetric``: MMDetection's CocoMetric with a choice of backend and progress.

Differences from ``mmdet.evaluation.CocoMetric`` (whose result formatting,
``format_only`` and ground-truth conversion it reuses):

* ``backend='auto'`` uses faster-coco-eval when installed, else pycocotools;
* progress of the matching step is logged;
* APs are kept unrounded; the last tables (overall and per class) are kept
  in ``last_tables`` and the raw results in ``last_results`` for tools;
* only the images that were predicted are scored (a subset run, e.g. with
  ``indices``, is not charged for the images it skipped).

Config use (after ``custom_imports`` of ``resnet_backbone.evaluation``)::

    val_evaluator = dict(type='CocoAPMetric', ann_file=..., metric=['bbox', 'segm'],
                         classwise=False, format_only=False, outfile_prefix=None)
"""
import os.path as osp
import tempfile
from collections import OrderedDict

from mmdet.evaluation.metrics import CocoMetric
from mmdet.registry import METRICS
from mmengine.fileio import get_local_path, load
from mmengine.logging import MMLogger

from .coco_eval import class_table, coco_backend, evaluate, load_coco, metric_table

SUPPORTED = ('bbox', 'segm')


@METRICS.register_module()
class CocoAPMetric(CocoMetric):
    """COCO bbox / segm AP (AP, AP50, AP75, APs, APm, APl), optionally per class.

    Args:
        ann_file (str, optional): COCO annotation json. Without it the
            ground truth is converted from the data samples.
        metric (str | list[str]): ``'bbox'`` and/or ``'segm'``.
        classwise (bool): also compute and log a per-class table.
        format_only (bool): only write ``<outfile_prefix>.bbox.json`` /
            ``.segm.json`` (e.g. for a test-dev submission); needs
            ``outfile_prefix``.
        outfile_prefix (str, optional): where result jsons go (else a temp dir).
        backend (str): ``'auto'``, ``'pycocotools'`` or ``'faster_coco_eval'``.
    """
    default_prefix = 'coco'

    def __init__(self, ann_file=None, metric='bbox', classwise=False, format_only=False,
                 outfile_prefix=None, backend='auto', backend_args=None,
                 collect_device='cpu', prefix=None):
        metrics = list(metric) if isinstance(metric, (list, tuple)) else [metric]
        for m in metrics:
            if m not in SUPPORTED:
                raise KeyError(f'metric={m!r} is not supported by CocoAPMetric; allowed: '
                               f"{', '.join(SUPPORTED)} (use mmdet's CocoMetric for proposals)")
        if format_only and not outfile_prefix:
            raise ValueError('format_only=True needs outfile_prefix: the result files would '
                             'otherwise go to a temporary directory that is deleted')
        self.backend = coco_backend(backend)
        super().__init__(ann_file=None, metric=metrics, classwise=classwise,
                         format_only=format_only, outfile_prefix=outfile_prefix,
                         backend_args=backend_args, collect_device=collect_device,
                         prefix=prefix)
        self.ann_file = ann_file
        if ann_file is not None:
            with get_local_path(ann_file, backend_args=backend_args) as local_path:
                self._coco_api = load_coco(self.backend, local_path)
        self.last_results = []
        self.last_tables = {}

    def compute_metrics(self, results):
        logger = MMLogger.get_current_instance()
        gts, preds = zip(*results)
        tmp_dir = None
        if self.outfile_prefix is None:
            tmp_dir = tempfile.TemporaryDirectory()
            outfile_prefix = osp.join(tmp_dir.name, 'results')
        else:
            outfile_prefix = self.outfile_prefix
        try:
            return self._compute(gts, preds, outfile_prefix, logger)
        finally:
            if tmp_dir is not None:
                tmp_dir.cleanup()

    def _compute(self, gts, preds, outfile_prefix, logger):
        if self._coco_api is None:
            logger.info('converting the ground truth to COCO format')
            self._coco_api = load_coco(self.backend, self.gt_to_coco_json(gts, outfile_prefix))
        if self.cat_ids is None:
            classes = (self.dataset_meta or {}).get('classes')
            self.cat_ids = (self._coco_api.getCatIds(catNms=list(classes)) if classes
                            else sorted(self._coco_api.getCatIds()))
        result_files = self.results2json(preds, outfile_prefix)
        if self.format_only:
            logger.info('format_only: results written to ' + ', '.join(
                result_files[m] for m in self.metrics if m in result_files))
            return OrderedDict()

        img_ids = sorted({gt['img_id'] for gt in gts})
        known = set(self._coco_api.getImgIds())
        if len(img_ids) < len(known):
            logger.info(f'scoring the {len(img_ids)} predicted images of the {len(known)} '
                        'in the annotation file')
        eval_results = OrderedDict()
        self.last_results, self.last_tables = [], {}
        for metric in self.metrics:
            if metric not in result_files:
                raise KeyError(f"metric '{metric}' asked for, but the model gave no "
                               f"{'masks' if metric == 'segm' else 'boxes'}")
            logger.info(f'evaluating {metric} with {self.backend.name}')
            res = evaluate(self._coco_api, load(result_files[metric]), metric, self.backend,
                           img_ids=img_ids, cat_ids=self.cat_ids, classwise=self.classwise,
                           log=logger.info)
            self.last_results.append(res)
            for key, value in res.aps.items():
                eval_results[f'{metric}_{key}'] = value
            if res.summary:
                logger.info(f'{metric} ({res.seconds:.1f} s):\n{res.summary}')
            logger.info(f'{metric}_mAP_copypaste: ' + ' '.join(
                f'{res.aps[k]:.3f}' for k in ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m',
                                              'mAP_l')))
            if self.classwise:
                table = class_table(res)
                self.last_tables[f'{metric}_classwise'] = table
                logger.info('\n' + table)
                for name, aps in res.per_class:
                    eval_results[f'{metric}_{name}_mAP'] = aps['mAP']
        overall = metric_table(self.last_results)
        self.last_tables = {'overall': overall, **self.last_tables}
        logger.info('\n' + overall)
        return eval_results
