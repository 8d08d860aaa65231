"""A stand-in for mmcv's compiled ``mmcv._ext``: torchvision kernels behind mmcv's op wrappers.

mmcv 2.1.0 as ``make setup`` installs it (``mmcv 2.1.0+torchvision``, built
without compiled ops) has an ``mmcv/_ext.py`` that re-exports this module.
mmcv's Python wrappers (``RoIAlign``, ``roi_align``, ``nms``, ``batched_nms``,
``DeformConv2d``, ``ModulatedDeformConv2d``, ``sigmoid_focal_loss`` and their
autograd Functions) are untouched; they call the functions below with the
compiled extension's signatures, and these run torchvision's CPU and CUDA
kernels (plain torch for the focal loss). A compiled ``_ext`` always wins where
it is installed: Python imports the extension module before ``_ext.py``.

Every other name mmcv asks ``_ext`` for exists too, so ``import mmcv.ops``
works; calling one raises :class:`MissingKernelError`, which names the op,
what needs it and how to get mmcv's compiled ops.
"""
import importlib.machinery
import importlib.util
import math
import threading
import weakref

import torch
import torch.nn.functional as F
import torchvision  # noqa: F401  (registers torch.ops.torchvision)

_tv = torch.ops.torchvision

COMPILED_OPS_HINT = (
    "For mmcv's compiled ops, rebuild the environment with `make setup MMCV_OPS=compiled` "
    '(CPU kernels; CUDA kernels too where nvcc is found), see README.md, Set-up.')


class MissingKernelError(NotImplementedError):
    """An mmcv op whose kernel the torchvision stand-in does not provide."""


def _float32(value):
    """``value`` rounded to float32, as mmcv's kernels take it (``float`` arguments)."""
    return torch.tensor(value, dtype=torch.float32).item()


def _compute(t):
    """``t`` in the dtype the kernels run in: half and bfloat16 (AMP) in float32, since
    torchvision's backward kernels take neither bfloat16 nor, on CPU, half."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


# ------------------------------------------------------------------ RoIAlign
def roi_align_forward(input, rois, output, argmax_y, argmax_x, aligned_height, aligned_width,
                      spatial_scale, sampling_ratio, pool_mode, aligned):
    """RoIAlign into ``output``; average pooling only (``pool_mode=1``), as torchvision."""
    if pool_mode != 1:
        raise MissingKernelError(
            "roi_align with pool_mode='max' has no torchvision kernel; the stand-in for mmcv's "
            "compiled ops provides pool_mode='avg' (every MMDetection RoI extractor uses it). "
            + COMPILED_OPS_HINT)
    input = _compute(input)
    out = _tv.roi_align(input, rois.to(input.dtype), spatial_scale, aligned_height,
                        aligned_width, sampling_ratio, aligned)
    output.copy_(out)


def roi_align_backward(grad_output, rois, argmax_y, argmax_x, grad_input, aligned_height,
                       aligned_width, spatial_scale, sampling_ratio, pool_mode, aligned):
    """Adds the RoIAlign input gradient to ``grad_input`` (average pooling only)."""
    if pool_mode != 1:
        raise MissingKernelError("roi_align backward with pool_mode='max': see roi_align_forward")
    n, c, h, w = grad_input.shape
    grad_output = _compute(grad_output)
    grad = _tv._roi_align_backward(grad_output, rois.to(grad_output.dtype), spatial_scale,
                                   aligned_height, aligned_width,
                                   n, c, h, w, sampling_ratio, aligned)
    grad_input.add_(grad)


# ----------------------------------------------------------------------- NMS
def nms(boxes, scores, iou_threshold, offset):
    """Indices of the kept boxes, highest score first, exactly as mmcv's CPU kernel.

    mmcv sorts the scores with torch's default sort and keeps ties in that order;
    torchvision sorts stably. Sorting here the way mmcv does and handing
    torchvision the sorted boxes makes the kept indices identical. The
    threshold is compared in float32, as mmcv's kernel takes it.
    """
    if boxes.numel() == 0:
        return boxes.new_empty(0, dtype=torch.long)
    if offset not in (0, 1):
        raise ValueError(f'nms offset must be 0 or 1, got {offset!r}')
    order = scores.sort(0, descending=True)[1]
    boxes = _compute(boxes).index_select(0, order)
    threshold = _float32(iou_threshold)
    if offset == 0:
        keep = _tv.nms(boxes, _compute(scores).index_select(0, order), threshold)
    else:  # the greedy loop on the CPU: on a GPU each step would wait for the device
        keep = _nms_sorted(boxes.cpu(), threshold, offset).to(boxes.device)
    return order.index_select(0, keep)


def _nms_sorted(boxes, threshold, offset):
    """Greedy NMS over boxes sorted by score, with mmcv's ``offset`` (legacy +1 pixel)."""
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1 + offset) * (y2 - y1 + offset)
    n = boxes.size(0)
    suppressed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    later = torch.arange(n, device=boxes.device)
    for i in range(n):
        if suppressed[i]:
            continue
        w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1) + offset).clamp(min=0)
        h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1) + offset).clamp(min=0)
        inter = w * h
        overlap = inter / (areas[i] + areas - inter)
        suppressed |= (overlap > threshold) & (later > i)
    return torch.nonzero(~suppressed).squeeze(1)


