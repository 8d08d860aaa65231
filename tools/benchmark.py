#!/usr/bin/env python
"""Benchmark our ResNetBackbone against MMDetection's ResNet and torchvision's.

Every setting (a "group": mode x dtype x memory layout x torch.compile) builds
each implementation with the same random weights and input, checks its result
against MMDetection's ResNet in eager float32 (outputs for eval, parameter
gradients for train steps), then times it. Implementations run interleaved,
one step each per round (the order rotates every round), so machine drift hits
all of them alike; each row's ``vs mmdet`` is MMDetection's median divided by
the row's median (> 1: faster than MMDetection) from that same group.

Implementations (``impl`` in a row id):
  mmdet              MMDetection ``ResNet`` (the reference)
  ours               ``ResNetBackbone``, no flags
  ours-infer         eval only: ours with the documented inference switches,
                     ``fuse()`` + channels_last (always channels_last)
  torchvision        torchvision ResNet conv1..layer4 (C2-C5); in train modes
                     configured like the zoo default (stem + layer1 frozen, BN
                     in eval mode); it has no with_cp, so no train_cp row
  torchvision-fused  eval only: torchvision with every BN folded into its conv
  ours-torchvision / ours-mmcv   DCN rows: ours with dcn backend torchvision / mmcv

Modes: eval (forward, no_grad), train (forward + backward, frozen_stages=1,
norm_eval=True), train_cp (the same with with_cp=True), dcn (R-50-DCN, DCN in
c3-c5, train step at --dcn-batch x 3 x --dcn-size), detector (Mask R-CNN
R-50-FPN train iterations on a synthetic batch, with our backbone and with
MMDetection's ResNet, from mmdet's own config; needs mmcv.ops).

Row ids are ``mode/dtype/layout/compile/impl``, e.g. ``eval/fp32/nchw/eager/ours``;
``--only`` takes comma-separated fnmatch patterns over them (the reference row
of a selected group always runs).

Examples:
  python tools/benchmark.py                                   # the full CPU matrix
  python tools/benchmark.py --size 256x384 --repeats 3        # reduced size
  python tools/benchmark.py --modes eval --dtypes fp32 --compile off --only '*/ours*'
  python tools/benchmark.py --detector --modes eval,train --compile off
  python tools/benchmark.py --tiny                            # seconds; used by the tests
  python tools/benchmark.py --from-json r.json --markdown docs/benchmarks.md  # re-render
"""
import argparse
import contextlib
import copy
import datetime
import fnmatch
import gc
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

os.environ.setdefault('KINETO_LOG_LEVEL', '5')  # the memory profiler's startup chatter
import torch  # noqa: E402
from torch import nn  # noqa: E402

BACKBONE_MODES = ('eval', 'train', 'train_cp')
MODES = BACKBONE_MODES + ('dcn', 'detector')
DEFAULT_MODES = BACKBONE_MODES + ('dcn',)
DTYPES = {'fp32': None, 'bf16': torch.bfloat16}
LAYOUTS = {'off': 'nchw', 'on': 'cl'}
COMPILES = {'off': 'eager', 'on': 'compiled'}
REFERENCE = 'mmdet'
SEED = 0
MIB = 1024.0 ** 2
# Acceptance thresholds of issue 7.
INFER_SPEEDUP = 1.35
INFER_REL_TOL = 1e-4
TRAIN_SPEEDUP = 1.15
GRAD_REL_TOL = 1e-4
# A train row has the "same" gradients as MMDetection when its norm-wise error
# against float64 is within max(factor x MMDetection's in that setting, floor of
# the dtype). The floors sit above what ReLU-mask flips alone give (float32 at
# 1x3x256x384: 6e-6 to 5e-5 for MMDetection's own eager / compiled / NCHW /
# channels_last variants) and far below what a wrong formula gives.
GRAD_SAME_FACTOR = 2.0
GRAD_SAME_FLOOR = {'fp32': 1e-4, 'bf16': 3e-2}
CP_MEMORY_FRACTION = 0.60

TINY = dict(size='64x64', batch=1, depth=18, warmup=1, repeats=2, compile='off',
            dcn_size='96x96', dcn_batch=1, detector_size='128x128', detector_batch=1,
            detector_repeats=2)
# The detector rows train on the batch the zoo config's pipeline makes (images resized
# to 1333x800), on every device: 20-26 s per iteration on the 2-core CPU, hence 5
# rounds. Small images vary more (+-10% per iteration at 320x320, where the heads
# dominate): give them more rounds (--detector-repeats).
FULL = dict(size='800x1216', batch=1, depth=50, warmup=2, repeats=5, compile='off,on',
            dcn_size='512x512', dcn_batch=2, detector_size='800x1333', detector_batch=2,
            detector_repeats=5)
MASK_RCNN_CONFIG = ('mask_rcnn', 'mask-rcnn_r50_fpn_1x_coco.py')


# --------------------------------------------------------------------------- imports
_CACHE = {}


def _once(key, fn):
    if key not in _CACHE:
        _CACHE[key] = fn()
    return _CACHE[key]


def _load_mmdet_resnet_standalone():
    """MMDetection's ResNet without running ``mmdet/models/__init__.py``.

    That package imports every detector, hence mmcv's compiled ops. Where
    those are missing (mmcv-lite, e.g. on the GPU machine) the backbone file
    itself still imports: register its parent packages as empty packages
    pointing at their folders (``mmdet.models``, ``.layers``, ``.backbones``: their
    ``__init__`` files do not run), then import just ``layers/res_layer.py`` and
    ``backbones/resnet.py``. The class is MMDetection's own code.
    """
    import importlib
    import types

    import mmdet
    base = os.path.dirname(mmdet.__file__)
    for pkg in ('mmdet.models', 'mmdet.models.layers', 'mmdet.models.backbones'):
        if pkg not in sys.modules:
            mod = types.ModuleType(pkg)
            mod.__path__ = [os.path.join(base, *pkg.split('.')[1:])]
            sys.modules[pkg] = mod
    res_layer = importlib.import_module('mmdet.models.layers.res_layer')
    layers = sys.modules['mmdet.models.layers']
    for name in ('ResLayer', 'SimplifiedBasicBlock'):
        if not hasattr(layers, name) and hasattr(res_layer, name):
            setattr(layers, name, getattr(res_layer, name))
    return importlib.import_module('mmdet.models.backbones.resnet').ResNet


