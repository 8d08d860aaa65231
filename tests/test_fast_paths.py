"""Fast paths: BN folding, fuse(), channels_last and torch.compile, all exact within float tolerance."""
import copy

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from helpers import max_diff, paired, randomize
from resnet_backbone import ResNetBackbone
from resnet_backbone.fusion import conv_norm


def rel_diff(outs, refs):
    return max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(outs, refs))


def test_eval_bn_is_folded_into_conv():
    """No BatchNorm runs in eval mode: every BN is folded into its conv."""
    model = randomize(ResNetBackbone(depth=50, base_channels=16)).eval()
    called = []
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.register_forward_hook(lambda *a: called.append(1))
    model(torch.randn(1, 3, 64, 64))
    assert not called


def test_frozen_stages_store_no_activations_and_skip_bn():
    model = randomize(ResNetBackbone(depth=18, frozen_stages=1, norm_eval=False)).train()
    bn_calls = []
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm):
            m.register_forward_hook(lambda mod, i, o, n=name: bn_calls.append(n))
    out = model(torch.randn(2, 3, 64, 64))
    assert bn_calls and not any(n.startswith(('bn1', 'layer1.')) for n in bn_calls)
    stem_and_c2 = model.layer1(model.maxpool(torch.relu(model.bn1(model.conv1(
        torch.randn(1, 3, 32, 32))))))
    assert stem_and_c2.grad_fn is None  # frozen part records no graph
    assert out[0].grad_fn is None and out[1].grad_fn is not None


def test_norm_eval_training_folds_with_same_gradients():
    """Train step with norm_eval: folded BN gives mmdet's parameter gradients."""
    cfg = dict(type='ResNet', depth=50, base_channels=16, frozen_stages=1, norm_eval=True)
    ref, ours = paired(cfg)
    ref, ours = ref.double(), ours.double()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    for m in (ref, ours):
        m.train()
        sum((o * o).mean() for o in m(x)).backward()
    grads = dict(ours.named_parameters())
    for name, p in ref.named_parameters():
        if p.grad is not None:
            assert torch.allclose(grads[name].grad, p.grad, rtol=1e-7, atol=1e-9), name


def test_training_folds_bn_only_where_the_weight_is_the_smaller_side():
    """In training a BN is folded into its conv where the conv's weight is smaller than
    its output map, and runs on the output where the weight is larger (there it costs
    less); frozen stages and eval always fold. Either way mmdet's gradients."""
    cfg = dict(type='ResNet', depth=50, frozen_stages=1, norm_eval=True)
    ref, ours = paired(cfg)
    ref, ours = ref.double(), ours.double()
    called = set()
    for name, m in ours.named_modules():
        if isinstance(m, _BatchNorm):
            m.register_forward_hook(lambda *a, n=name: called.add(n))
    x = torch.randn(2, 3, 256, 320, dtype=torch.float64)
    for m in (ref, ours):
        m.train()
        sum((o * o).mean() for o in m(x)).backward()
    # layer4 at 2x8x10: every weight is larger than its output; layer2 at 2x32x40: none is
    assert {n for n in called if n.startswith('layer4.')} == {
        f'layer4.{i}.bn{k}' for i in range(3) for k in (1, 2, 3)} | {'layer4.0.downsample.1'}
    assert not any(n.startswith(('bn1', 'layer1.', 'layer2.')) for n in called)
    grads = dict(ours.named_parameters())
    for name, p in ref.named_parameters():
        if p.grad is not None:
            assert torch.allclose(grads[name].grad, p.grad, rtol=1e-7, atol=1e-9), name
    called.clear()
    ours.eval()
    ours(x)
    assert not called


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


def _count_pointwise_convs(monkeypatch):
    """Record (relu, add, add_in_place) of each oneDNN post-op conv."""
    import resnet_backbone.fusion as fusion
    calls, run = [], fusion.pointwise_conv

    def record(x, weight, bias, conv, relu, add, add_in_place):
        calls.append((relu, add is not None, add_in_place))
        return run(x, weight, bias, conv, relu, add, add_in_place)

    monkeypatch.setattr(fusion, 'pointwise_conv', record)
    return calls


def test_no_grad_convs_fuse_bias_sum_and_relu(monkeypatch):
    """Without gradients every conv runs with its post-ops in oneDNN; each block's sum is
    written into its scratch shortcut (a downsample output or the previous block's
    output), and the result equals the separate-op path."""
    import resnet_backbone.fusion as fusion
    model = randomize(ResNetBackbone(depth=50, base_channels=16)).eval()
    x = torch.randn(1, 3, 64, 96)
    calls = _count_pointwise_convs(monkeypatch)
    with torch.no_grad():
        fused = model(x)
    assert calls.count((True, True, True)) == 3 + 4 + 6 + 3  # every block, in place
    assert calls.count((True, False, False)) == 1 + 2 * 16  # stem, conv1 and conv2
    assert calls.count((False, False, False)) == 4  # downsample convs
    monkeypatch.setattr(fusion, 'pointwise_conv_applies', lambda *args: False)
    with torch.no_grad():
        assert rel_diff(fused, model(x)) < 1e-5
    frozen = randomize(ResNetBackbone(depth=50, base_channels=16, frozen_stages=1)).train()
    monkeypatch.undo()
    calls = _count_pointwise_convs(monkeypatch)
    frozen(x)  # grad mode: only the frozen stem and layer1 fuse
    assert calls.count((True, True, True)) == 3 and len(calls) == 1 + 3 * 3 + 1