# -------------------------------------------------------- deformable convs
def _mask_and_bias(input, weight, mask, bias):
    """torchvision's kernels take a mask and a bias always: placeholders where there are none."""
    if mask is None:
        mask = input.new_zeros(input.size(0), 1)  # what torchvision.ops.deform_conv2d passes
    if bias is None:
        bias = input.new_zeros(weight.size(0))
    return mask, bias


def _deform_forward(input, weight, offset, mask, bias, stride, padding, dilation, groups,
                    deform_groups):
    use_mask = mask is not None
    mask, bias = _mask_and_bias(input, weight, mask, bias)
    input, weight, offset, mask, bias = map(_compute, (input, weight, offset, mask, bias))
    return _tv.deform_conv2d(input, weight, offset, mask, bias, *stride, *padding, *dilation,
                             groups, deform_groups, use_mask)


def _deform_backward(grad_output, input, weight, offset, mask, bias, stride, padding,
                     dilation, groups, deform_groups):
    """(grad_input, grad_weight, grad_offset, grad_mask, grad_bias) from torchvision."""
    use_mask = mask is not None
    mask, bias = _mask_and_bias(input, weight, mask, bias)
    tensors = map(_compute, (grad_output, input, weight, offset, mask, bias))
    return _tv._deform_conv2d_backward(*tensors, *stride, *padding, *dilation, groups,
                                       deform_groups, use_mask)


# mmcv's DCNv1 backward asks for the input/offset gradients and the weight gradient
# in two calls; torchvision computes all of them in one. The first call keeps the
# weight gradient for the second (same tensors, same geometry, same thread) instead
# of running the backward twice.
_pending = threading.local()


def _dcn_geometry(kW, kH, dW, dH, padW, padH, dilationW, dilationH, group, deformable_group):
    return (dH, dW), (padH, padW), (dilationH, dilationW), group, deformable_group


def deform_conv_forward(input, weight, offset, output, columns, ones, kW, kH, dW, dH, padW,
                        padH, dilationW, dilationH, group, deformable_group, im2col_step):
    geometry = _dcn_geometry(kW, kH, dW, dH, padW, padH, dilationW, dilationH, group,
                             deformable_group)
    output.copy_(_deform_forward(input, weight, offset, None, None, *geometry))


def deform_conv_backward_input(input, offset, gradOutput, gradInput, gradOffset, weight,
                               columns, kW, kH, dW, dH, padW, padH, dilationW, dilationH,
                               group, deformable_group, im2col_step):
    geometry = _dcn_geometry(kW, kH, dW, dH, padW, padH, dilationW, dilationH, group,
                             deformable_group)
    grad_input, grad_weight, grad_offset, _, _ = _deform_backward(
        gradOutput, input, weight, offset, None, None, *geometry)
    gradInput.add_(grad_input)
    gradOffset.add_(grad_offset)
    _pending.weight_grad = (tuple(weakref.ref(t) for t in (input, offset, gradOutput)),
                            geometry, grad_weight)