def mmdet_resnet():
    """(MMDetection ResNet class or None, how it was loaded or why not)."""
    def load():
        try:
            from mmdet.models.backbones import ResNet
            return ResNet, 'mmdet.models.backbones.ResNet'
        except Exception as e:  # e.g. mmcv without compiled ops
            first = f'{type(e).__name__}: {e}'
        try:
            return (_load_mmdet_resnet_standalone(),
                    'mmdet/models/backbones/resnet.py imported on its own, because mmdet.models '
                    f'does not import here ({first})')
        except Exception as e:
            return None, (f'MMDetection ResNet unavailable ({first}; standalone import: '
                          f'{type(e).__name__}: {e})')
    return _once('mmdet_resnet', load)


def ours_class():
    def load():
        try:
            from resnet_backbone import ResNetBackbone
            return ResNetBackbone, 'resnet_backbone.ResNetBackbone'
        except Exception as e:
            return None, f'resnet_backbone unavailable ({type(e).__name__}: {e})'
    return _once('ours', load)


def mmcv_ops_status():
    def load():
        try:
            from mmcv.ops import RoIAlign, deform_conv2d, nms  # noqa: F401
            return True, 'mmcv.ops imports'
        except Exception as e:
            return False, f'mmcv.ops unavailable ({type(e).__name__}: {str(e)[:160]})'
    return _once('mmcv_ops', load)


# --------------------------------------------------------------------------- models
def backbone_kwargs(depth, with_cp=False, dcn=None):
    kw = dict(depth=depth, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=1,
              norm_cfg=dict(type='BN', requires_grad=True), norm_eval=True, style='pytorch',
              with_cp=with_cp)
    if dcn is not None:
        kw.update(dcn=dcn, stage_with_dcn=(False, True, True, True))
    return kw


class TorchvisionTrunk(nn.Module):
    """torchvision ResNet up to layer4, returning (C2, C3, C4, C5).

    Parameter names equal MMDetection's, so the same state dict loads strictly.
    ``train()`` keeps the stem + the first ``frozen_stages`` stages frozen and
    all BN in eval mode (``norm_eval``), like the zoo config of the others.
    """

    def __init__(self, depth, frozen_stages=1, norm_eval=True):
        super().__init__()
        import torchvision
        net = getattr(torchvision.models, f'resnet{depth}')(weights=None)
        for name in ('conv1', 'bn1', 'relu', 'maxpool', 'layer1', 'layer2', 'layer3', 'layer4'):
            setattr(self, name, getattr(net, name))
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        for m in self.frozen_modules():
            for p in m.parameters():
                p.requires_grad = False
        self.train()

    def frozen_modules(self):
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1] + [getattr(self, f'layer{i}')
                                         for i in range(1, self.frozen_stages + 1)]

    def train(self, mode=True):
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(1, 5):
            x = getattr(self, f'layer{i}')(x)
            outs.append(x)
        return tuple(outs)

    @torch.no_grad()
    def fuse(self):
        """Fold every BN into its conv (torch.nn.utils.fusion), for inference."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval
        self.eval()
        self.conv1 = fuse_conv_bn_eval(self.conv1, self.bn1)
        self.bn1 = nn.Identity()
        for i in range(1, 5):
            for blk in getattr(self, f'layer{i}'):
                k = 1
                while hasattr(blk, f'conv{k}'):
                    setattr(blk, f'conv{k}', fuse_conv_bn_eval(getattr(blk, f'conv{k}'),
                                                               getattr(blk, f'bn{k}')))
                    setattr(blk, f'bn{k}', nn.Identity())
                    k += 1
                if blk.downsample is not None:
                    blk.downsample = nn.Sequential(
                        fuse_conv_bn_eval(blk.downsample[0], blk.downsample[1]), nn.Identity())
        return self


@torch.no_grad()
def randomize(model, seed=SEED):
    """Random weights and BN statistics of moderate size (outputs stay O(1))."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if 'conv_offset' in name:  # small, non-zero deformable offsets
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 / (p[0].numel() ** 0.5
                                                                 if p.dim() > 1 else 1))
        elif p.dim() > 1:
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 / p[0].numel()) ** 0.5)
        else:
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g) if name.endswith('weight')
                    else 0.1 * torch.randn(p.shape, generator=g))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model


def set_mode(model, train):
    model.train(train)  # MMDetection's ResNet.train() returns None: never chain it
    return model


DCN_CFG = dict(type='DCN', deform_groups=1, fallback_on_stride=False)


def reference_impl():
    """mmdet when its ResNet loads; else ours; else torchvision (pure-torch fallback)."""
    if mmdet_resnet()[0] is not None:
        return 'mmdet'
    if ours_class()[0] is not None:
        return 'ours'
    return 'torchvision'


def _construct(cls, state, *args, **kwargs):
    """``cls(*args, **kwargs)`` holding a copy of ``state``.

    Built on the meta device (no random init: a large part of a tiny run's
    time otherwise) and then given the weights; if anything is left on meta
    (a buffer outside the state dict), built again the ordinary way.
    """
    try:
        with torch.device('meta'):
            model = cls(*args, **kwargs)
        model.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True,
                              assign=True)
        if not any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
            return model
    except Exception:
        pass
    model = cls(*args, **kwargs)
    model.load_state_dict(state, strict=True)
    return model


def build_impl(impl, mode, depth, state):
    """A fresh model of ``impl`` for ``mode`` with the weights ``state``, on CPU.

    Returns (model, None) or (None, reason it is unavailable).
    """
    with_cp = mode == 'train_cp'
    if impl == 'mmdet':
        cls, why = mmdet_resnet()
        if cls is None:
            return None, why
        dcn = dict(DCN_CFG) if mode == 'dcn' else None
        if dcn is not None and not mmcv_ops_status()[0]:
            return None, 'MMDetection DCN needs ' + mmcv_ops_status()[1]
        model = _construct(cls, state, **backbone_kwargs(depth, with_cp, dcn))
    elif impl in ('ours', 'ours-infer', 'ours-torchvision', 'ours-mmcv'):
        cls, why = ours_class()
        if cls is None:
            return None, why
        dcn = None
        if mode == 'dcn':
            backend = impl.split('-', 1)[1]
            if backend == 'mmcv' and not mmcv_ops_status()[0]:
                return None, "dcn backend 'mmcv' needs " + mmcv_ops_status()[1]
            dcn = dict(DCN_CFG, backend=backend)
        model = _construct(cls, state, **backbone_kwargs(depth, with_cp, dcn))
    elif impl in ('torchvision', 'torchvision-fused'):
        if mode == 'train_cp':
            return None, 'torchvision has no with_cp'
        model = _construct(TorchvisionTrunk, state, depth)
    else:
        raise ValueError(f'unknown impl {impl!r}')
    if impl in ('ours-infer', 'torchvision-fused'):
        model.fuse()  # both return the model; fold BN for inference
    set_mode(model, mode != 'eval')
    return model, None


