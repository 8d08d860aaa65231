"""The models compared: MMDetection's ResNet, ours, torchvision's trunk; shared weights."""
import math

import torch
from torch import nn

from .common import SEED, _once, mmcv_ops_status, mmdet_resnet, ours_class

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


def weighted_loss(outs, weights):
    return sum((o.to(w.dtype) * w).sum() for o, w in zip(outs, weights))


def loss_weights(shapes, device, dtype=torch.float32):
    """Fixed positive weights of each output (random signs would make the gradients
    sums of cancelling terms, whose float32 rounding then dominates any comparison)."""
    g = torch.Generator().manual_seed(SEED + 1)
    return [(torch.randn(s, generator=g, dtype=torch.float64).abs() / math.sqrt(math.prod(s)))
            .to(device=device, dtype=dtype) for s in shapes]