def deform_conv_backward_parameters(input, offset, gradOutput, gradWeight, columns, ones, kW,
                                    kH, dW, dH, padW, padH, dilationW, dilationH, group,
                                    deformable_group, scale, im2col_step):
    geometry = _dcn_geometry(kW, kH, dW, dH, padW, padH, dilationW, dilationH, group,
                             deformable_group)
    refs, pending_geometry, grad_weight = getattr(_pending, 'weight_grad', ((), None, None))
    _pending.weight_grad = ((), None, None)
    same_call = pending_geometry == geometry and all(
        ref() is t for ref, t in zip(refs, (input, offset, gradOutput)))
    if not same_call:
        weight = gradWeight.new_zeros(gradWeight.shape)  # only its shape reaches the kernel
        grad_weight = _deform_backward(gradOutput, input, weight, offset, None, None,
                                       *geometry)[1]
    gradWeight.add_(grad_weight, alpha=scale)


def modulated_deform_conv_forward(input, weight, bias, ones, offset, mask, output, columns,
                                  kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                  dilation_h, dilation_w, group, deformable_group, with_bias):
    out = _deform_forward(input, weight, offset, mask, bias if with_bias else None,
                          (stride_h, stride_w), (pad_h, pad_w), (dilation_h, dilation_w), group,
                          deformable_group)
    output.copy_(out)


def modulated_deform_conv_backward(input, weight, bias, ones, offset, mask, columns, grad_input,
                                   grad_weight, grad_bias, grad_offset, grad_mask, grad_output,
                                   kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                   dilation_h, dilation_w, group, deformable_group, with_bias):
    grads = _deform_backward(grad_output, input, weight, offset, mask,
                             bias if with_bias else None, (stride_h, stride_w), (pad_h, pad_w),
                             (dilation_h, dilation_w), group, deformable_group)
    gi, gw, go, gm, gb = grads
    grad_input.add_(gi)
    grad_weight.add_(gw)
    grad_offset.add_(go)
    grad_mask.add_(gm)
    if with_bias:
        grad_bias.add_(gb)


# ------------------------------------------------------ sigmoid focal loss
def _focal_terms(input, target, weight):
    """p, 1 - p, their logs, class flags and row weights, as mmcv's CUDA kernel reads them.

    1 - p and the logs come from sigmoid(-x) and logsigmoid, which keep their
    precision where p saturates; the logs stop at log(FLT_MIN), as in mmcv.
    """
    num_classes = input.size(1)
    positive = (target.unsqueeze(1) == torch.arange(num_classes, device=input.device))
    positive = positive.to(input.dtype)
    log_tiny = math.log(torch.finfo(input.dtype).tiny)
    p, q = torch.sigmoid(input), torch.sigmoid(-input)
    log_p = F.logsigmoid(input).clamp(min=log_tiny)
    log_q = F.logsigmoid(-input).clamp(min=log_tiny)
    row_weight = None
    if weight.numel():
        # background rows (target == num_classes) have no class weight: 1
        index = target.clamp(0, num_classes - 1)
        row_weight = torch.where(target < num_classes, weight[index],
                                 weight.new_ones(())).unsqueeze(1)
    return p, q, log_p, log_q, positive, row_weight


def sigmoid_focal_loss_forward(input, target, weight, output, gamma, alpha):
    """Element-wise sigmoid focal loss into ``output`` (mmcv's CUDA kernel, in plain torch)."""
    p, q, log_p, log_q, pos, row_weight = _focal_terms(input, target, weight)
    loss = -pos * alpha * q.pow(gamma) * log_p - (1 - pos) * (1 - alpha) * p.pow(gamma) * log_q
    output.copy_(loss if row_weight is None else loss * row_weight)


def sigmoid_focal_loss_backward(input, target, weight, grad_input, gamma, alpha):
    """d(loss)/d(input) of :func:`sigmoid_focal_loss_forward` into ``grad_input``."""
    p, q, log_p, log_q, pos, row_weight = _focal_terms(input, target, weight)
    term_p = q.pow(gamma) * (q - gamma * p * log_p)
    term_n = p.pow(gamma) * (gamma * q * log_q - p)
    grad = -pos * alpha * term_p - (1 - pos) * (1 - alpha) * term_n
    grad_input.copy_(grad if row_weight is None else grad * row_weight)


