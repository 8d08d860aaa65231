"""COCO AP with pycocotools, or faster-coco-eval when it is installed.

``coco_backend('auto')`` picks faster-coco-eval (same numbers, C++ matching)
when it imports and pycocotools otherwise. ``evaluate`` runs one IoU type and
returns the six standard APs, the per-class APs and the printed summary,
reporting progress as it goes.
"""
import contextlib
import io
import time
from dataclasses import dataclass, field

import numpy as np

BACKENDS = ('auto', 'pycocotools', 'faster_coco_eval')
# (key, pycocotools stats index, title)
AP_ITEMS = (('mAP', 0, 'AP'), ('mAP_50', 1, 'AP50'), ('mAP_75', 2, 'AP75'),
            ('mAP_s', 3, 'APs'), ('mAP_m', 4, 'APm'), ('mAP_l', 5, 'APl'))


@dataclass
class CocoBackend:
    name: str
    COCO: type
    COCOeval: type


def _pycocotools_backend():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    class ProgressCOCOeval(COCOeval):
        """pycocotools' COCOeval that reports progress while matching.

        ``evaluate`` is pycocotools' own: the per-(image, class) IoU and
        matching steps it calls are counted on the way through.
        """
        progress = None

        def evaluate(self):
            p = self.params
            n_img = len(np.unique(p.imgIds))
            n_cat = len(np.unique(p.catIds)) if p.useCats else 1
            total = n_img * n_cat * (1 + len(p.areaRng))
            done = [0]
            report = self.progress

            def counted(fn):
                def wrapper(*args, **kwargs):
                    out = fn(*args, **kwargs)
                    done[0] += 1
                    if report is not None:
                        report(done[0], total)
                    return out
                return wrapper

            self.computeIoU = counted(COCOeval.computeIoU.__get__(self))
            self.evaluateImg = counted(COCOeval.evaluateImg.__get__(self))
            try:
                super().evaluate()
            finally:
                del self.computeIoU, self.evaluateImg

    return CocoBackend('pycocotools', COCO, ProgressCOCOeval)


def _faster_backend():
    from faster_coco_eval import COCO, COCOeval_faster
    return CocoBackend('faster_coco_eval', COCO, COCOeval_faster)


def faster_coco_eval_available():
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return False
    return True


def coco_backend(name='auto'):
    """The COCO api and evaluator to use: ``auto`` prefers faster-coco-eval."""
    if name not in BACKENDS:
        raise ValueError(f'backend={name!r} is not supported; allowed: {", ".join(BACKENDS)}')
    if name == 'faster_coco_eval' or (name == 'auto' and faster_coco_eval_available()):
        try:
            return _faster_backend()
        except ImportError as e:
            if name == 'auto':
                return _pycocotools_backend()
            raise ImportError(f"backend='faster_coco_eval' needs the faster-coco-eval package "
                              f"(pip install faster-coco-eval), which does not import: {e}. "
                              "Use backend='auto' to fall back to pycocotools.") from None
    try:
        return _pycocotools_backend()
    except ImportError as e:
        raise ImportError(f'COCO evaluation needs pycocotools (pip install pycocotools): {e}') \
            from None


def load_coco(backend, annotation):
    """A COCO api object from a json path or a dataset dict, without the chatter."""
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(annotation, dict):
            coco = backend.COCO()
            coco.dataset = annotation
            coco.createIndex()
            return coco
        return backend.COCO(annotation)


class ProgressLog:
    """Callable ``(done, total)`` that logs every ``step`` fraction of the work."""

    def __init__(self, log, label, step=0.25):
        self.log, self.label, self.step = log, label, step
        self.next = step
        self.start = time.time()

    def __call__(self, done, total):
        if total and done / total >= self.next - 1e-9:
            self.log(f'{self.label}: {100 * done / total:3.0f}% ({done}/{total} image-class '
                     f'pairs, {time.time() - self.start:.1f} s)')
            while self.next <= done / total + 1e-9:
                self.next += self.step


@dataclass
class CocoResult:
    iou_type: str
    stats: np.ndarray
    aps: dict = field(default_factory=dict)         # 'mAP', 'mAP_50', ... -> float
    per_class: list = field(default_factory=list)   # (name, {'mAP': ..}) per class
    summary: str = ''
    seconds: float = 0.0


def _mean_precision(precision):
    valid = precision[precision > -1]
    return float(np.mean(valid)) if valid.size else float('nan')


