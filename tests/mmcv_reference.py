"""mmcv op results, recorded with mmcv's compiled kernels and replayed with the stand-in.

``tools/make_mmcv_reference.py`` runs :func:`compute` with a compiled mmcv and
saves each part (inputs and outputs) under ``tests/data/mmcv_reference/``;
``tests/test_mmcv_ext.py`` runs the same cases through mmcv's Python wrappers
on the stand-in kernels (:func:`standin_kernels`) and compares.

Both run as ``python tests/mmcv_reference.py ...`` in a process with one thread
and oneDNN held to AVX2 (:data:`PINNED_ENV`), so that the convolutions and GEMMs
of the DCN and Mask R-CNN parts round the same way on any x86-64 machine.
"""
import contextlib
import hashlib
import importlib
import logging
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_DIR = os.path.join(ROOT, 'tests', 'data', 'mmcv_reference')
PARTS = ('roi_align', 'nms', 'dcn', 'mask_rcnn')  # recorded with mmcv's compiled kernels
PINNED_ENV = {'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'ONEDNN_MAX_CPU_ISA': 'AVX2',
              'DNNL_MAX_CPU_ISA': 'AVX2', 'MKL_CBWR': 'AVX2'}
# the mmcv.ops modules whose wrappers call the kernels of this comparison
WRAPPER_MODULES = ('roi_align', 'nms', 'deform_conv', 'modulated_deform_conv', 'focal_loss')


@contextlib.contextmanager
def standin_kernels():
    """mmcv's op wrappers call resnet_backbone.mmcv_ext, even where a compiled _ext is installed."""
    from resnet_backbone import mmcv_ext
    modules = [importlib.import_module(f'mmcv.ops.{name}') for name in WRAPPER_MODULES]
    saved = [m.ext_module for m in modules]
    try:
        for m in modules:
            m.ext_module = mmcv_ext
        yield
    finally:
        for m, ext in zip(modules, saved):
            m.ext_module = ext


def pattern(shape, dtype=torch.float32):
    """A fixed tensor of small exact values (the same bits on every machine)."""
    n = 1
    for s in shape:
        n *= s
    return (((torch.arange(n) * 7) % 23 - 11).to(dtype) / 8).reshape(shape)


# ----------------------------------------------------------------- RoIAlign
IMAGE_HW = (128, 160)
ROI_STRIDES = (4, 8, 16, 32)


def roi_boxes(g, num_random=6):
    """Boxes in image pixels: random ones and the edge cases, on two images."""
    h, w = IMAGE_HW
    xy = torch.rand(num_random, 2, generator=g) * torch.tensor([w, h]) * 0.8
    wh = torch.rand(num_random, 2, generator=g) * torch.tensor([w, h]) * 0.5 + 1
    boxes = torch.cat([xy, xy + wh], 1)
    special = torch.tensor([
        [30.0, 40.0, 30.0, 70.0],  # zero width
        [10.0, 20.0, 50.0, 20.0],  # zero height
        [64.0, 64.0, 64.0, 64.0],  # a point
        [-40.0, -30.0, -5.0, -2.0],  # wholly outside, above left
        [w - 20.0, h - 10.0, w + 60.0, h + 50.0],  # partly outside
        [w + 10.0, 5.0, w + 50.0, 30.0],  # wholly outside, right
        [-20.0, -20.0, w + 20.0, h + 20.0],  # larger than the image
        [3.3, 7.7, 5.1, 8.2],  # smaller than one stride-32 cell
    ])
    boxes = torch.cat([boxes, special])
    batch = (torch.arange(len(boxes)) % 2).float().unsqueeze(1)
    return torch.cat([batch, boxes], 1)


def roi_align_cases():
    """(name, inputs) with inputs: feature map, rois, output size, scale, sampling, aligned."""
    g = torch.Generator().manual_seed(0)
    cases = []
    rois = roi_boxes(g)
    for stride in ROI_STRIDES:
        h, w = IMAGE_HW[0] // stride, IMAGE_HW[1] // stride
        feats = torch.randn(2, 2, h, w, generator=g)
        for size in (7, 14):
            for sampling in (0, 2):
                for aligned in (True, False):
                    name = f's{stride}-out{size}-sr{sampling}-{"aligned" if aligned else "legacy"}'
                    cases.append((name, dict(input=feats, rois=rois, output_size=size,
                                             spatial_scale=1.0 / stride,
                                             sampling_ratio=sampling, aligned=aligned)))
    cases.append(('no-rois', dict(input=cases[0][1]['input'], rois=rois[:0], output_size=7,
                                  spatial_scale=0.25, sampling_ratio=0, aligned=True)))
    # a scale that is not a power of two: the kernel rounds it to float32
    cases.append(('scale-1/7', dict(cases[10][1], spatial_scale=1.0 / 7)))
    return cases


