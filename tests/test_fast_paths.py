"""BN folding, fuse(), channels_last, torch.compile and with_cp spans: exact within float
tolerance. (The CPU kernels behind the switch: test_cpu_kernels.py.)"""
import copy

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from helpers import OpCounter, max_diff, paired, randomize
from resnet_backbone import ResNetBackbone
from resnet_backbone.ops import conv_norm


def rel_diff(outs, refs):
    return max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(outs, refs))


def test_eval_bn_is_folded_into_conv():
    """No BatchNorm runs in eval mode: every BN is folded into its conv."""
    model = randomize(ResNetBackbone(depth=50, base_channels=16)).eval()
    with OpCounter() as ops:
        model(torch.randn(1, 3, 64, 64))
    assert ops.count('conv') >= 53 and not ops.count('norm')


def test_modules_with_hooks_are_called_as_they_are():
    """A forward hook (a feature tap) or pre-hook (one that edits the input or weight, as
    pruning does) on a conv or BN runs: that conv and BN are not fused; the rest still is."""
    model = randomize(ResNetBackbone(depth=18, base_channels=16)).eval()
    x = torch.randn(1, 3, 64, 64)
    taps = []
    model.layer2[0].bn1.register_forward_hook(lambda m, i, o: taps.append(o))
    model.layer3[1].conv2.register_forward_pre_hook(lambda m, args: (args[0] * 0.5, ))
    with OpCounter() as ops:
        outs = model(x)
    assert len(taps) == 1 and ops.count('norm') == 2
    from resnet_backbone import set_cpu_kernels, set_fold_bn
    previous = set_cpu_kernels(False), set_fold_bn(False)
    try:
        plain = model(x)
    finally:
        set_cpu_kernels(previous[0])
        set_fold_bn(previous[1])
    assert torch.allclose(taps[0], taps[1], rtol=1e-5, atol=1e-5 * taps[1].abs().max().item())
    assert rel_diff(outs, plain) < 1e-5


def test_frozen_stages_store_no_activations_and_skip_bn():
    model = randomize(ResNetBackbone(depth=18, frozen_stages=1, norm_eval=False)).train()
    with OpCounter() as ops:
        out = model(torch.randn(2, 3, 64, 64))
    # 20 BNs: the stem's and layer1's 5 are folded, the other 15 use batch statistics
    assert ops.exactly('aten.native_batch_norm') == 15
    stem_and_c2 = model.layer1(model.maxpool(torch.relu(model.bn1(model.conv1(
        torch.randn(1, 3, 32, 32))))))
    assert stem_and_c2.grad_fn is None  # frozen part records no graph
    assert out[0].grad_fn is None and out[1].grad_fn is not None


def test_training_folds_every_running_statistics_bn():
    """With norm_eval every BN uses running statistics: in training too, none runs (each is
    folded into its conv) and the gradients are MMDetection's; the switch turns it off."""
    from resnet_backbone import set_fold_bn
    cfg = dict(type='ResNet', depth=50, base_channels=16, frozen_stages=1, norm_eval=True)
    ref, ours = paired(cfg)
    ref, ours = ref.double(), ours.double()
    x = torch.randn(2, 3, 96, 64, dtype=torch.float64)
    ref.train()
    sum((o * o).mean() for o in ref(x)).backward()
    with OpCounter() as ops:
        sum((o * o).mean() for o in ours.train()(x)).backward()
    assert ops.count('conv') >= 53 and not ops.count('norm')
    grads = dict(ours.named_parameters())
    for name, p in ref.named_parameters():
        if p.grad is not None:
            assert torch.allclose(grads[name].grad, p.grad, rtol=1e-7, atol=1e-9), name
    previous = set_fold_bn(False)
    try:
        with OpCounter() as ops:
            ours(x)
    finally:
        set_fold_bn(previous)
    assert ops.exactly('aten.native_batch_norm', 'aten._native_batch_norm_legit_no_training') \
        == sum(isinstance(m, _BatchNorm) for m in ours.modules())