# ------------------------------------------------------------ version queries
def get_compiler_version():
    return f'none (mmcv ops run torchvision {torchvision.__version__} kernels)'


def get_compiling_cuda_version():
    return torch.version.cuda or 'not available'


def mmcv_ext_kind():
    """Which ``mmcv._ext`` ``import mmcv.ops`` loads: 'compiled', 'torchvision' (this module) or None.

    Finds the module without importing it.
    """
    try:
        spec = importlib.util.find_spec('mmcv._ext')
    except ImportError:  # no mmcv
        return None
    if spec is None:
        return None
    if spec.origin and spec.origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        return 'compiled'
    return 'torchvision'


def mmcv_ops_summary():
    """One line: the versions, and where mmcv's op kernels come from."""
    import mmdet
    from importlib.metadata import version
    kind = mmcv_ext_kind()
    kernels = {'compiled': "mmcv's compiled ops", None: 'no mmcv._ext: mmcv.ops will not import',
               'torchvision': 'torchvision kernels via resnet_backbone.mmcv_ext'}[kind]
    return (f'torch {torch.__version__}, torchvision {torchvision.__version__}, '
            f"mmcv {version('mmcv')} ({kernels}), mmdet {mmdet.__version__}, "
            f'CUDA available: {torch.cuda.is_available()}')


# ------------------------------------------------ ops without a kernel here
# What needs each op family, for the error message.
_USERS = {
    'carafe': 'CARAFE upsampling (MMDetection carafe configs)',
    'deform_roi_pool': 'deformable RoI pooling (MMDetection dcn mdpool configs)',
    'masked_': 'Guided Anchoring (MMDetection guided_anchoring configs)',
    'ms_deform_attn': 'multi-scale deformable attention on CUDA (Deformable DETR, DINO, '
                      'Mask2Former; on CPU mmcv runs it in plain PyTorch)',
    'nms_match': 'ScoreHLRSampler (MMDetection PISA configs)',
    'softnms': "soft-NMS (nms=dict(type='soft_nms'))",
    'softmax_focal_loss': "mmcv's softmax focal loss",
    'roi_pool': 'RoIPool (legacy Fast R-CNN configs)',
    'sync_bn': "mmcv's MMSyncBN; use norm_cfg=dict(type='SyncBN') (torch's SyncBatchNorm)",
    'rotated': 'rotated-box detectors (MMRotate)',
    'quadri': 'quadrilateral boxes (MMRotate)',
    'convex': 'rotated-box detectors (MMRotate)',
    'min_area_polygons': 'rotated-box detectors (MMRotate)',
    'points_in_polygons': 'rotated-box detectors (MMRotate)',
    'active_rotated_filter': 'rotated-box detectors (MMRotate)',
    'pixel_group': 'text detection (MMOCR)',
    'contour_expand': 'text detection (MMOCR)',
    'bezier_align': 'text detection (MMOCR ABCNet)',
    'upfirdn2d': 'GAN layers (MMagic)',
    'fused_bias_leakyrelu': 'GAN layers (MMagic)',
    'bias_act': 'GAN layers (MMagic)',
    'filtered_lrelu': 'GAN layers (MMagic)',
    'correlation': 'optical flow (MMFlow)',
    'tin_shift': 'temporal models (MMAction2)',
    'prroi_pool': 'PrRoIPool (tracking)',
    'psamask': 'PSANet (MMSegmentation)',
    'border_align': 'BorderDet heads',
    'bbox_overlaps': "mmcv.ops.bbox_overlaps (MMDetection's own bbox_overlaps needs no kernel)",
}
_POINT_CLOUD = 'point-cloud and 3D detection (MMDetection3D)'


def _users(name):
    for key, users in _USERS.items():
        if key in name:
            return users
    return _POINT_CLOUD


def _missing(name):
    def op(*args, **kwargs):
        raise MissingKernelError(
            f"mmcv op kernel '{name}' is not provided by the torchvision stand-in for mmcv's "
            f'compiled ops (resnet_backbone.mmcv_ext); it is needed by {_users(name)}. '
            'Provided: roi_align (avg), nms, deform_conv, modulated_deform_conv and '
            'sigmoid_focal_loss, which cover Faster/Mask/Cascade R-CNN, RetinaNet, FCOS and '
            'DCN backbones. ' + COMPILED_OPS_HINT)
    op.__name__ = op.__qualname__ = name
    op.__doc__ = f'Not provided: raises MissingKernelError ({_users(name)}).'
    return op


