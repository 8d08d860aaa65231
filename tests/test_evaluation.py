"""COCO evaluation (CocoAPMetric): exact scores, agreement with pycocotools, outputs."""
import copy
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch
from helpers import load_json

CLASSES = ('circle', 'triangle', 'square')


@pytest.fixture(scope='module')
def gt(tmp_path_factory):
    """A COCO ground truth from the shapes generator: (json path, dict, COCO api)."""
    from pycocotools.coco import COCO

    from resnet_backbone.demo.shapes import generate_split
    root = str(tmp_path_factory.mktemp('gt'))
    path = generate_split(root, 'val', 12, seed=5, size=128)
    data = load_json(path)
    assert len(data['annotations']) >= 30
    api = COCO(path)
    return path, data, api


def ann_mask(api, ann):
    return api.annToMask(ann).astype(bool)


def gt_predictions(api, data):
    """{image_id: list of (label, xyxy box, mask, score)} reproducing the ground truth."""
    out = {im['id']: [] for im in data['images']}
    for ann in data['annotations']:
        x, y, w, h = ann['bbox']
        out[ann['image_id']].append((ann['category_id'] - 1, [x, y, x + w, y + h],
                                     ann_mask(api, ann), 1.0))
    return out


def samples_from(preds, size=128):
    samples = []
    for img_id, dets in sorted(preds.items()):
        n = len(dets)
        pred = dict(
            labels=torch.tensor([d[0] for d in dets], dtype=torch.long),
            bboxes=torch.tensor([d[1] for d in dets], dtype=torch.float32).reshape(n, 4),
            masks=torch.from_numpy(np.stack([d[2] for d in dets])) if n else
            torch.zeros((0, size, size), dtype=torch.bool),
            scores=torch.tensor([d[3] for d in dets], dtype=torch.float32))
        samples.append(dict(img_id=img_id, ori_shape=(size, size), pred_instances=pred))
    return samples


def run_metric(ann_file, preds, **kwargs):
    from resnet_backbone.evaluation import CocoAPMetric
    metric = CocoAPMetric(ann_file=ann_file, metric=['bbox', 'segm'], **kwargs)
    metric.dataset_meta = dict(classes=CLASSES)
    samples = samples_from(preds)
    metric.process({}, samples)
    return metric, metric.evaluate(size=len(samples))


def pycocotools_stats(api, dets, iou_type, cat_ids=None):
    """pycocotools on its own: COCO results format, default parameters."""
    from pycocotools.cocoeval import COCOeval
    coco_dt = api.loadRes(copy.deepcopy(dets))
    ev = COCOeval(api, coco_dt, iou_type)
    if cat_ids is not None:
        ev.params.catIds = cat_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats


def to_coco_results(preds, iou_type):
    from pycocotools import mask as mask_utils
    out = []
    for img_id, dets in preds.items():
        for label, (x1, y1, x2, y2), mask, score in dets:
            d = dict(image_id=img_id, category_id=label + 1, score=float(score))
            if iou_type == 'bbox':
                d['bbox'] = [x1, y1, x2 - x1, y2 - y1]
            else:
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                rle['counts'] = rle['counts'].decode()
                d['segmentation'] = rle
            out.append(d)
    return out


def perturbed(api, data, seed=0):
    """A fixed, imperfect prediction set: misses, shifted boxes/masks, wrong classes,
    false positives, and scores that do not rank them perfectly."""
    rng = np.random.default_rng(seed)
    preds = {im['id']: [] for im in data['images']}
    for ann in data['annotations']:
        x, y, w, h = ann['bbox']
        label = ann['category_id'] - 1
        r = rng.random()
        if r < 0.15:
            continue  # missed
        if r < 0.25:
            label = (label + 1) % len(CLASSES)  # wrong class
        dx, dy = rng.integers(-3, 4, size=2)
        mask = np.roll(ann_mask(api, ann), (int(dy), int(dx)), axis=(0, 1))
        box = [x + dx, y + dy, x + w + dx + rng.uniform(-2, 2), y + h + dy + rng.uniform(-2, 2)]
        preds[ann['image_id']].append((label, box, mask, float(rng.uniform(0.3, 1.0))))
    for img_id in preds:
        for _ in range(2):  # false positives
            x, y = rng.uniform(0, 90, size=2)
            w, h = rng.uniform(10, 35, size=2)
            mask = np.zeros((128, 128), bool)
            mask[int(y):int(y + h), int(x):int(x + w)] = True
            preds[img_id].append((int(rng.integers(3)), [x, y, x + w, y + h], mask,
                                  float(rng.uniform(0.0, 0.8))))
    return preds


