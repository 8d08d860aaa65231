"""The CPU kernels behind the switch (resnet_backbone.cpu): each route computes what the
plain PyTorch network computes, runs only where meant, and the switch turns them all off."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from helpers import OpCounter, paired, randomize
from resnet_backbone import ResNetBackbone, cpu, set_cpu_kernels
from resnet_backbone.cpu.conv import conv2d, uses_gemm_weight_grad, weight_grad
from resnet_backbone.cpu.layout import CHUNK, _transposed_copy, fill_with_zero_border, to_nchw

CL = torch.channels_last
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def kernels_off():
    previous = set_cpu_kernels(False)
    yield
    set_cpu_kernels(previous)


def rel_diff(outs, refs):
    return max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(outs, refs))


# ----------------------------------------------------------------------------- the switch
def test_switch_and_environment_variable():
    assert cpu.enabled()  # the default
    assert set_cpu_kernels(False) is True and not cpu.enabled()
    assert not cpu.path_on('winograd')
    assert set_cpu_kernels(True) is False and cpu.path_on('winograd')
    with pytest.raises(TypeError, match='set_cpu_kernels takes True or False'):
        set_cpu_kernels('no')
    with cpu.paths_disabled('winograd'):
        assert not cpu.path_on('winograd') and cpu.path_on('gemm_weight_grad')
    assert cpu.path_on('winograd')
    with pytest.raises(ValueError, match="unknown CPU kernel route"):
        with cpu.paths_disabled('bogus'):
            pass
    probe = 'import resnet_backbone as r; print(r.cpu_kernels_enabled())'
    for value, expected in (('0', 'False'), ('off', 'False'), ('1', 'True')):
        out = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True,
                             env=dict(os.environ, RESNET_BACKBONE_CPU_KERNELS=value), cwd=ROOT)
        assert out.stdout.split()[-1:] == [expected], out.stderr[-500:]
    bad = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True,
                         env=dict(os.environ, RESNET_BACKBONE_CPU_KERNELS='maybe'), cwd=ROOT)
    assert bad.returncode != 0 and 'RESNET_BACKBONE_CPU_KERNELS' in bad.stderr
    # the BN-fold switch reads its variable the same way
    probe = 'import resnet_backbone.ops as o; print(o.fold_bn_enabled())'
    for value, expected in (('0', 'False'), ('on', 'True'), ('maybe', None)):
        out = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True,
                             env=dict(os.environ, RESNET_BACKBONE_FOLD_BN=value), cwd=ROOT)
        if expected is None:
            assert out.returncode != 0 and "RESNET_BACKBONE_FOLD_BN='maybe'" in out.stderr
        else:
            assert out.stdout.split()[-1:] == [expected], out.stderr[-500:]


def test_switched_off_the_network_is_plain_pytorch_in_nchw(kernels_off):
    model = randomize(ResNetBackbone(depth=50, base_channels=16, frozen_stages=1)).train()
    x = torch.randn(2, 3, 64, 64)
    with OpCounter() as ops:
        outs = model(x)
        sum(o.sum() for o in outs).backward()
    assert not ops.count('mkldnn') and not ops.count('mm')  # no oneDNN post-ops, no GEMMs
    assert ops.count('convolution') > 50
    assert model.conv1.weight.is_contiguous() and all(o.is_contiguous() for o in outs)


@pytest.mark.parametrize('train', [False, True])
def test_on_and_off_agree_on_a_whole_backbone(train):
    model = randomize(ResNetBackbone(depth=50, base_channels=32, frozen_stages=1))
    model.train(train)
    x = torch.randn(2, 3, 96, 128)
    results = []
    for on in (True, False):
        previous = set_cpu_kernels(on)
        try:
            model.zero_grad()
            with torch.set_grad_enabled(train):
                outs = model(x)
            if train:
                sum((o * o).mean() for o in outs).backward()
            results.append(([o.detach() for o in outs],
                            [p.grad.clone() for p in model.parameters() if p.grad is not None]))
        finally:
            set_cpu_kernels(previous)
    (on_outs, on_grads), (off_outs, off_grads) = results
    assert rel_diff(on_outs, off_outs) < 1e-4
    assert len(on_grads) == len(off_grads)
    for a, b in zip(on_grads, off_grads):
        assert (a - b).norm() <= 1e-3 * b.norm() + 1e-12


@pytest.mark.parametrize('case', ['nchw', 'float64', 'autocast', 'switch_off', 'conv_ws'])
def test_no_route_outside_float32_channels_last_eager(case):
    """conv_norm of the CPU kernels declines (None: the plain ops run) where no route is
    meant to apply."""
    from resnet_backbone.cpu.conv import conv_norm
    conv, x = _stage_conv(channels=32)
    norm = torch.nn.BatchNorm2d(32).eval()
    if case == 'nchw':
        x = x.detach().contiguous()
    elif case == 'float64':
        conv, x = conv.double(), x.detach().double()
    elif case == 'conv_ws':
        from mmcv.cnn import build_conv_layer
        conv = build_conv_layer(dict(type='ConvWS'), 32, 32, 3, padding=1)
    ctx = torch.autocast('cpu', dtype=torch.bfloat16) if case == 'autocast' else \
        cpu_off() if case == 'switch_off' else torch.enable_grad()
    from resnet_backbone import ops
    with ctx:
        params = ops.fold_conv_bn(conv, norm)
        if case == 'switch_off':
            plain = ops.conv_norm(x, conv, norm, relu=True)
            assert type(plain.grad_fn).__name__ == 'ReluBackward0'
        else:
            assert conv_norm(x, conv, norm, params, True, None) is None


def cpu_off():
    import contextlib

    @contextlib.contextmanager
    def off():
        previous = set_cpu_kernels(False)
        try:
            yield
        finally:
            set_cpu_kernels(previous)
    return off()


# ------------------------------------------------------------------- inference
def test_inference_never_writes_into_its_input_or_what_hooks_saw():
    model = randomize(ResNetBackbone(depth=18, base_channels=16, frozen_stages=4)).eval()
    x = torch.randn(1, 16, 16, 16).contiguous(memory_format=CL)
    kept = {}
    model.layer1[0].register_forward_hook(lambda m, a, out: kept.setdefault('out', out))
    model.layer2[1].register_forward_pre_hook(lambda m, a: kept.setdefault('in', a[0]))
    with torch.no_grad():
        before = x.clone()
        model.layer1[1](x)  # no downsample: the shortcut is x itself
        model.layer2(model.layer1(x))
        with cpu.paths_disabled('reuse'):  # what the hooks saw, computed apart
            want = {'out': model.layer1[0](x), 'in': model.layer2[0](model.layer1[1](
                model.layer1[0](x)))}
    assert torch.equal(x, before)
    assert len(kept) == 2
    for k, v in want.items():
        torch.testing.assert_close(kept[k], v, rtol=1e-6, atol=1e-6)


def _reused(fn):
    """(fn's result, how many convs wrote their residual sum into the map they added)."""
    with OpCounter() as ops:
        out = fn()
    return out, ops.exactly('mkldnn._convolution_pointwise_')


@pytest.mark.parametrize('depth', [18, 50])
def test_stages_write_residual_sums_into_their_own_dead_maps(depth):
    """reuse: in a no-grad stage the last conv of a block writes its sum into the shortcut
    map when the stage made it (a projection, or the previous block's output), never into
    the stage's input or a map given back; results equal the route switched off."""
    model = randomize(ResNetBackbone(depth=depth, base_channels=16, frozen_stages=4)).eval()
    x = torch.randn(2, 3, 64, 96)
    stage_in = torch.randn(2, 16, 16, 24).contiguous(memory_format=CL)  # the stem's width
    with torch.no_grad():
        kept = stage_in.clone()
        outs, on = _reused(lambda: model(x))
        first = [o.clone() for o in outs]
        stage_out, stage_on = _reused(lambda: model.layer1(stage_in))
        again = model(x)
        with cpu.paths_disabled('reuse'):
            off_outs, off = _reused(lambda: model(x))
            off_stage_out = model.layer1(stage_in)
    blocks = sum(len(getattr(model, f'layer{i}')) for i in range(1, 5))
    # every block but R-18's layer1.0 (its shortcut is the stage's input)
    assert on == blocks - (depth == 18) and off == 0
    assert stage_on == len(model.layer1) - (depth == 18)
    assert torch.equal(stage_in, kept)  # the stage's input is never written
    assert all(torch.equal(a, b) for a, b in zip(outs, first))  # not overwritten later
    assert rel_diff(again, first) == 0
    assert rel_diff(outs, off_outs) < 1e-5 and rel_diff([stage_out], [off_stage_out]) < 1e-5


def test_no_map_reuse_with_gradients_hooks_or_the_fold_off():
    from resnet_backbone import ops
    model = randomize(ResNetBackbone(depth=50, base_channels=16, frozen_stages=4)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert _reused(lambda: model(x))[1] > 0
        previous = ops.set_fold_bn(False)
        try:
            assert _reused(lambda: model(x))[1] == 0
        finally:
            ops.set_fold_bn(previous)
        blocks = sum(len(getattr(model, f'layer{i}')) for i in range(1, 5))
        handle = model.layer3[2].bn1.register_forward_hook(lambda *a: None)
        assert _reused(lambda: model(x))[1] == blocks - len(model.layer3)  # a hook could keep
        handle.remove()
    assert _reused(lambda: model(x))[1] == 0  # grad mode on: nothing is reused


def test_a_stage_run_inside_another_stages_scope_reuses_nothing():
    """A stage called within another's scope (e.g. from a plugin) must not write into the
    outer stage's maps: the outer block may still read them."""
    from resnet_backbone import ops
    model = randomize(ResNetBackbone(depth=18, base_channels=16, frozen_stages=4)).eval()
    x = torch.randn(1, 16, 16, 16).contiguous(memory_format=CL)
    conv, norm = model.layer1[0].conv1, model.layer1[0].bn1
    with torch.no_grad(), ops.reusing_maps(model.layer2):
        outer = ops.conv_norm(x, conv, norm, relu=True)  # a map of the outer scope
        kept = outer.clone()
        model.layer1(outer)  # layer1.0 has no projection: its shortcut is ``outer``
    assert torch.equal(outer, kept)


# ------------------------------------------------------- convs with gradients
def _stage_conv(channels=128, size=(24, 20), kernel=3, stride=1):
    conv = torch.nn.Conv2d(channels, channels, kernel, stride, kernel // 2, bias=True)
    conv.weight.data = (torch.randn_like(conv.weight) * 0.05).contiguous(memory_format=CL)
    x = torch.randn(2, channels, *size).contiguous(memory_format=CL).requires_grad_()
    return conv, x


def _check_grads_float64(out, inputs, call):
    """Gradients of a CPU route against autograd through the plain ops in float64."""
    grad = torch.randn_like(out)
    out.backward(grad)
    ref_inputs = [t.detach().double().requires_grad_(t.requires_grad) if t is not None else None
                  for t in inputs]
    ref = call(*ref_inputs)
    ref.backward(grad.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(inputs, ref_inputs):
        if got is not None and got.requires_grad:
            torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('stride,k,relu,with_add', [
    (1, 1, True, True),    # a block's last conv: + shortcut, ReLU
    (1, 1, True, False),   # conv1
    (2, 3, True, False),   # a stage's strided conv2 (GEMM weight gradient too)
    (1, 1, False, True),   # a sum without ReLU
])
def test_train_post_ops_give_the_separate_ops_gradients(stride, k, relu, with_add):
    conv, x = _stage_conv(kernel=k, stride=stride)
    weight, bias = conv.weight, conv.bias
    out_size = [(s + 2 * (k // 2) - k) // stride + 1 for s in x.shape[2:]]
    add = torch.randn(2, 128, *out_size).contiguous(memory_format=CL).requires_grad_() \
        if with_add else None
    out = conv2d(x, weight, bias, conv, relu=relu, add=add)
    assert type(out.grad_fn).__name__ == '_CPUConv2dBackward' and out.grad_fn.relu == relu

    def separate(x, weight, bias, add=None):
        y = F.conv2d(x, weight, bias, stride, k // 2)
        y = y + add if add is not None else y
        return F.relu(y) if relu else y
    with torch.no_grad():
        assert (out - separate(x, weight, bias, add)).abs().max() < 1e-5
    _check_grads_float64(out, (x, weight, bias, add), separate)


@pytest.mark.parametrize('case', ['nchw_add', 'no_grad', 'float64', 'nothing_to_add',
                                  'route_off'])
def test_train_post_ops_stay_out_elsewhere(case):
    conv, x = _stage_conv(channels=32)
    weight, bias = conv.weight, conv.bias
    add = torch.randn(2, 32, 24, 20).contiguous(memory_format=CL)
    relu = True
    if case == 'nchw_add':
        add = add.contiguous()
    elif case == 'float64':
        x, weight, bias, add = (t.detach().double().requires_grad_() for t in
                                (x, weight, bias, add))
    elif case == 'nothing_to_add':
        add, relu = None, False
    ctx = torch.no_grad() if case == 'no_grad' else \
        cpu.paths_disabled('train_post_ops') if case == 'route_off' else torch.enable_grad()
    with ctx:
        assert conv2d(x, weight, bias, conv, relu=relu, add=add) is None


# ------------------------------------------------------------- GEMM weight gradient
@pytest.mark.parametrize('n,c_in,c_out,h,w,k,stride,pad', [
    (1, 8, 4, 16, 16, 3, 2, 1),     # ResNet's stride-2 3x3
    (2, 5, 3, 17, 13, 3, 2, 1),     # odd sizes: the last phase row/column is short
    (1, 4, 6, 15, 11, 3, 3, 1),     # stride 3: nine phases
    (2, 3, 5, 12, 18, 5, 2, 2),     # 5x5, taps two phase rows apart
    (1, 6, 2, 9, 10, 3, 2, 0),      # no padding
    (1, 4, 4, 8, 8, 1, 2, 0),       # 1x1 strided (caffe-style downsample)
    (1, 3, 4, 21, 14, 7, 2, 3),     # the stem's 7x7
])
def test_weight_grad_matches_autograd_float64(n, c_in, c_out, h, w, k, stride, pad):
    x = torch.randn(n, c_in, h, w, dtype=torch.float64).contiguous(memory_format=CL)
    weight = torch.randn(c_out, c_in, k, k, dtype=torch.float64, requires_grad=True)
    out = F.conv2d(x, weight, None, stride, pad)
    grad = torch.randn_like(out)
    out.backward(grad)
    ours = weight_grad(grad, x, weight.shape, (stride, stride), (pad, pad))
    assert ours.shape == weight.shape
    torch.testing.assert_close(ours, weight.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('top,left,rows,cols', [(0, 0, 5, 6), (1, 1, 4, 5), (0, 1, 5, 4),
                                                (1, 0, 3, 6), (2, 2, 3, 3)])
def test_fill_with_zero_border_leaves_nothing_of_the_old_buffer(top, left, rows, cols):
    """The weight-gradient buffers are new_empty: every element but ``src`` must be 0."""
    dst = torch.full((2, 5, 6, 3), float('nan'))
    src = torch.randn(2, rows, cols, 3)
    fill_with_zero_border(dst, src, top, left)
    want = torch.zeros(2, 5, 6, 3)
    want[:, top:top + rows, left:left + cols] = src
    assert torch.equal(dst, want)


def test_strided_conv_takes_the_gemm_weight_gradient():
    conv, x = _stage_conv(stride=2)
    geometry = (conv.stride, conv.padding, conv.dilation, conv.groups)
    assert uses_gemm_weight_grad(x, conv.weight, *geometry)
    out = conv2d(x, conv.weight, conv.bias, conv)
    assert type(out.grad_fn).__name__ == '_CPUConv2dBackward' and out.grad_fn.gemm
    _check_grads_float64(out, (x, conv.weight, conv.bias), lambda *t: F.conv2d(*t, 2, 1))
    with cpu.paths_disabled('gemm_weight_grad'):
        assert not uses_gemm_weight_grad(x, conv.weight, *geometry)


@pytest.mark.parametrize('case', ['stride1', 'few_channels', 'groups', 'frozen_weight'])
def test_gemm_weight_grad_only_for_strided_wide_convs(case):
    conv, x = _stage_conv(channels=64 if case == 'few_channels' else 128,
                          stride=1 if case == 'stride1' else 2)
    weight, groups = conv.weight, 1
    if case == 'groups':
        weight, groups = weight[:, :64].detach().requires_grad_(), 2
    elif case == 'frozen_weight':
        weight = weight.detach()
    assert not uses_gemm_weight_grad(x, weight, conv.stride, conv.padding, conv.dilation, groups)


def test_resnet50_train_step_uses_it_with_mmdet_gradients():
    """Full-width R-50 in float32 (where the route applies): mmdet's parameter gradients."""
    ref, ours = paired(dict(type='ResNet', depth=50, frozen_stages=1, norm_eval=True))
    x = torch.randn(2, 3, 96, 128)
    taken = []
    for name, m in (('mmdet', ref), ('ours', ours)):
        m.train()
        outs = m(x)
        if name == 'ours':
            node, seen = [o.grad_fn for o in outs if o.grad_fn is not None], set()
            while node:
                fn = node.pop()
                if fn is None or fn in seen:
                    continue
                seen.add(fn)
                taken += [fn] if getattr(fn, 'gemm', False) else []
                node += [f for f, _ in fn.next_functions]
        sum((o * o).mean() for o in outs).backward()
    assert len(taken) == 3  # layer2.0, layer3.0 and layer4.0 conv2
    # Where float32 rounding moves a pre-activation across zero, that position's gradient
    # changes by its whole value (a ReLU mask flip): the parameters behind it then differ
    # by up to ~5e-4 norm-wise, all together by ~6e-5. A wrong term would be O(1).
    grads = dict(ours.named_parameters())
    num = den = 0.0
    for name, p in ref.named_parameters():
        if p.grad is not None:
            got = grads[name].grad
            assert (got - p.grad).norm() <= 2e-3 * p.grad.norm() + 1e-12, name
            num += (got - p.grad).square().sum().item()
            den += p.grad.square().sum().item()
    assert (num / den) ** 0.5 <= 1e-4


# ------------------------------------------------------------------- layouts
@pytest.mark.parametrize('batch', [1, 3])
def test_to_nchw_copies_and_sends_channels_last_gradients_back(batch):
    x = torch.randn(batch, 6, 5, 7, dtype=torch.double)
    x = x.contiguous(memory_format=CL).requires_grad_()
    y = to_nchw(x)
    assert y.is_contiguous() and torch.equal(y, x)
    grad = torch.randn_like(y)
    y.backward(grad)
    assert torch.equal(x.grad, grad) and x.grad.is_contiguous(memory_format=CL)
    assert torch.autograd.gradcheck(to_nchw, (x.detach().requires_grad_(),))
    assert to_nchw(torch.randn(2, 3, 4, 4)) is None  # not channels_last: not this route's


@pytest.mark.parametrize('shape', [(2, 8, 48, 50), (1, 600, 46, 47), (1, 3, 4, 5)],
                         ids=['blocks', 'wide', 'small'])
def test_transposed_copy_in_blocks_is_exact(shape):
    """Both directions, with and without position blocks (a partial last block too)."""
    assert shape[2] * shape[3] % CHUNK or shape[2] * shape[3] < 4 * CHUNK
    x = torch.randn(shape)
    for src, fmt in ((x.contiguous(memory_format=CL), torch.contiguous_format),
                     (x, CL)):
        out = _transposed_copy(src, fmt)
        assert torch.equal(out, x) and out.is_contiguous(memory_format=fmt)



def test_bench_conv_wgrad_tool_tiny():
    """tools/bench_conv_wgrad.py runs and reports every conv with the route it takes."""
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    import bench_conv_wgrad
    rows = bench_conv_wgrad.main(['--size', '64x96', '--repeats', '1'])
    assert [r[0] for r in rows] == [c[0] for c in bench_conv_wgrad.CONVS]
    assert all(r[1] > 0 and r[2] > 0 for r in rows)
    assert [r[3] for r in rows] == ['GEMM'] * 3 + ['oneDNN'] + ['GEMM'] * 2