def in_layout(feats, layout):
    """The same values in a layout mmcv's CPU kernel misreads (gradients flow back)."""
    if layout == 'channels_last':
        return feats.contiguous(memory_format=torch.channels_last)
    if layout == 'strided-view':  # every other channel of a wider map
        return torch.stack([feats, torch.zeros_like(feats)], 2).flatten(1, 2)[:, ::2]
    return feats


LAYOUTS = ('channels_last', 'strided-view')


def run_roi_align(case, layout=None, grad=None):
    from mmcv.ops import roi_align
    leaf = case['input'].clone().requires_grad_(True)
    out = roi_align(in_layout(leaf, layout), case['rois'], case['output_size'],
                    case['spatial_scale'], case['sampling_ratio'], 'avg', case['aligned'])
    out.backward(pattern(out.shape) if grad is None else grad)
    return out.detach(), leaf.grad


def compute_roi_align():
    result = {}
    cases = roi_align_cases()
    for name, case in cases:
        out, grad = run_roi_align(case)
        result[name] = dict(case, output=out, grad_input=grad)
    base_name, base = cases[8]  # stride 8, out 7, sampling 0, aligned
    for layout in LAYOUTS:
        out, grad = run_roi_align(base, layout)
        # the correct answer is base's; this records what the kernel made of the layout
        result[f'{base_name}-{layout}'] = dict(base, layout=layout, output_as_read=out,
                                               grad_input_as_read=grad)
    return result


# ---------------------------------------------------------------------- NMS
def nms_boxes(g, n=300, clusters=12):
    centres = torch.rand(clusters, 2, generator=g) * 200
    which = torch.randint(0, clusters, (n,), generator=g)
    xy = centres[which] + torch.randn(n, 2, generator=g) * 6
    wh = 20 + torch.rand(n, 2, generator=g) * 30
    return torch.cat([xy - wh / 2, xy + wh / 2], 1)


def nms_cases():
    g = torch.Generator().manual_seed(1)
    boxes = nms_boxes(g)
    tied = torch.randint(0, 6, (len(boxes),), generator=g).float() / 8  # many equal scores
    distinct = torch.rand(len(boxes), generator=g)
    idxs = torch.randint(0, 5, (len(boxes),), generator=g)
    cases = []
    for scores_name, scores in (('tied', tied), ('distinct', distinct)):
        for thr in (0.3, 0.5, 0.7):
            for offset in (0, 1):
                cases.append((f'nms-{scores_name}-iou{thr}-offset{offset}',
                              dict(op='nms', boxes=boxes, scores=scores, iou_threshold=thr,
                                   offset=offset)))
    cases.append(('nms-filtered', dict(op='nms', boxes=boxes, scores=distinct,
                                       iou_threshold=0.5, offset=0, score_threshold=0.3,
                                       max_num=40)))
    cases.append(('nms-empty', dict(op='nms', boxes=boxes[:0], scores=distinct[:0],
                                    iou_threshold=0.5, offset=0)))
    for agnostic in (False, True):
        for split_thr in (10000, 50):  # 50 < 300 boxes: one nms per class
            cases.append((f'batched-tied-agnostic{agnostic}-split{split_thr}',
                          dict(op='batched_nms', boxes=boxes, scores=tied, idxs=idxs,
                               nms_cfg=dict(iou_threshold=0.5, split_thr=split_thr),
                               class_agnostic=agnostic)))
    cases.append(('batched-offset1', dict(op='batched_nms', boxes=boxes, scores=tied, idxs=idxs,
                                          nms_cfg=dict(iou_threshold=0.6, offset=1))))
    # class-aware batched_nms fails on no boxes in mmcv's own wrapper (boxes.max())
    cases.append(('batched-empty', dict(op='batched_nms', boxes=boxes[:0], scores=tied[:0],
                                        idxs=idxs[:0], nms_cfg=dict(iou_threshold=0.5),
                                        class_agnostic=True)))
    return cases