def group_impls(mode):
    if mode == 'eval':
        return ['mmdet', 'ours', 'ours-infer', 'torchvision', 'torchvision-fused']
    if mode == 'train':
        return ['mmdet', 'ours', 'torchvision']
    if mode == 'train_cp':
        return ['mmdet', 'ours']
    if mode == 'dcn':
        return ['mmdet', 'ours-torchvision', 'ours-mmcv']
    if mode == 'detector':
        return ['mmdet', 'ours']
    raise ValueError(mode)


def dcn_reference_impl():
    """mmdet (mmcv's deformable conv) when mmcv.ops imports, else ours-torchvision."""
    if mmdet_resnet()[0] is not None and mmcv_ops_status()[0]:
        return 'mmdet'
    return 'ours-torchvision' if ours_class()[0] is not None else None


def reference_state(depth, dcn):
    """Random weights (a CPU state dict) shared by every implementation."""
    def make():
        if dcn:
            ref = dcn_reference_impl()
            if ref is None:
                raise RuntimeError('DCN rows need MMDetection with mmcv.ops or resnet_backbone')
            model = (mmdet_resnet()[0](**backbone_kwargs(depth, dcn=dict(DCN_CFG)))
                     if ref == 'mmdet' else ours_class()[0](**backbone_kwargs(
                         depth, dcn=dict(DCN_CFG, backend='torchvision'))))
        else:
            ref = reference_impl()
            if ref == 'torchvision':
                model = TorchvisionTrunk(depth)
            else:
                model = (mmdet_resnet()[0] if ref == 'mmdet' else ours_class()[0])(
                    **backbone_kwargs(depth))
        randomize(model)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    return _once(('state', depth, bool(dcn)), make)


# --------------------------------------------------------------------------- steps
def autocast_ctx(device, amp_dtype):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def weighted_loss(outs, weights):
    return sum((o.to(w.dtype) * w).sum() for o, w in zip(outs, weights))


def loss_weights(shapes, device, dtype=torch.float32):
    """Fixed positive weights of each output (random signs would make the gradients
    sums of cancelling terms, whose float32 rounding then dominates any comparison)."""
    g = torch.Generator().manual_seed(SEED + 1)
    return [(torch.randn(s, generator=g, dtype=torch.float64).abs() / math.sqrt(math.prod(s)))
            .to(device=device, dtype=dtype) for s in shapes]


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


class Runner:
    """One implementation in one setting: ``step()`` is the timed unit."""

    def __init__(self, impl, model, train, x, device, amp_dtype, channels_last, compiled,
                 weights=None):
        self.impl = impl
        self.device = device
        self.train = train
        self.amp_dtype = amp_dtype
        self.weights = weights
        model = model.to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        self.model = model
        self.x = x
        self.fn = torch.compile(model) if compiled else model
        self.params = [p for p in model.parameters() if p.requires_grad]

    def forward(self):
        with autocast_ctx(self.device, self.amp_dtype):
            return self.fn(self.x)

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        if self.train:
            self.zero_grad()
            weighted_loss(self.forward(), self.weights).backward()
        else:
            with torch.no_grad():
                self.forward()
        synchronize(self.device)

    def outputs(self):
        with torch.no_grad():
            return [o.detach().float() for o in self.forward()]

    def grads(self):
        self.step()
        return {n: p.grad.detach().double() for n, p in self.model.named_parameters()
                if p.grad is not None}


def out_rel_diff(outs, ref):
    """max over outputs of max|out - ref| / max|ref|."""
    return max(((o - r).abs().max() / r.abs().max().clamp_min(1e-30)).item()
               for o, r in zip(outs, ref))


def grad_diffs(grads, ref):
    """(max abs diff, that / max |ref grad|, same set of parameters with gradients).

    ReLU networks make this max spiky: where rounding moves a pre-activation
    across zero, the gradient of that position changes by its whole value. So
    each train row is also compared with float64 gradients by a norm-wise
    error (``grad_norm_err``), which such spikes hardly move, and that error
    is set beside MMDetection's own in the same setting.
    """
    same = set(grads) == set(ref)
    names = set(grads) & set(ref)
    if not names:
        return float('nan'), float('nan'), same
    diff = max((grads[n] - ref[n]).abs().max().item() for n in names)
    scale = max(ref[n].abs().max().item() for n in names)
    return diff, diff / max(scale, 1e-30), same


def grad_norm_err(grads, ref):
    """||g - g_ref|| / ||g_ref|| over all parameters both have gradients for."""
    names = set(grads) & set(ref)
    num = sum(((grads[n] - ref[n]) ** 2).sum().item() for n in names)
    den = sum((ref[n] ** 2).sum().item() for n in names)
    return math.sqrt(num / den) if den > 0 else float('nan')


# --------------------------------------------------------------------------- FLOPs
def _deform_conv_flop(input_shape, weight_shape, *args, out_shape=None, **kwargs):
    """torchvision::deform_conv2d: the conv's multiply-adds (bilinear sampling not counted)."""
    c_out, c_in_per_group, kh, kw = weight_shape
    return 2 * out_shape[0] * c_out * out_shape[2] * out_shape[3] * c_in_per_group * kh * kw


def _deform_conv_backward_flop(grad_shape, input_shape, weight_shape, *args, out_shape=None,
                               **kwargs):
    """Gradient of input/offsets and of the weight: twice the forward's multiply-adds."""
    c_out, c_in_per_group, kh, kw = weight_shape
    return 4 * grad_shape[0] * c_out * grad_shape[2] * grad_shape[3] * c_in_per_group * kh * kw


def flop_counter():
    from torch.utils.flop_counter import FlopCounterMode
    mapping = {}
    try:
        import torchvision.ops  # noqa: F401  (registers the torchvision:: ops)
        mapping[torch.ops.torchvision.deform_conv2d] = _deform_conv_flop
        mapping[torch.ops.torchvision._deform_conv2d_backward] = _deform_conv_backward_flop
    except Exception:
        pass
    return FlopCounterMode(display=False, custom_mapping=mapping)