def present_areas(data):
    """Which of small / medium / large have ground truth (COCO area ranges)."""
    areas = np.array([a['area'] for a in data['annotations']])
    return {'mAP_s': (areas < 32**2).any(), 'mAP_m': ((areas >= 32**2) & (areas < 96**2)).any(),
            'mAP_l': (areas >= 96**2).any()}


def test_ground_truth_as_predictions_scores_one(gt):
    path, data, api = gt
    _, res = run_metric(path, gt_predictions(api, data))
    present = present_areas(data)
    assert present['mAP_s'] and present['mAP_m']
    for iou_type in ('bbox', 'segm'):
        for key in ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l'):
            value = res[f'coco/{iou_type}_{key}']
            if present.get(key, True):
                assert value == pytest.approx(1.0, abs=1e-12), (iou_type, key, value)
            else:
                assert value == -1.0  # pycocotools: no ground truth in that range


def test_perturbed_predictions_match_pycocotools(gt):
    path, data, api = gt
    preds = perturbed(api, data)
    _, res = run_metric(path, preds)
    for iou_type in ('bbox', 'segm'):
        stats = pycocotools_stats(api, to_coco_results(preds, iou_type), iou_type)
        ours = [res[f'coco/{iou_type}_{k}'] for k in
                ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')]
        assert ours == pytest.approx(list(stats[:6]), abs=1e-12), iou_type
        assert 0.2 < ours[0] < 0.9, f'{iou_type} AP {ours[0]} is not a useful test value'
        assert ours[1] > ours[2] > ours[0] * 0.5


def test_hand_computed_ap(tmp_path):
    """One image, two boxes: TP (0.9), FP (0.8), then the second box found with IoU 0.72
    (0.7). 101-point AP: for IoU thresholds 0.50-0.70 the second hit is a TP, so AP =
    (51 + 50 * 2/3) / 101; for 0.75-0.95 it is not, so AP = 51 / 101."""
    gt_json = dict(images=[dict(id=1, width=100, height=100, file_name='a.png')],
                   categories=[dict(id=1, name='circle'), dict(id=2, name='triangle'),
                               dict(id=3, name='square')],
                   annotations=[dict(id=1, image_id=1, category_id=1, bbox=[10, 10, 20, 20],
                                     area=400, iscrowd=0,
                                     segmentation=[[10, 10, 30, 10, 30, 30, 10, 30]]),
                                dict(id=2, image_id=1, category_id=1, bbox=[50, 50, 20, 20],
                                     area=400, iscrowd=0,
                                     segmentation=[[50, 50, 70, 50, 70, 70, 50, 70]])])
    path = str(tmp_path / 'gt.json')
    with open(path, 'w') as f:
        json.dump(gt_json, f)
    # box [50, 50, 70, 70] vs [50, 50, 70 + d, 70]: IoU = 400 / (400 + 20 d) = 0.72 -> d = 7.78
    d = 400 / 0.72 / 20 - 20
    from resnet_backbone.evaluation import CocoAPMetric
    metric = CocoAPMetric(ann_file=path, metric='bbox')
    metric.dataset_meta = dict(classes=CLASSES)
    pred = dict(labels=torch.tensor([0, 0, 0]),
                bboxes=torch.tensor([[10., 10., 30., 30.], [80., 5., 95., 20.],
                                     [50., 50., 70. + d, 70.]]),
                scores=torch.tensor([0.9, 0.8, 0.7]))
    metric.process({}, [dict(img_id=1, ori_shape=(100, 100), pred_instances=pred)])
    res = metric.evaluate(size=1)
    high = (51 + 50 * 2 / 3) / 101
    low = 51 / 101
    assert res['coco/bbox_mAP'] == pytest.approx((5 * high + 5 * low) / 10, abs=1e-9)
    assert res['coco/bbox_mAP_50'] == pytest.approx(high, abs=1e-9)
    assert res['coco/bbox_mAP_75'] == pytest.approx(low, abs=1e-9)


def test_classwise_table_matches_per_class_pycocotools(gt):
    path, data, api = gt
    preds = perturbed(api, data, seed=1)
    metric, res = run_metric(path, preds, classwise=True)
    for iou_type in ('bbox', 'segm'):
        dets = to_coco_results(preds, iou_type)
        for k, name in enumerate(CLASSES):
            stats = pycocotools_stats(api, dets, iou_type, cat_ids=[k + 1])
            assert res[f'coco/{iou_type}_{name}_mAP'] == pytest.approx(stats[0], abs=1e-12)
        table = metric.last_tables[f'{iou_type}_classwise']
        assert all(f'| {name} |' in table for name in CLASSES)
        assert table.splitlines()[0].split('|')[2].strip() == 'AP'
    assert '| bbox |' in metric.last_tables['overall']
    assert '| segm |' in metric.last_tables['overall']


def test_format_only_writes_submission_files(gt, tmp_path):
    path, data, api = gt
    prefix = str(tmp_path / 'sub' / 'results')
    preds = perturbed(api, data, seed=2)
    os.makedirs(osp.dirname(prefix))
    _, res = run_metric(path, preds, format_only=True, outfile_prefix=prefix)
    assert res == {}
    n = sum(len(v) for v in preds.values())
    for iou_type in ('bbox', 'segm'):
        dets = load_json(f'{prefix}.{iou_type}.json')
        assert len(dets) == n
        assert {d['category_id'] for d in dets} <= {1, 2, 3}
        assert {d['image_id'] for d in dets} == set(preds)
        key = 'bbox' if iou_type == 'bbox' else 'segmentation'
        assert all(key in d and 0 <= d['score'] <= 1 for d in dets)
    # the written files score like the predictions: they are valid COCO results
    stats = pycocotools_stats(api, load_json(f'{prefix}.bbox.json'), 'bbox')
    assert stats[0] == pytest.approx(
        pycocotools_stats(api, to_coco_results(preds, 'bbox'), 'bbox')[0], abs=1e-9)


def test_format_only_needs_a_prefix():
    from resnet_backbone.evaluation import CocoAPMetric
    with pytest.raises(ValueError, match='outfile_prefix'):
        CocoAPMetric(metric='bbox', format_only=True)
    with pytest.raises(KeyError, match='proposal'):
        CocoAPMetric(metric='proposal')


def test_progress_is_reported(gt):
    from pycocotools.coco import COCO

    from resnet_backbone.evaluation import coco_backend, evaluate
    path, data, api = gt
    backend = coco_backend('pycocotools')
    lines = []
    res = evaluate(COCO(path), to_coco_results(gt_predictions(api, data), 'bbox'), 'bbox',
                   backend, log=lines.append)
    progress = [ln for ln in lines if 'matching' in ln and '%' in ln]
    assert len(progress) >= 3 and '100%' in progress[-1], lines
    pairs = len(data['images']) * len(CLASSES) * 5  # IoU + 4 area ranges per image-class
    assert f'({pairs}/{pairs} image-class pairs' in progress[-1]
    assert res.aps['mAP'] == pytest.approx(1.0)
    assert 'Average Precision' in res.summary


def test_empty_predictions_score_zero(gt):
    path, data, api = gt
    _, res = run_metric(path, {im['id']: [] for im in data['images']})
    assert res['coco/bbox_mAP'] == 0.0 and res['coco/segm_mAP'] == 0.0


def test_backend_choice():
    from resnet_backbone.evaluation import coco_backend, faster_coco_eval_available
    assert coco_backend('pycocotools').name == 'pycocotools'
    auto = coco_backend('auto').name
    assert auto == ('faster_coco_eval' if faster_coco_eval_available() else 'pycocotools')
    with pytest.raises(ValueError, match='allowed'):
        coco_backend('nope')
    if not faster_coco_eval_available():
        with pytest.raises(ImportError, match='faster-coco-eval'):
            coco_backend('faster_coco_eval')


@pytest.mark.skipif(not __import__('importlib').util.find_spec('faster_coco_eval'),
                    reason='faster-coco-eval is not installed')
def test_faster_coco_eval_agrees_with_pycocotools(gt):
    path, data, api = gt
    preds = perturbed(api, data)
    _, slow = run_metric(path, preds, backend='pycocotools')
    _, fast = run_metric(path, preds, backend='faster_coco_eval')
    for key, value in slow.items():
        assert fast[key] == pytest.approx(value, abs=1e-6), key


def test_registered_and_ground_truth_from_samples(gt):
    """Built from the registry; without ann_file the ground truth comes from the samples."""
    from mmdet.registry import METRICS

    import resnet_backbone.evaluation  # noqa: F401
    path, data, api = gt
    metric = METRICS.build(dict(type='CocoAPMetric', metric='bbox'))
    metric.dataset_meta = dict(classes=CLASSES)
    preds = gt_predictions(api, data)
    samples = samples_from(preds)
    for s in samples:
        s['instances'] = [dict(bbox=box, bbox_label=label, ignore_flag=0)
                          for label, box, _, _ in preds[s['img_id']]]
    metric.process({}, samples)
    res = metric.evaluate(size=len(samples))
    assert res['coco/bbox_mAP'] == pytest.approx(1.0)