def per_class_ap(coco_eval, cat_names):
    """AP, AP50, AP75, APs/m/l of each class from an accumulated evaluator."""
    precision = coco_eval.eval['precision']  # (iou, recall, class, area, max dets)
    iou_thrs = np.asarray(coco_eval.params.iouThrs)
    i50 = int(np.argmin(np.abs(iou_thrs - 0.5)))
    i75 = int(np.argmin(np.abs(iou_thrs - 0.75)))
    rows = []
    for k, name in enumerate(cat_names):
        p = precision[:, :, k, :, -1]
        rows.append((name, {'mAP': _mean_precision(p[:, :, 0]),
                            'mAP_50': _mean_precision(p[i50, :, 0]),
                            'mAP_75': _mean_precision(p[i75, :, 0]),
                            'mAP_s': _mean_precision(p[:, :, 1]),
                            'mAP_m': _mean_precision(p[:, :, 2]),
                            'mAP_l': _mean_precision(p[:, :, 3])}))
    return rows


def evaluate(coco_gt, detections, iou_type, backend, img_ids=None, cat_ids=None,
             classwise=False, log=print):
    """Evaluate COCO-format ``detections`` (a list of dicts) against ``coco_gt``.

    ``log`` receives progress lines and the summary. An empty ``detections``
    list scores 0 wherever the ground truth has objects.
    """
    if iou_type not in ('bbox', 'segm'):
        raise ValueError(f"iou_type={iou_type!r}: allowed 'bbox', 'segm'")
    start = time.time()
    cat_ids = list(cat_ids) if cat_ids is not None else sorted(coco_gt.getCatIds())
    img_ids = list(img_ids) if img_ids is not None else sorted(coco_gt.getImgIds())
    names = [c['name'] for c in coco_gt.loadCats(cat_ids)]
    if not detections:
        log(f'{iou_type}: there are no detections; every AP is 0')
        aps = {key: 0.0 for key, _, _ in AP_ITEMS}
        rows = [(n, dict(aps)) for n in names] if classwise else []
        return CocoResult(iou_type, np.zeros(12), aps, rows, '', time.time() - start)
    if iou_type == 'segm':
        # with a box present, pycocotools takes a prediction's area from the box;
        # the mask area is the one that puts it in the small/medium/large range
        detections = [{k: v for k, v in d.items() if k != 'bbox'} for d in detections]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(detections)
    coco_eval = backend.COCOeval(coco_gt, coco_dt, iou_type)
    coco_eval.params.imgIds = img_ids
    coco_eval.params.catIds = cat_ids
    if hasattr(coco_eval, 'progress'):
        coco_eval.progress = ProgressLog(log, f'{iou_type} matching')
    else:
        log(f'{iou_type}: matching {len(img_ids)} images x {len(cat_ids)} classes '
            f'({backend.name})')
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        coco_eval.evaluate()
    log(f'{iou_type}: accumulating')
    with contextlib.redirect_stdout(out):
        coco_eval.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        coco_eval.summarize()
    stats = np.asarray(coco_eval.stats, dtype=np.float64)
    aps = {key: float(stats[i]) for key, i, _ in AP_ITEMS}
    rows = per_class_ap(coco_eval, names) if classwise else []
    return CocoResult(iou_type, stats, aps, rows, summary.getvalue().rstrip(),
                      time.time() - start)


# ----------------------------------------------------------------- tables
def _fmt(v):
    """3 decimals; 'n/a' where no ground truth falls in the range (pycocotools: -1)."""
    return 'n/a' if v != v or v < 0 else f'{v:.3f}'


def markdown_table(headers, rows):
    lines = ['| ' + ' | '.join(headers) + ' |', '|' + '|'.join('---' for _ in headers) + '|']
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def metric_table(results):
    """Markdown table, one row per IoU type: AP, AP50, AP75, APs, APm, APl."""
    return markdown_table(['', *(t for _, _, t in AP_ITEMS)],
                          [[r.iou_type, *(_fmt(r.aps[k]) for k, _, _ in AP_ITEMS)]
                           for r in results])


def class_table(result):
    """Markdown table of one IoU type's per-class APs."""
    return markdown_table([f'{result.iou_type} class', *(t for _, _, t in AP_ITEMS)],
                          [[name, *(_fmt(v[k]) for k, _, _ in AP_ITEMS)]
                           for name, v in result.per_class])