def run_nms(case):
    from mmcv.ops import batched_nms, nms
    if case['op'] == 'nms':
        dets, keep = nms(case['boxes'], case['scores'], case['iou_threshold'],
                         offset=case['offset'], score_threshold=case.get('score_threshold', 0),
                         max_num=case.get('max_num', -1))
    else:
        dets, keep = batched_nms(case['boxes'], case['scores'], case['idxs'],
                                 dict(case['nms_cfg']), case.get('class_agnostic', False))
    return dets, keep


def compute_nms():
    result = {}
    for name, case in nms_cases():
        dets, keep = run_nms(case)
        result[name] = dict(case, dets=dets, keep=keep)
    return result


# ---------------------------------------------------------------------- DCN
def dcn_cases():
    g = torch.Generator().manual_seed(2)
    cases = []
    grid = [(modulated, groups, deform_groups, stride, dilation)
            for modulated in (False, True) for groups, deform_groups in ((1, 1), (2, 2), (1, 2))
            for stride, dilation in ((1, 1), (2, 1), (1, 2))]
    for modulated, groups, deform_groups, stride, dilation in grid:
        c_in, c_out, k = 8, 6, 3
        x = torch.randn(2, c_in, 9, 7, generator=g)
        out_hw = [(s + 2 * dilation - dilation * (k - 1) - 1) // stride + 1 for s in (9, 7)]
        case = dict(modulated=modulated, input=x,
                    offset=torch.randn(2, deform_groups * 2 * k * k, *out_hw, generator=g) * 2,
                    weight=torch.randn(c_out, c_in // groups, k, k, generator=g) * 0.3,
                    stride=stride, padding=dilation, dilation=dilation, groups=groups,
                    deform_groups=deform_groups)
        if modulated:
            case['mask'] = torch.rand(2, deform_groups * k * k, *out_hw, generator=g)
            case['bias'] = torch.randn(c_out, generator=g)
        name = (f'{"v2" if modulated else "v1"}-g{groups}-dg{deform_groups}-s{stride}'
                f'-d{dilation}')
        cases.append((name, case))
    return cases


def run_dcn(case, ours=False):
    """Through mmcv's wrappers, or (``ours``) through this package's own DCN op."""
    from mmcv.ops import deform_conv2d, modulated_deform_conv2d

    from resnet_backbone.dcn import deform_conv
    names = ['input', 'offset', 'weight'] + (['mask', 'bias'] if case['modulated'] else [])
    leaves = {n: case[n].clone().requires_grad_(True) for n in names}
    geometry = (case['stride'], case['padding'], case['dilation'], case['groups'],
                case['deform_groups'])
    if ours:
        pair = torch.nn.modules.utils._pair
        out = deform_conv(leaves['input'], leaves['offset'], leaves.get('mask'),
                          leaves['weight'], leaves.get('bias'), *map(pair, geometry[:3]),
                          *geometry[3:], backend='torchvision')
    elif case['modulated']:
        out = modulated_deform_conv2d(leaves['input'], leaves['offset'], leaves['mask'],
                                      leaves['weight'], leaves['bias'], *geometry)
    else:
        out = deform_conv2d(leaves['input'], leaves['offset'], leaves['weight'], *geometry)
    out.backward(pattern(out.shape))
    return out.detach(), {f'grad_{n}': t.grad for n, t in leaves.items()}


def compute_dcn(ours=False):
    result = {}
    for name, case in dcn_cases():
        out, grads = run_dcn(case, ours)
        result[name] = dict(case, output=out, **grads)
    return result


# -------------------------------------------------- Mask R-CNN, one step
def mask_rcnn_inputs():
    """Two 96x128 images with three objects each (boxes, labels, masks), fixed."""
    g = torch.Generator().manual_seed(3)
    images = (torch.rand(2, 3, 96, 128, generator=g) * 255).to(torch.uint8)
    boxes, labels, masks = [], [], []
    for n in range(2):
        xy = torch.rand(3, 2, generator=g) * torch.tensor([80.0, 50.0])
        wh = 16 + torch.rand(3, 2, generator=g) * 30
        b = torch.cat([xy, xy + wh], 1).round()
        m = torch.zeros(3, 96, 128, dtype=torch.uint8)
        for i, (x1, y1, x2, y2) in enumerate(b.int().tolist()):
            m[i, y1:y2, x1:x2] = 1
            images[n, :, y1:y2, x1:x2] = 60 * (i + 1)
        boxes.append(b)
        labels.append(torch.randint(0, 3, (3,), generator=g))
        masks.append(m)
    return dict(images=images, boxes=boxes, labels=labels, masks=masks)


def mask_rcnn_model():
    """MMDetection's Mask R-CNN with its own ResNet-18 + FPN, 3 classes, seeded init."""
    import mmdet
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.logging import MMLogger
    register_all_modules()
    cfg = Config.fromfile(os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'configs',
                                       'mask_rcnn', 'mask-rcnn_r50_fpn_1x_coco.py'))
    model_cfg = cfg.model
    model_cfg.backbone.update(depth=18, init_cfg=None)
    model_cfg.neck.in_channels = [64, 128, 256, 512]
    model_cfg.roi_head.bbox_head.num_classes = 3
    model_cfg.roi_head.mask_head.num_classes = 3
    # keep every detection, so that the comparison sees scores, boxes and masks
    model_cfg.test_cfg.rcnn.update(score_thr=0.0, max_per_img=30)
    torch.manual_seed(0)
    model = MODELS.build(model_cfg)
    MMLogger.get_current_instance().setLevel(logging.WARNING)  # init_weights' table
    model.init_weights()
    return model


def packed(inputs, with_gt):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    batch = dict(inputs=[], data_samples=[])
    for i, image in enumerate(inputs['images']):
        sample = DetDataSample(metainfo=dict(img_shape=(96, 128), ori_shape=(96, 128),
                                             scale_factor=(1.0, 1.0), pad_shape=(96, 128),
                                             batch_input_shape=(96, 128), img_id=i))
        if with_gt:
            sample.gt_instances = InstanceData(
                bboxes=inputs['boxes'][i], labels=inputs['labels'][i],
                masks=BitmapMasks(inputs['masks'][i].numpy(), 96, 128))
        batch['inputs'].append(image)
        batch['data_samples'].append(sample)
    return batch


def digest(tensor):
    return hashlib.sha256(tensor.detach().contiguous().numpy().tobytes()).hexdigest()


def compute_mask_rcnn():
    inputs = mask_rcnn_inputs()
    model = mask_rcnn_model()
    model.train()
    data = model.data_preprocessor(packed(inputs, True), True)
    losses = model(**data, mode='loss')
    loss, log_vars = model.parse_losses(losses)
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(packed(inputs, False), False), mode='predict')
    detections = [dict(bboxes=r.pred_instances.bboxes, scores=r.pred_instances.scores,
                       labels=r.pred_instances.labels,
                       masks_digest=digest(r.pred_instances.masks),
                       mask_pixels=r.pred_instances.masks.sum((1, 2)))
                  for r in results]
    return dict(inputs=inputs, log_vars=dict(log_vars), loss=loss.detach(),
                grad_digests={n: digest(g) for n, g in grads.items()},
                grad_norms={n: g.double().norm() for n, g in grads.items()},
                detections=detections)