PROVIDED = ('roi_align_forward', 'roi_align_backward', 'nms', 'deform_conv_forward',
            'deform_conv_backward_input', 'deform_conv_backward_parameters',
            'modulated_deform_conv_forward', 'modulated_deform_conv_backward',
            'sigmoid_focal_loss_forward', 'sigmoid_focal_loss_backward',
            'get_compiler_version', 'get_compiling_cuda_version')

# Every other name mmcv 2.1.0's ops ask _ext for (ext_loader.load_ext).
MISSING = (
    'active_rotated_filter_backward', 'active_rotated_filter_forward',
    'assign_score_withk_backward', 'assign_score_withk_forward', 'ball_query_forward',
    'bbox_overlaps', 'bezier_align_backward', 'bezier_align_forward', 'bias_act',
    'border_align_backward', 'border_align_forward', 'box_iou_quadri', 'box_iou_rotated',
    'carafe_backward', 'carafe_forward', 'carafe_naive_backward', 'carafe_naive_forward',
    'chamfer_distance_backward', 'chamfer_distance_forward', 'contour_expand', 'convex_giou',
    'convex_iou', 'correlation_backward', 'correlation_forward',
    'deform_roi_pool_backward', 'deform_roi_pool_forward',
    'diff_iou_rotated_sort_vertices_forward', 'dynamic_point_to_voxel_backward',
    'dynamic_point_to_voxel_forward', 'dynamic_voxelize_forward', 'filtered_lrelu',
    'filtered_lrelu_act_', 'furthest_point_sampling_forward',
    'furthest_point_sampling_with_dist_forward', 'fused_bias_leakyrelu',
    'fused_indice_conv_forward', 'gather_points_backward', 'gather_points_forward',
    'get_indice_pairs_2d_backward', 'get_indice_pairs_2d_forward',
    'get_indice_pairs_3d_backward', 'get_indice_pairs_3d_forward',
    'get_indice_pairs_4d_forward', 'group_points_backward', 'group_points_forward',
    'hard_voxelize_forward', 'indice_conv_backward', 'indice_conv_forward',
    'indice_maxpool_backward', 'indice_maxpool_forward', 'iou3d_boxes_overlap_bev_forward',
    'iou3d_nms3d_forward', 'iou3d_nms3d_normal_forward', 'knn_forward',
    'masked_col2im_forward', 'masked_im2col_forward', 'min_area_polygons',
    'ms_deform_attn_backward', 'ms_deform_attn_forward', 'nms_match', 'nms_quadri',
    'nms_rotated', 'pixel_group', 'points_in_boxes_all_forward',
    'points_in_boxes_cpu_forward', 'points_in_boxes_part_forward',
    'points_in_polygons_forward', 'prroi_pool_backward', 'prroi_pool_coor_backward',
    'prroi_pool_forward', 'psamask_backward', 'psamask_forward',
    'riroi_align_rotated_backward', 'riroi_align_rotated_forward', 'roi_align_rotated_backward',
    'roi_align_rotated_forward', 'roi_pool_backward', 'roi_pool_forward',
    'roiaware_pool3d_backward', 'roiaware_pool3d_forward', 'roipoint_pool3d_forward',
    'rotated_feature_align_backward', 'rotated_feature_align_forward',
    'softmax_focal_loss_backward', 'softmax_focal_loss_forward', 'softnms',
    'stack_ball_query_forward', 'stack_group_points_backward', 'stack_group_points_forward',
    'sync_bn_backward_data', 'sync_bn_backward_param', 'sync_bn_forward_mean',
    'sync_bn_forward_output', 'sync_bn_forward_var', 'three_interpolate_backward',
    'three_interpolate_forward', 'three_nn_forward', 'tin_shift_backward', 'tin_shift_forward',
    'upfirdn2d')

globals().update({name: _missing(name) for name in MISSING})

__all__ = list(PROVIDED + MISSING)
