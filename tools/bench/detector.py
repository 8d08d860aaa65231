"""Mask R-CNN R-50-FPN training iterations with our backbone and with MMDetection's."""
import contextlib
import copy
import gc
import logging
import os

import torch

from .common import DTYPES, MASK_RCNN_CONFIG, REFERENCE, SEED, mmcv_ops_status, synchronize
from .groups import row_id, selected
from .measure import _guard, add_ratios, add_stats, time_and_measure
from .models import group_impls
from .report import format_row

def _mask_rcnn_config():
    import mmdet
    from mmengine.config import Config
    path = os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'configs', *MASK_RCNN_CONFIG)
    if not os.path.exists(path):
        path = os.path.join(os.path.dirname(os.path.dirname(mmdet.__file__)), 'configs',
                            *MASK_RCNN_CONFIG)
    return Config.fromfile(path), path


def synthetic_detection_batch(batch, h, w, seed=SEED, num_boxes=4):
    """Random uint8 images with random boxes, labels and box-shaped masks."""
    import numpy as np
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for i in range(batch):
        inputs.append(torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8))
        wh = torch.rand(num_boxes, 2, generator=g) * 0.3 + 0.15
        xy = torch.rand(num_boxes, 2, generator=g) * (1 - wh)
        boxes = torch.cat([xy, xy + wh], 1) * torch.tensor([w, h, w, h], dtype=torch.float32)
        masks = np.zeros((num_boxes, h, w), dtype=np.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.round().int().tolist()):
            masks[k, y1:y2, x1:x2] = 1
        sample = DetDataSample(metainfo=dict(
            img_id=i, img_path=f'synthetic_{i}.jpg', ori_shape=(h, w), img_shape=(h, w),
            scale_factor=(1.0, 1.0), flip=False, flip_direction=None))
        sample.gt_instances = InstanceData(
            bboxes=boxes, labels=torch.randint(0, 80, (num_boxes,), generator=g),
            masks=BitmapMasks(masks, h, w))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


@contextlib.contextmanager
def quiet_mmengine_logger():
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


class DetectorRunner:
    """One training iteration of a detector: ``model.train_step`` (data preprocessor,
    losses, backward, optimizer step), as mmengine's train loop runs it.

    The k-th iteration of every runner starts from the same seed, so the random
    proposal and RoI sampling (and with it the heads' work) is the same for each
    implementation in a round: the rounds differ, the implementations do not.
    """

    def __init__(self, impl, model, optim, data, device):
        self.impl, self.model, self.optim, self.data, self.device = (impl, model, optim, data,
                                                                     device)
        self.iterations = 0

    def step(self):
        torch.manual_seed(SEED + self.iterations)
        self.iterations += 1
        log_vars = self.model.train_step(copy.copy(self.data), self.optim)
        synchronize(self.device)
        return log_vars

    def zero_grad(self):
        self.optim.zero_grad()