def compute(part):
    """One part's results; ``dcn_ours`` runs the DCN cases through resnet_backbone.dcn."""
    return {'roi_align': compute_roi_align, 'nms': compute_nms, 'dcn': compute_dcn,
            'dcn_ours': lambda: compute_dcn(ours=True), 'mask_rcnn': compute_mask_rcnn}[part]()


def reference_path(part):
    return os.path.join(REFERENCE_DIR, f'{part}.pt')


def pinned_command(*args):
    """(argv, env) that runs this file as a script in the pinned environment."""
    env = dict(os.environ, **PINNED_ENV)
    return [sys.executable, os.path.abspath(__file__), *args], env


def main(argv):
    """``mmcv_reference.py OUT_DIR [--standin] [PART ...]``: each part's results to OUT_DIR."""
    torch.set_num_threads(1)
    out_dir, args = argv[0], argv[1:]
    standin = '--standin' in args
    parts = [a for a in args if a != '--standin'] or list(PARTS)
    os.makedirs(out_dir, exist_ok=True)
    with standin_kernels() if standin else contextlib.nullcontext():
        for part in parts:
            torch.save(compute(part), os.path.join(out_dir, f'{part}.pt'))
            print(f'{part}: written to {out_dir}', flush=True)


if __name__ == '__main__':
    sys.path.insert(0, ROOT)
    main(sys.argv[1:])
