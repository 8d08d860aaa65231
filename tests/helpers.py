"""Shared test helpers: reference models, randomisation, comparisons."""
import copy
import json

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """Counts the aten/mkldnn ops a block of code runs, by name."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))

    def count(self, fragment):
        return sum(fragment in op for op in self.ops)

    def exactly(self, *names):
        return sum(op in names for op in self.ops)


@torch.no_grad()
def randomize(model, seed=0, residual_gain=0.3):
    """Random weights and BN statistics with activations of realistic size.

    The last norm of every residual branch gets a small gamma (trained
    ResNets have small ones; zero-init starts them at 0), so the residual
    stream stays O(1-10) even at depth 101/152.
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() > 1:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 / fan_in) ** 0.5)
        else:
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g) if name.endswith('weight')
                    else 0.1 * torch.randn(p.shape, generator=g))
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    for m in model.modules():
        names = {'Bottleneck': ('norm3', 'bn3'), 'BasicBlock': ('norm2', 'bn2')}.get(
            type(m).__name__, ())
        last = next((getattr(m, n) for n in names if hasattr(m, n)), None)
        if last is not None and getattr(last, 'weight', None) is not None:
            last.weight.mul_(residual_gain)
    return model


def plain(obj):
    """Config values as plain Python (tuples as lists) for comparison."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def mmdet_backbone(cfg):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    return MODELS.build(copy.deepcopy(cfg))


def ours_from_mmdet_cfg(cfg):
    """Our backbone from an mmdet backbone dict with only ``type`` changed."""
    import resnet_backbone  # noqa: F401  (registers the types)
    from mmdet.registry import MODELS
    cfg = copy.deepcopy(cfg)
    cfg['type'] = {'ResNet': 'ResNetBackbone', 'ResNetV1d': 'ResNetV1dBackbone',
                   'ResNeXt': 'ResNeXtBackbone'}[cfg['type']]
    return MODELS.build(cfg)


def paired(cfg, seed=0):
    """(mmdet model, our model) with identical weights, ours loaded strictly."""
    ref = randomize(mmdet_backbone(cfg), seed)
    ours = ours_from_mmdet_cfg(cfg)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def max_diff(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def assert_parity(ref, ours, x, train_modes=(False, True), tol=1e-5):
    """Two backbones agree: float32 outputs, float64 outputs and input gradients.

    float32: within ``tol`` times the output's magnitude (absolute when the
    outputs are <= 1). Folded BN and channels_last kernels round differently,
    a few ulps per layer, and normalisation by sample statistics (train-mode
    BN, GN) on tiny test maps amplifies that.
    float64: outputs and input gradients within ``tol`` absolute. Gradients
    are compared only there: ReLU and max-pool route gradients by sign and
    argmax, and float32 rounding flips the rare near-tie, moving a whole
    entry; in float64 no tie is that close, so any real difference shows.
    """
    ref64, ours64 = copy.deepcopy(ref).double(), copy.deepcopy(ours).double()
    for train in train_modes:
        ref_out, _ = run_with_grad(ref, x, train)
        out, _ = run_with_grad(ours, x, train)
        assert len(out) == len(ref_out)
        for a, b in zip(out, ref_out):
            assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
        diff = max_diff(out, ref_out)
        scale = max(1.0, max(o.abs().max().item() for o in ref_out))
        assert diff <= tol * scale, f'float32 outputs differ by {diff:.2e} (train={train})'
        ref_out64, ref_grad = run_with_grad(ref64, x.double(), train)
        out64, grad = run_with_grad(ours64, x.double(), train)
        diff64 = max_diff(out64, ref_out64)
        assert diff64 <= tol, f'float64 outputs differ by {diff64:.2e} (train={train})'
        gdiff = (grad - ref_grad).abs().max().item()
        assert gdiff <= tol, f'input gradients differ by {gdiff:.2e} (train={train})'
    return ref, ours


def run_with_grad(model, x, train):
    model.train(train)
    x = x.clone().requires_grad_(True)
    outs = model(x)
    loss = sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs)
    loss.backward()
    return [o.detach() for o in outs], x.grad


def load_json(path):
    """The JSON document at ``path`` (file closed again)."""
    with open(path) as f:
        return json.load(f)