def run_detector(args, device, patterns, meter, log):
    """Mask R-CNN R-50-FPN train iterations: our backbone vs MMDetection's ResNet.

    fp32 everywhere; on CUDA also bf16 autocast (mmengine's AmpOptimWrapper), when
    ``--dtypes`` has bf16.
    """
    batch, (h, w) = args.detector_batch, args.detector_size
    impls = group_impls('detector')
    dtypes = ['fp32'] + (['bf16'] if device.type == 'cuda' and 'bf16' in args.dtypes else [])
    rids = {(d, i): row_id('detector', d, 'nchw', 'eager', i) for d in dtypes for i in impls}
    if not any(selected(r, patterns) for r in rids.values()):
        return []
    rows = {key: dict(id=rid, mode='detector', dtype=key[0], layout='nchw', compile='eager',
                      impl=key[1], batch=batch, size=[h, w], depth=50)
            for key, rid in rids.items()}

    def fail(msg):
        for row in rows.values():
            row['error'] = msg
            row['ratio_ref'], row['ratio_vs_ref'] = REFERENCE, None
            log(format_row(row))
        return list(rows.values())

    ok, why = mmcv_ops_status()
    if not ok:
        return fail(f'unavailable: Mask R-CNN needs RoIAlign/nms: {why}')
    try:
        from mmengine.utils import import_modules_from_strings
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        register_all_modules()
        cfg, path = _mask_rcnn_config()
        cfg.model.backbone.init_cfg = None
        overrides = {}
        if args.tiny:  # tests: fewer RoIs, so the heads take less time
            overrides = {'train_cfg.rpn_proposal.max_per_img': 64,
                         'train_cfg.rcnn.sampler.num': 16}
            cfg.merge_from_dict({'model.' + k: v for k, v in overrides.items()})
        ours_cfg = copy.deepcopy(cfg)
        ours_cfg.custom_imports = dict(imports=['resnet_backbone'], allow_failed_imports=False)
        import_modules_from_strings(**ours_cfg.custom_imports)
        ours_cfg.model.backbone.type = 'ResNetBackbone'
        torch.manual_seed(SEED)
        models = {'mmdet': MODELS.build(cfg.model)}
        with quiet_mmengine_logger():  # init_weights logs every parameter
            models['mmdet'].init_weights()
        models['ours'] = MODELS.build(ours_cfg.model)
        if device.type == 'cuda':  # mmcv must have CUDA kernels for RoIAlign
            from mmcv.ops import roi_align
            roi_align(torch.zeros(1, 1, 4, 4, device=device),
                      torch.tensor([[0, 0, 0, 2, 2.]], device=device), (1, 1))
    except Exception as e:
        return fail(f'unavailable: {type(e).__name__}: {str(e)[:300]}')
    data = synthetic_detection_batch(batch, h, w)
    initial = copy.deepcopy(models['mmdet'].state_dict())
    out = []
    for dtype in dtypes:
        chosen = [i for i in impls if selected(rids[(dtype, i)], patterns)]
        if chosen:
            out += _detector_rows(args, device, meter, log, dtype, models, initial, data,
                                  {i: rows[(dtype, i)] for i in chosen}, path, overrides)
    del models
    gc.collect()
    return out


def _detector_rows(args, device, meter, log, dtype, models, initial, data, rows, path,
                   overrides):
    """The rows of one dtype: each model from the same weights, timed in alternation."""
    from mmengine.optim import AmpOptimWrapper, OptimWrapper
    batch = args.detector_batch
    runners = []
    for impl in rows:
        model = models[impl]
        model.load_state_dict(initial, strict=True)
        model.to(device)
        model.train()
        sgd = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9,
                              weight_decay=1e-4)  # the config's optimizer
        optim = (OptimWrapper(sgd) if dtype == 'fp32'
                 else AmpOptimWrapper(dtype=DTYPES[dtype], optimizer=sgd))
        runners.append(DetectorRunner(impl, model, optim, data, device))
    times = {r.impl: [] for r in runners}
    alive = list(runners)
    losses = {}
    for r in list(alive):  # first iteration, same seed: the losses must agree
        if _guard(r, lambda r=r: losses.__setitem__(r.impl, r.step()), times, alive):
            rows[r.impl]['losses_first_iter'] = {k: float(torch.as_tensor(v).detach())
                                                  for k, v in losses[r.impl].items()}
    time_and_measure(alive, args.warmup, args.detector_repeats, device, times, meter, rows)
    out = []
    for impl, row in rows.items():
        row['config'] = os.path.relpath(path, os.path.dirname(os.path.dirname(path)))
        row['config_overrides'] = overrides
        if 'error' not in row:
            add_stats(row, times[impl], batch)
            row['gflop'] = row['gflops_per_s'] = None
            if 'mmdet' in losses and impl in losses:
                ref = losses['mmdet']
                diff = max(abs(float(torch.as_tensor(losses[impl][k]).detach())
                               - float(torch.as_tensor(ref[k]).detach())) for k in ref)
                row['loss_max_abs_diff'] = diff
                row['check'] = dict(kind='loss_max_abs_diff', value=diff,
                                    against='mmdet, first iteration, same seed')
        out.append(row)
    add_ratios(out, REFERENCE)
    for row in out:
        log(format_row(row))
    return out