@pytest.mark.parametrize('size,batch,frozen', [((160, 224), 1, 1), ((163, 229), 2, 1),
                                                ((161, 231), 1, -1), ((166, 230), 1, 0)])
def test_banded_stem_equals_stem_then_pool(monkeypatch, size, batch, frozen):
    """The frozen stem runs in bands of pooled rows (odd sizes: short last bands, the
    padding rows at both ends) with the result of the whole-map stem + max-pool;
    without it (a trainable stem, a max-pool hook) the modules run as they are."""
    import resnet_backbone.stem as stem
    model = randomize(ResNetBackbone(depth=18, frozen_stages=frozen, norm_eval=True)).train()
    x = torch.randn(batch, 3, *size)
    bands = []
    run = stem._banded_stem_and_pool
    monkeypatch.setattr(stem, '_banded_stem_and_pool',
                        lambda *args: bands.append(1) or run(*args))
    monkeypatch.setattr(stem, 'POOL_BAND_ROWS', 8)
    banded = model(x)
    assert bool(bands) == (frozen >= 0)
    monkeypatch.setattr(stem, 'POOL_BAND_ROWS', 10 ** 6)
    whole = model(x)
    assert max_diff(banded, whole) <= 1e-6 * max(o.abs().max().item() for o in whole)
    seen = []
    model.maxpool.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    bands.clear()
    monkeypatch.setattr(stem, 'POOL_BAND_ROWS', 8)
    with torch.no_grad():
        model(x)
    assert not bands and seen == [(batch, 64, (size[0] + 1) // 2, (size[1] + 1) // 2)]


def test_no_grad_sum_keeps_maps_that_others_hold():
    """The in-place sum never overwrites a map a caller or a hook holds: a block's own
    input, a block output seen by a forward hook, or a block input seen by a pre-hook."""
    model = randomize(ResNetBackbone(depth=18, base_channels=16, frozen_stages=4)).eval()
    x = torch.randn(1, 16, 16, 16).contiguous(memory_format=torch.channels_last)
    kept = {}
    model.layer1[0].register_forward_hook(lambda m, a, out: kept.setdefault('out', out))
    model.layer2[1].register_forward_pre_hook(lambda m, a: kept.setdefault('in', a[0]))
    with torch.no_grad():
        before = x.clone()
        model.layer1[1](x)  # no downsample: the shortcut is x itself
        assert torch.equal(x, before)
        model.layer2(model.layer1(x))
        copies = {k: v.clone() for k, v in kept.items()}
        model.layer2(model.layer1(x))
    assert torch.equal(x, before)
    assert len(kept) == 2 and all(torch.equal(kept[k], v) for k, v in copies.items())


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


@pytest.mark.parametrize('batch', [1, 3])
def test_to_nchw_copies_and_sends_channels_last_gradients_back(batch):
    from resnet_backbone.layout import to_nchw
    x = torch.randn(batch, 6, 5, 7, dtype=torch.double)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    y = to_nchw(x)
    assert y.is_contiguous() and torch.equal(y, x)
    grad = torch.randn_like(y)
    y.backward(grad)
    assert torch.equal(x.grad, grad)
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    assert torch.autograd.gradcheck(to_nchw, (x.detach().requires_grad_(),))
    plain = torch.randn(2, 3, 4, 4)
    assert to_nchw(plain) is plain


@pytest.mark.parametrize('shape', [(2, 8, 48, 50), (1, 600, 46, 47), (1, 3, 4, 5)],
                         ids=['blocks', 'wide', 'small'])
def test_transposed_copy_in_blocks_is_exact(shape):
    """Both directions, with and without position blocks (a partial last block too)."""
    from resnet_backbone.layout import CHUNK, _transposed_copy
    assert shape[2] * shape[3] % CHUNK or shape[2] * shape[3] < 4 * CHUNK
    x = torch.randn(shape)
    for src, fmt in ((x.contiguous(memory_format=torch.channels_last), torch.contiguous_format),
                     (x, torch.channels_last)):
        out = _transposed_copy(src, fmt)
        assert torch.equal(out, x) and out.is_contiguous(memory_format=fmt)


def test_transposed_copy_is_one_copy_per_image_under_compile(monkeypatch):
    """Traced by torch.compile, the hand-back is one copy per image (position blocks made
    inductor's graph slower and its peak memory 40% higher)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from resnet_backbone.layout import CHUNK, _transposed_copy
    copies = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.copy_.default:
                copies.append(1)
            return func(*args, **(kwargs or {}))

    x = torch.randn(2, 8, 4, 4 * CHUNK).contiguous(memory_format=torch.channels_last)
    for compiling, expected in ((False, 2 * 4 * 4), (True, 2)):
        monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: compiling)
        copies.clear()
        with Count():
            out = _transposed_copy(x, torch.contiguous_format)
        assert len(copies) == expected and torch.equal(out, x)


def test_with_cp_holds_each_returned_map_once():
    """A checkpointed stage stores its input; on CPU (channels_last inside, NCHW out)
    that is the NCHW map already returned, not a second channels_last copy of it."""
    model = randomize(ResNetBackbone(depth=18, with_cp=True, frozen_stages=-1)).train()
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outs = model(torch.randn(1, 3, 64, 64))
    ptrs = {t.data_ptr() for t in saved}
    for out in outs[:-1]:  # C2-C4 each feed a checkpointed next stage
        assert out.is_contiguous() and out.data_ptr() in ptrs
        twins = [t for t in saved if t.shape == out.shape and t.dtype == out.dtype
                 and t.data_ptr() != out.data_ptr() and torch.equal(t, out)]
        assert not twins, f'a second copy of the {tuple(out.shape)} output is held'


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