# --------------------------------------------------------------------------- memory
@contextlib.contextmanager
def _stderr_silenced():
    """Silence fd 2 (the profiler's native start/stop lines) for a moment."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class PeakMemory:
    """Peak memory of one step above the memory held just before it.

    CUDA: torch.cuda.max_memory_allocated() - memory_allocated() before.
    CPU: the same quantity for PyTorch's CPU allocator, from the allocation and
    free events that torch.profiler records with profile_memory=True, summed in
    time order. Not the process RSS: glibc keeps freed heap pages resident and
    hands them out again, which inflated a train step's RSS peak by up to 2x in
    this project's measurements (and made with_cp look useless).
    """

    def __init__(self, device):
        self.device = device
        if device.type == 'cuda':
            self.method = ('torch.cuda.max_memory_allocated() during one step minus '
                           'torch.cuda.memory_allocated() before it')
        else:
            self.method = ('CPU: peak bytes held by PyTorch\'s CPU allocator during one step '
                           'above those held before it (allocation/free events of '
                           'torch.profiler with profile_memory=True, summed in time order; '
                           'the CPU analogue of torch.cuda.max_memory_allocated, not the '
                           'process RSS)')

    def measure(self, step, prepare=None):
        """Peak MiB of ``step()`` above the memory held just before it."""
        if prepare:
            prepare()
        gc.collect()
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
            step()
            return (torch.cuda.max_memory_allocated(self.device) - base) / MIB
        from torch.profiler import ProfilerActivity, profile
        with _stderr_silenced():
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                step()
        events = sorted((e for e in prof.profiler.kineto_results.events()
                         if e.name() == '[memory]'), key=lambda e: e.start_ns())
        held = peak = 0
        for e in events:
            held += e.nbytes()
            peak = max(peak, held)
        return peak / MIB


# --------------------------------------------------------------------------- groups
def row_id(mode, dtype, layout, compile_, impl):
    return f'{mode}/{dtype}/{layout}/{compile_}/{impl}'


def selected(rid, patterns):
    return not patterns or any(fnmatch.fnmatchcase(rid, p) for p in patterns)


def make_input(batch, h, w, device):
    g = torch.Generator().manual_seed(SEED)
    return torch.randn(batch, 3, h, w, generator=g).to(device)


def references(kind, depth, batch, h, w, device):
    """Eager float32 truth for ``kind`` (eval / train / dcn): outputs or grads, and FLOPs.

    Returns dict(outs | grads, flops, flops_note, shapes, weights, impl).
    """
    def make():
        dcn = kind == 'dcn'
        state = reference_state(depth, dcn)
        x = make_input(batch, h, w, device)
        impl = dcn_reference_impl() if dcn else reference_impl()
        model, why = build_impl(impl, kind, depth, state)
        if model is None:
            raise RuntimeError(f'no reference model: {why}')
        model = set_mode(model.to(device), False)
        with torch.no_grad():
            shapes = [tuple(o.shape) for o in model(x)]
        weights = loss_weights(shapes, device)
        runner = Runner(impl, set_mode(model, kind != 'eval'), kind != 'eval', x, device,
                        None, False, False, weights)
        note = f'{impl}, eager float32'
        counter = flop_counter()
        if kind == 'eval':
            with counter:
                res = dict(outs=runner.outputs())
        elif dcn and impl == 'mmdet' and ours_class()[0] is not None:
            # mmcv's deformable conv is invisible to the counter: count the same network
            # (same weights) with the torchvision backend.
            res = dict(grads=runner.grads())
            twin, _ = build_impl('ours-torchvision', 'dcn', depth, state)
            with counter:
                Runner('ours-torchvision', twin, True, x, device, None, False, False,
                       weights).step()
            note = 'ours-torchvision (the same network: mmcv ops are invisible to the counter)'
        else:
            with counter:
                res = dict(grads=runner.grads())
        if kind != 'eval':
            note += ', forward + backward'
            # float64 truth of the same step (same weights, input and loss)
            m64, _ = build_impl(impl, kind, depth, state)
            r64 = Runner(impl, m64.double(), True, x.double(), device, None, False, False,
                         [w.double() for w in weights])
            res['grads64'] = r64.grads()
            del m64, r64
        res.update(flops=counter.get_total_flops(), flops_note=note, shapes=shapes,
                   weights=weights, impl=impl)
        return res
    return _once(('ref', kind, depth, batch, h, w, str(device)), make)


def timed_rounds(runners, warmup, repeats, device, times):
    """Warm-up, then ``repeats`` rounds of one step per runner, order rotating."""
    alive = list(runners)
    for _ in range(warmup):
        for r in list(alive):
            _guard(r, r.step, times, alive)
    for k in range(repeats):
        order = alive[k % len(alive):] + alive[:k % len(alive)] if alive else []
        for r in order:
            if r not in alive:
                continue
            t0 = time.perf_counter()
            if _guard(r, r.step, times, alive):
                times[r.impl].append(time.perf_counter() - t0)


def _guard(runner, fn, times, alive):
    try:
        fn()
        return True
    except Exception as e:  # one failing implementation must not end the run
        times.setdefault('_errors', {})[runner.impl] = f'{type(e).__name__}: {str(e)[:300]}'
        alive.remove(runner)
        return False


def run_backbone_group(args, device, mode, dtype, layout, compile_, patterns, meter, log):
    """Rows of one setting (mode x dtype x layout x compile)."""
    dcn = mode == 'dcn'
    depth = args.depth if not dcn else (args.depth if args.depth >= 50 else 50)
    batch, (h, w) = (args.dcn_batch, args.dcn_size) if dcn else (args.batch, args.size)
    ref_impl = dcn_reference_impl() if dcn else reference_impl()
    impls = [i for i in group_impls(mode)
             if i == REFERENCE or selected(row_id(mode, dtype, layout, compile_, i), patterns)]
    if ref_impl != REFERENCE and ref_impl in group_impls(mode) and ref_impl not in impls:
        impls.insert(0, ref_impl)
    if not any(selected(row_id(mode, dtype, layout, compile_, i), patterns) for i in impls):
        return []
    kind = 'train' if mode == 'train_cp' else mode
    try:
        ref = references(kind, depth, batch, h, w, device)
    except Exception as e:
        return [dict(id=row_id(mode, dtype, layout, compile_, i), mode=mode, dtype=dtype,
                     layout=layout, compile=compile_, impl=i,
                     error=f'reference failed: {type(e).__name__}: {e}') for i in impls]
    if compile_ == 'compiled':
        torch._dynamo.reset()
    state = reference_state(depth, dcn)
    x = make_input(batch, h, w, device)
    amp = DTYPES[dtype]
    runners, rows = [], {}
    for impl in impls:
        rid = row_id(mode, dtype, layout, compile_, impl)
        row = dict(id=rid, mode=mode, dtype=dtype, layout=layout, compile=compile_, impl=impl,
                   batch=batch, size=[h, w], depth=depth)
        rows[impl] = row
        model, why = build_impl(impl, mode, depth, state)
        if model is None:
            row['error'] = f'unavailable: {why}'
            continue
        cl = layout == 'cl' or impl == 'ours-infer'
        runners.append(Runner(impl, model, mode != 'eval', x, device, amp, cl,
                              compile_ == 'compiled', ref['weights']))
    times = {r.impl: [] for r in runners}
    alive = list(runners)
    # Correctness first (this also compiles), against the eager float32 reference.
    for r in list(alive):
        row = rows[r.impl]
        if mode == 'eval':
            if _guard(r, lambda r=r: row.update(out_max_rel_diff=out_rel_diff(
                    r.outputs(), ref['outs'])), times, alive):
                row['check'] = dict(kind='out_max_rel_diff', value=row['out_max_rel_diff'],
                                    against=f"{ref['impl']} eager fp32")
        else:
            def grad_check(r=r, row=row):
                grads = r.grads()
                diff, rel, same = grad_diffs(grads, ref['grads'])
                row.update(grad_max_abs_diff=diff, grad_max_rel_diff=rel, grad_params_match=same,
                           grad_err_fp64=grad_diffs(grads, ref['grads64'])[1],
                           grad_norm_err_fp64=grad_norm_err(grads, ref['grads64']))
            if _guard(r, grad_check, times, alive):
                row['check'] = dict(kind='grad_max_rel_diff', value=row['grad_max_rel_diff'],
                                    against=f"{ref['impl']} eager fp32")
    timed_rounds(alive, args.warmup, args.repeats, device, times)
    for r in alive:
        if r.impl in times.get('_errors', {}):
            continue
        try:
            rows[r.impl]['peak_mem_mib'] = meter.measure(r.step, r.zero_grad)
        except Exception as e:
            rows[r.impl]['peak_mem_error'] = f'{type(e).__name__}: {e}'
    for impl, err in times.get('_errors', {}).items():
        rows[impl]['error'] = err
    del runners, alive
    gc.collect()
    out = []
    for impl in impls:
        row = rows[impl]
        if 'error' not in row:
            add_stats(row, times[impl], batch)
            row['gflop'] = ref['flops'] / 1e9
            row['gflop_note'] = ref['flops_note'] + (
                '; nominal (recomputation not counted)' if mode == 'train_cp' else '')
            row['gflops_per_s'] = row['gflop'] / row['median_s']
        out.append(row)
    ratio_ref = REFERENCE if any(r['impl'] == REFERENCE and 'median_s' in r for r in out) \
        else ref['impl']
    add_ratios(out, ratio_ref)
    add_grad_verdicts(out, ratio_ref)
    for row in out:
        log(format_row(row))
    return out


def add_grad_verdicts(rows, ref_impl):
    """``grad_same``: the same parameters get gradients and they are as close to the
    float64 gradients as the reference's (MMDetection's) in the same setting:
    grad_norm_err_fp64 <= max(GRAD_SAME_FACTOR x the reference's, GRAD_SAME_FLOOR[dtype])."""
    base = next((r for r in rows
                 if r['impl'] == ref_impl and 'grad_err_fp64' in r and 'error' not in r), None)
    for row in rows:
        if 'grad_err_fp64' in row and 'error' not in row:
            row['ref_grad_err_fp64'] = None if base is None else base['grad_err_fp64']
            row['ref_grad_norm_err_fp64'] = None if base is None else base['grad_norm_err_fp64']
            row['grad_same'] = None if base is None else bool(
                row['grad_params_match'] and row['grad_norm_err_fp64'] <= max(
                    GRAD_SAME_FACTOR * base['grad_norm_err_fp64'],
                    GRAD_SAME_FLOOR[row['dtype']]))


def add_stats(row, times, batch):
    row['times_s'] = list(times)
    row['repeats'] = len(times)
    row['median_s'] = statistics.median(times)
    row['min_s'] = min(times)
    row['max_s'] = max(times)
    row['throughput_img_s'] = batch / row['median_s']


def add_ratios(rows, ref_impl):
    ref = next((r for r in rows if r['impl'] == ref_impl and 'median_s' in r), None)
    for row in rows:
        row['ratio_ref'] = ref_impl
        row['ratio_vs_ref'] = (ref['median_s'] / row['median_s']
                               if ref is not None and 'median_s' in row else None)


# --------------------------------------------------------------------------- detector
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
    timed_rounds(alive, args.warmup, args.detector_repeats, device, times)
    for r in alive:
        if r.impl not in times.get('_errors', {}):
            try:
                rows[r.impl]['peak_mem_mib'] = meter.measure(r.step, r.zero_grad)
            except Exception as e:
                rows[r.impl]['peak_mem_error'] = f'{type(e).__name__}: {e}'
    for impl, err in times.get('_errors', {}).items():
        rows[impl]['error'] = err
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


# --------------------------------------------------------------------------- output
COLUMNS = ('row', 'median ms', 'min ms', 'max ms', 'img/s', 'peak MiB', 'GFLOP/s',
           'vs mmdet', 'check')
CHECK_LABELS = {'out_max_rel_diff': 'out', 'grad_max_rel_diff': 'grad',
                'loss_max_abs_diff': 'loss'}


def _num(v, fmt):
    return '-' if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def row_cells(row):
    """The table cells of one row (also used for markdown)."""
    if 'error' in row:
        return [row['id']] + ['-'] * 7 + ['error: ' + row['error'][:200].replace('|', '/')]
    check = row.get('check')
    check_s = '-' if not check else f"{CHECK_LABELS[check['kind']]} {check['value']:.1e}"
    if row.get('grad_params_match') is False:
        check_s += ' (param sets differ)'
    elif row.get('grad_same') is not None:
        check_s += ' same' if row['grad_same'] else ' DIFFERS'
    ratio = row.get('ratio_vs_ref')
    ratio_s = '-' if ratio is None else f'{ratio:.3f}x'
    if ratio is not None and row.get('ratio_ref', REFERENCE) != REFERENCE:
        ratio_s += f" (vs {row['ratio_ref']})"
    return [row['id'], _num(row['median_s'] * 1e3, '.2f'), _num(row['min_s'] * 1e3, '.2f'),
            _num(row['max_s'] * 1e3, '.2f'), _num(row['throughput_img_s'], '.2f'),
            _num(row.get('peak_mem_mib'), '.1f'), _num(row.get('gflops_per_s'), '.2f'),
            ratio_s, check_s]


def format_row(row):
    return '| ' + ' | '.join(row_cells(row)) + ' |'


def table_lines(rows):
    return (['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
            + [format_row(r) for r in rows])


def _grad_detail(r):
    return (f"grad diff vs mmdet {r['grad_max_rel_diff']:.1e} of max |grad|; vs float64 "
            f"norm-wise {r['grad_norm_err_fp64']:.1e} (mmdet {r['ref_grad_norm_err_fp64']:.1e}), "
            f"max {r['grad_err_fp64']:.1e} (mmdet {r['ref_grad_err_fp64']:.1e})")


def _find(rows, rid):
    return next((r for r in rows if r['id'] == rid and 'error' not in r), None)


def acceptance(rows):
    """The measurable claims of issue 7, judged on this run's rows."""
    res = []

    def add(name, ok, detail):
        res.append(dict(name=name, status='n/a' if ok is None else ('PASS' if ok else 'FAIL'),
                        detail=detail))

    r = _find(rows, 'eval/fp32/nchw/eager/ours-infer')
    add(f'eval, inference switches (fuse + channels_last) >= {INFER_SPEEDUP}x mmdet, '
        f'outputs within {INFER_REL_TOL:g} relative',
        None if r is None or r.get('ratio_vs_ref') is None else
        r['ratio_vs_ref'] >= INFER_SPEEDUP and r['out_max_rel_diff'] <= INFER_REL_TOL,
        '-' if r is None or r.get('ratio_vs_ref') is None else
        f"{r['ratio_vs_ref']:.3f}x, max rel diff {r['out_max_rel_diff']:.1e}")
    r = _find(rows, 'eval/fp32/nchw/eager/ours')
    add('eval, no flags: not slower than mmdet (>= 1.00x)',
        None if r is None or r.get('ratio_vs_ref') is None else r['ratio_vs_ref'] >= 1.0,
        '-' if r is None or r.get('ratio_vs_ref') is None else f"{r['ratio_vs_ref']:.3f}x")
    r = _find(rows, 'train/fp32/nchw/eager/ours')
    add(f'train step (frozen_stages=1, norm_eval), no flags: >= {TRAIN_SPEEDUP}x mmdet, '
        'same gradients (same parameters; norm-wise error vs float64 <= '
        f"max({GRAD_SAME_FACTOR:g}x mmdet's, {GRAD_SAME_FLOOR['fp32']:g}))",
        None if r is None or r.get('ratio_vs_ref') is None or r.get('grad_same') is None else
        r['ratio_vs_ref'] >= TRAIN_SPEEDUP and r['grad_same'],
        '-' if r is None or r.get('ratio_vs_ref') is None else
        f"{r['ratio_vs_ref']:.3f}x; {_grad_detail(r)}")
    cp, nocp = _find(rows, 'train_cp/fp32/nchw/eager/ours'), r
    have = (cp is not None and nocp is not None and cp.get('peak_mem_mib')
            and nocp.get('peak_mem_mib') and cp.get('grad_same') is not None)
    add(f'with_cp: peak memory of a train step <= {CP_MEMORY_FRACTION:.0%} of the same step '
        'without it, same gradients',
        None if not have else cp['peak_mem_mib'] <= CP_MEMORY_FRACTION * nocp['peak_mem_mib']
        and cp['grad_same'],
        '-' if not have else f"{cp['peak_mem_mib']:.1f} / {nocp['peak_mem_mib']:.1f} MiB = "
        f"{cp['peak_mem_mib'] / nocp['peak_mem_mib']:.0%}; {_grad_detail(cp)}")
    r = _find(rows, 'detector/fp32/nchw/eager/ours')
    add('Mask R-CNN R-50-FPN train iteration: not slower than with mmdet ResNet (>= 1.00x)',
        None if r is None or r.get('ratio_vs_ref') is None else r['ratio_vs_ref'] >= 1.0,
        '-' if r is None or r.get('ratio_vs_ref') is None else _detector_detail(
            r, _find(rows, 'detector/fp32/nchw/eager/mmdet')))
    return res


def _detector_detail(row, ref):
    """Ratio, times and batch of a detector row, with the spread of its per-round ratios
    (the implementations of a round run the same seeded iteration)."""
    h, w = row['size']
    text = (f"{row['ratio_vs_ref']:.3f}x ({row['median_s']:.3f} s/iter"
            + (f" vs {ref['median_s']:.3f}" if ref else '') + f"; {row['batch']}x3x{h}x{w}")
    if ref and ref.get('times_s') and len(ref['times_s']) == len(row.get('times_s', ())):
        paired = [a / b for a, b in zip(ref['times_s'], row['times_s'])]
        text += f'; per-round ratios {min(paired):.3f}-{max(paired):.3f}'
    return text + ')'


def _versions():
    out = {'python': platform.python_version(), 'torch': torch.__version__}
    for name in ('torchvision', 'mmengine', 'mmcv', 'mmdet'):
        try:
            out[name] = __import__(name).__version__
        except Exception as e:
            out[name] = f'unavailable ({type(e).__name__})'
    out['mmcv_ops'] = mmcv_ops_status()[1]
    return out


def machine_info(device):
    info = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
                platform=platform.platform(), device=str(device),
                cpu_model=None, logical_cpus=os.cpu_count(),
                usable_cpus=len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
                else os.cpu_count(),
                torch_threads=torch.get_num_threads(), interop_threads=None, mem_total_gib=None)
    try:
        info['interop_threads'] = torch.get_num_interop_threads()
        info['cpu_capability'] = torch.backends.cpu.get_cpu_capability()
    except Exception:
        pass
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    info['cpu_model'] = line.split(':', 1)[1].strip()
                    break
        with open('/proc/meminfo') as f:
            info['mem_total_gib'] = round(int(f.readline().split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    if device.type == 'cuda':
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 1024 ** 3, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    tf32=torch.backends.cudnn.allow_tf32,
                    cudnn_benchmark=torch.backends.cudnn.benchmark)
    info['versions'] = _versions()
    return info


def machine_lines(m):
    v = m['versions']
    lines = [f"- date: {m['date']}",
             f"- device: {m['device']}" + (f" ({m['gpu']}, {m['gpu_mem_gib']} GiB, CUDA "
                                           f"{m['cuda']}, cuDNN {m['cudnn']}, TF32 "
                                           f"{'on' if m['tf32'] else 'off'}, cudnn.benchmark "
                                           f"{'on' if m['cudnn_benchmark'] else 'off'})"
                                           if 'gpu' in m else ''),
             f"- CPU: {m.get('cpu_model')}, {m['logical_cpus']} logical CPUs "
             f"({m['usable_cpus']} usable), {m.get('mem_total_gib')} GiB RAM, "
             f"capability {m.get('cpu_capability')}",
             f"- torch threads: {m['torch_threads']} (inter-op {m.get('interop_threads')})",
             f"- {m['platform']}",
             f"- python {v['python']}, torch {v['torch']}, torchvision {v['torchvision']}, "
             f"mmengine {v['mmengine']}, mmcv {v['mmcv']} ({v['mmcv_ops']}), mmdet {v['mmdet']}"]
    return lines


def markdown(result):
    m, cfg = result['machine'], result['config']
    lines = [f"### {result['title']}", '', 'Machine:', ''] + machine_lines(m) + [
        '', f"Command: `{cfg['command']}`", '',
        f"Backbone R-{cfg['depth']}, input {cfg['batch']}x3x{cfg['size'][0]}x{cfg['size'][1]}"
        f"; DCN rows {cfg['dcn_batch']}x3x{cfg['dcn_size'][0]}x{cfg['dcn_size'][1]} (R-50-DCN, "
        f"c3-c5); {cfg['warmup']} warm-up + {cfg['repeats']} timed steps per row "
        f"({cfg.get('detector_repeats', cfg['repeats'])} for the detector rows, each round's "
        'iteration seeded alike for both), interleaved round by round. '
        '`vs mmdet` = MMDetection median / row median (> 1 is faster). '
        'Checks are against MMDetection in eager float32: `out` = max relative output '
        'difference (eval), `grad` = max abs parameter-gradient difference / max |grad| '
        '(train; `same` = the same parameters get gradients, and their norm-wise error against '
        'float64 gradients, ||g - g64|| / ||g64||, is within '
        f'max({GRAD_SAME_FACTOR:g}x MMDetection\'s in that setting, '
        f"{GRAD_SAME_FLOOR['fp32']:g} in fp32 / {GRAD_SAME_FLOOR['bf16']:g} in bf16)), "
        '`loss` = max abs loss difference in the first iteration '
        '(detector). '
        f"GFLOP/s = the model's FLOPs ({result['flops_method']}) / median. Peak memory: "
        f"{result['memory_method']}.", ''] + table_lines(result['rows']) + [
        '', 'Acceptance (issue 7):', '', '| claim | result | measured |', '|---|---|---|']
    cell = lambda text: str(text).replace('|', '\\|')  # noqa: E731
    lines += [f"| {cell(a['name'])} | {a['status']} | {cell(a['detail'])} |"
              for a in result['acceptance']]
    notes = result.get('notes') or []
    if notes:
        lines += [''] + [f'- {n}' for n in notes]
    return '\n'.join(lines) + '\n'


def write_markdown(path, text, section):
    """Write ``text`` between this section's markers in ``path`` (file kept otherwise)."""
    begin, end = f'<!-- benchmark:{section}:begin -->', f'<!-- benchmark:{section}:end -->'
    block = f'{begin}\n{text}{end}'
    old = open(path).read() if os.path.exists(path) else None
    if old is not None and begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    elif old is not None:
        new = old.rstrip('\n') + '\n\n' + block + '\n'
    else:
        new = '# Benchmarks\n\n' + block + '\n'
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        f.write(new)


def emit(result, args, log):
    log('')
    for line in table_lines(result['rows']):
        log(line)
    log('')
    log('Acceptance (issue 7):')
    for a in result['acceptance']:
        log(f"  [{a['status']}] {a['name']}: {a['detail']}")
    log(f"Peak memory: {result['memory_method']}")
    log(f"FLOPs: {result['flops_method']}")
    for n in result.get('notes') or []:
        log(f'Note: {n}')
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)
        log(f'wrote {args.out}')
    if args.markdown:
        section = args.markdown_section or result['machine']['device'].split(':')[0]
        write_markdown(args.markdown, markdown(result), section)
        log(f'wrote {args.markdown} (section {section})')


# --------------------------------------------------------------------------- CLI
def _size(s):
    try:
        h, w = (int(v) for v in s.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must be HxW, e.g. 800x1216, got {s!r}')
    return h, w


def _choices(allowed):
    def parse(s):
        vals = [v.strip() for v in s.split(',') if v.strip()]
        bad = [v for v in vals if v not in allowed]
        if bad or not vals:
            raise argparse.ArgumentTypeError(f'{s!r}: allowed {",".join(allowed)}')
        return vals
    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
    p.add_argument('--size', type=_size, help='backbone input HxW (default 800x1216)')
    p.add_argument('--batch', type=int, help='backbone batch (default 1)')
    p.add_argument('--depth', type=int, choices=(18, 34, 50, 101, 152), help='default 50')
    p.add_argument('--repeats', type=int, help='timed steps per row (default 5)')
    p.add_argument('--warmup', type=int, help='untimed steps per row after the check (default 2)')
    p.add_argument('--modes', type=_choices(MODES), help=f'default {",".join(DEFAULT_MODES)}')
    p.add_argument('--dtypes', type=_choices(tuple(DTYPES)), default=list(DTYPES),
                   help='fp32 and/or bf16 (autocast); default both')
    p.add_argument('--channels-last', type=_choices(tuple(LAYOUTS)), default=list(LAYOUTS),
                   help='off,on (default both)')
    p.add_argument('--compile', type=_choices(tuple(COMPILES)),
                   help='torch.compile off,on (default both; off with --tiny)')
    p.add_argument('--only', type=lambda s: [v for v in s.split(',') if v],
                   help='comma-separated fnmatch patterns over row ids '
                        'mode/dtype/layout/compile/impl, e.g. "eval/fp32/*/ours*"')
    p.add_argument('--detector', action='store_true',
                   help='also time Mask R-CNN R-50-FPN train iterations (mode detector)')
    p.add_argument('--dcn-size', type=_size, help='DCN rows input HxW (default 512x512)')
    p.add_argument('--dcn-batch', type=int, help='DCN rows batch (default 2)')
    p.add_argument('--detector-size', type=_size,
                   help='detector input HxW (default 800x1333, the config\'s training scale)')
    p.add_argument('--detector-batch', type=int, help='detector batch (default 2)')
    p.add_argument('--detector-repeats', type=int,
                   help='timed iterations per detector row (default 5)')
    p.add_argument('--threads', type=int, help='torch.set_num_threads (default: torch default)')
    p.add_argument('--tf32', action='store_true', help='CUDA: allow TF32 in fp32 rows')
    p.add_argument('--cudnn-benchmark', action='store_true', help='CUDA: cudnn.benchmark=True')
    p.add_argument('--tiny', action='store_true',
                   help='tiny run for tests: 1x3x64x64, depth 18, 1 warm-up, 2 repeats, '
                        'compile off unless asked, DCN 1x3x96x96, detector 1x3x128x128')
    p.add_argument('--out', help='write the results as JSON')
    p.add_argument('--markdown', help='write a markdown table + machine description; an '
                   'existing file keeps everything outside this section\'s markers')
    p.add_argument('--markdown-section', help='marker name in --markdown (default: device)')
    p.add_argument('--from-json', help='render a previous --out JSON (no benchmark run)')
    p.add_argument('--title', help='markdown heading')
    args = p.parse_args(argv)
    defaults = TINY if args.tiny else FULL
    for key, val in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    for key in ('size', 'dcn_size', 'detector_size'):
        if isinstance(getattr(args, key), str):
            setattr(args, key, _size(getattr(args, key)))
    if isinstance(args.compile, str):
        args.compile = _choices(tuple(COMPILES))(args.compile)
    if args.modes is None:
        args.modes = list(DEFAULT_MODES)
    if args.detector and 'detector' not in args.modes:
        args.modes.append('detector')
    if args.repeats < 1 or args.detector_repeats < 1 or args.warmup < 0:
        p.error('--repeats and --detector-repeats must be >= 1 and --warmup >= 0')
    return args


def main(argv=None, log=print, progress=None):
    """Run (or re-render) the benchmark; the final table goes to ``log`` (stdout),
    progress lines (each row as it finishes) to ``progress`` (stderr)."""
    with warnings.catch_warnings():  # checkpoint / deprecation chatter of the references
        warnings.simplefilter('ignore')
        try:
            return _main(argv, log, progress)
        finally:
            gc.unfreeze()


def _main(argv, log, progress):
    if progress is None:
        def progress(line):
            print(line, file=sys.stderr, flush=True)
    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    if args.from_json:
        with open(args.from_json) as f:
            result = json.load(f)
        if args.title:
            result['title'] = args.title
        emit(result, args, log)
        return result
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise SystemExit('--device cuda: CUDA is not available')
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    for name in ('cache_size_limit', 'recompile_limit'):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    meter = PeakMemory(device)
    patterns = args.only or []
    reference_impl(), ours_class(), mmcv_ops_status()  # imports first, then
    gc.collect()
    gc.freeze()  # keep the imported modules out of every later (full) collection
    notes = []
    ref_impl = reference_impl()
    if ref_impl != REFERENCE:
        notes.append(f'{mmdet_resnet()[1]}: ratios are against {ref_impl} instead')
    elif 'standalone' in mmdet_resnet()[1] or 'on its own' in mmdet_resnet()[1]:
        notes.append(mmdet_resnet()[1])
    if ours_class()[0] is None:
        notes.append(ours_class()[1])
    if args.depth < 50 and 'dcn' in args.modes:
        notes.append(f'DCN rows use depth 50 (MMDetection has no DCN BasicBlock; '
                     f'--depth is {args.depth})')
    machine = machine_info(device)
    log(f"benchmark on {device} ({machine.get('gpu') or machine.get('cpu_model')}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; reference {ref_impl}")
    progress(f'peak memory: {meter.method}')
    progress('rows as they finish:')
    progress('| ' + ' | '.join(COLUMNS) + ' |')
    rows = []
    cfg = dict(command='python tools/benchmark.py ' + ' '.join(argv), device=args.device,
               depth=args.depth, batch=args.batch, size=list(args.size),
               dcn_batch=args.dcn_batch, dcn_size=list(args.dcn_size),
               detector_batch=args.detector_batch, detector_size=list(args.detector_size),
               warmup=args.warmup, repeats=args.repeats,
               detector_repeats=args.detector_repeats, modes=args.modes, dtypes=args.dtypes,
               channels_last=args.channels_last, compile=args.compile, only=patterns,
               tiny=args.tiny, reference=ref_impl)

    def make_result(partial):
        return dict(
            title=args.title or f"{machine.get('gpu') or 'CPU'}: R-{args.depth} "
                                f"{args.batch}x3x{args.size[0]}x{args.size[1]}",
            partial=partial, machine=machine, config=cfg, memory_method=meter.method,
            flops_method='torch.utils.flop_counter.FlopCounterMode on the reference model, '
                         'eager float32, once per setting (train: forward + backward; with_cp '
                         'rows use the same nominal count; deformable conv: its multiply-adds, '
                         'bilinear sampling not counted)',
            rows=rows, acceptance=acceptance(rows), notes=notes)

    def save_partial():  # a run cut short still leaves its finished rows
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, 'w') as f:
                json.dump(make_result(True), f, indent=1)

    for mode in args.modes:
        if mode in BACKBONE_MODES:
            for dtype in args.dtypes:
                for layout in (LAYOUTS[c] for c in args.channels_last):
                    for compile_ in (COMPILES[c] for c in args.compile):
                        rows += run_backbone_group(args, device, mode, dtype, layout, compile_,
                                                   patterns, meter, progress)
                        save_partial()
        elif mode == 'dcn':
            rows += run_backbone_group(args, device, 'dcn', 'fp32', 'nchw', 'eager', patterns,
                                       meter, progress)
            save_partial()
        elif mode == 'detector':
            rows += run_detector(args, device, patterns, meter, progress)
            save_partial()
    if patterns and not rows:
        notes.append(f'no row id matched --only {",".join(patterns)} (ids are '
                     'mode/dtype/layout/compile/impl, e.g. eval/fp32/nchw/eager/ours)')
    result = make_result(False)
    emit(result, args, log)
    return result


if __name__ == '__main__':
    main()