@pytest.mark.parametrize('deep_stem', [False, True])
def test_fuse_matches_and_refuses_training(deep_stem):
    model = randomize(ResNetBackbone(depth=50, base_channels=16, deep_stem=deep_stem,
                                     avg_down=deep_stem)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        fused = copy.deepcopy(model).fuse()
        out = fused(x)
    assert not any(isinstance(m, _BatchNorm) for m in fused.modules())
    assert rel_diff(out, ref) < 1e-4
    with pytest.raises(RuntimeError, match='fused'):
        fused.train()


def test_channels_last_end_to_end():
    model = randomize(ResNetBackbone(depth=50, base_channels=16)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        out = cl(x.contiguous(memory_format=torch.channels_last))
    assert all(o.is_contiguous(memory_format=torch.channels_last) for o in out)
    assert max_diff(out, ref) < 1e-4


def test_conv_norm_falls_back_for_training_bn():
    conv = torch.nn.Conv2d(4, 4, 3, padding=1, bias=False)
    bn = torch.nn.BatchNorm2d(4).train()
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(conv_norm(x, conv, bn), bn(conv(x)))


@pytest.mark.parametrize('kw', [dict(), dict(with_cp=True), dict(frozen_stages=2)],
                         ids=['plain', 'with_cp', 'frozen'])
def test_compile_fullgraph(kw):
    torch._dynamo.reset()
    model = randomize(ResNetBackbone(depth=18, base_channels=8, **kw)).train()
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
    x = torch.randn(2, 3, 64, 64)
    outs = compiled(x)
    sum(o.mean() for o in outs).backward()
    ref = model(x)
    assert max_diff(outs, ref) < 1e-5


def test_compile_fullgraph_inference():
    """No graph break in a no-grad eval forward either (the stage's reuse scope)."""
    torch._dynamo.reset()
    model = randomize(ResNetBackbone(depth=18, base_channels=8)).eval()
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        outs, ref = compiled(x), model(x)
    assert max_diff(outs, ref) < 1e-5


def test_weight_layout_follows_setting():
    cl = torch.channels_last
    auto = ResNetBackbone(depth=18)  # CPU: oneDNN prefers channels_last
    assert auto.layer1[0].conv1.weight.is_contiguous(memory_format=cl)
    off = ResNetBackbone(depth=18, channels_last=False)
    assert off.layer1[0].conv1.weight.is_contiguous()
    off.load_state_dict(auto.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs = auto.eval()(x)
        assert max_diff(outs, off.eval()(x)) < 1e-5
    assert all(o.is_contiguous() for o in outs)  # NCHW in, NCHW out


def _stored_bytes(model, x):
    """Bytes of the distinct tensors autograd stores during the forward."""
    stored = {}

    def pack(t):
        stored[t.data_ptr()] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(stored.values())


def test_with_cp_checkpoints_blocks_in_pairs(monkeypatch):
    """A checkpoint spans two blocks: the second block's input is not stored, and the
    gradients are those of the step without with_cp."""
    import resnet_backbone.stage as stage
    model = randomize(ResNetBackbone(depth=50, base_channels=16, with_cp=True,
                                     frozen_stages=-1)).train()
    x = torch.randn(1, 3, 96, 64)
    second_inputs = []  # inputs of blocks 1, 3, 5 of each stage (stages of 3, 4, 6, 3)
    hooks = [layer[k].register_forward_pre_hook(
        lambda m, a: second_inputs.append(a[0].numel() * a[0].element_size()))
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4)
        for k in range(1, len(layer), 2)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert len(second_inputs) == 1 + 2 + 3 + 1
    paired_bytes = _stored_bytes(model, x)
    monkeypatch.setattr(stage, 'CHECKPOINT_SPAN', 1)
    assert _stored_bytes(model, x) - paired_bytes == sum(second_inputs)
    monkeypatch.undo()

    plain = copy.deepcopy(model)
    for m in plain.modules():
        m.with_cp = False
    grads = []
    for m in (model, plain):
        sum((o * o).mean() for o in m(x)).backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    for name, g in grads[1].items():
        assert torch.allclose(grads[0][name], g, rtol=1e-4, atol=1e-6), name


def test_with_cp_runs_every_conv_channels_last_on_cpu():
    """The stage inputs a with_cp step shares with its NCHW outputs are converted once per
    block, so no conv (forward, recompute or backward) sees a mixed layout."""
    from torch.utils._python_dispatch import TorchDispatchMode
    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.convolution.default,
                        torch.ops.aten.convolution_backward.default):
                x = args[1] if func is torch.ops.aten.convolution_backward.default else args[0]
                seen.append(x.shape[1] == 3 or x.is_contiguous(memory_format=torch.channels_last))
            return func(*args, **(kwargs or {}))

    model = randomize(ResNetBackbone(depth=50, base_channels=16, with_cp=True)).train()
    with Record():
        outs = model(torch.randn(1, 3, 64, 64))
        sum(o.sum() for o in outs).backward()
    assert len(seen) > 50 and all(seen)
