"""frozen_stages and norm_eval: frozen means frozen, after any train() call."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.modules.batchnorm import _BatchNorm

from helpers import randomize
from resnet_backbone import ResNetBackbone


def frozen_and_free(model):
    frozen, free = [], []
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm):
            top = name.split('.')[0]
            stage = 0 if top in ('bn1', 'stem') else int(top[5:]) if top.startswith('layer') \
                else None
            (frozen if stage is not None and stage <= model.frozen_stages else free).append(
                (name, m))
    return frozen, free


@pytest.mark.parametrize('frozen_stages', [0, 1, 2, 4])
@pytest.mark.parametrize('deep_stem', [False, True])
def test_frozen_parts_stay_frozen(frozen_stages, deep_stem):
    model = randomize(ResNetBackbone(depth=18, frozen_stages=frozen_stages, norm_eval=False,
                                     deep_stem=deep_stem))
    assert model.train() is model
    assert model.eval() is model
    model.train()
    frozen, free = frozen_and_free(model)
    assert frozen and all(not m.training for _, m in frozen)
    assert all(m.training for _, m in free)
    for name, p in model.named_parameters():
        top = name.split('.')[0]
        is_frozen = top in ('conv1', 'bn1', 'stem') or (
            top.startswith('layer') and int(top[5:]) <= frozen_stages)
        assert p.requires_grad == (not is_frozen), name

    before = {n: m.running_mean.clone() for n, m in frozen + free}
    params_before = {n: p.clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad] or
                          [torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9,
                          weight_decay=1e-2)
    for _ in range(2):
        opt.zero_grad()
        loss = sum(o.mean() for o in model(torch.randn(2, 3, 64, 64)))
        if frozen_stages < model.num_stages:
            loss.backward()
        else:  # everything frozen: not even the graph is recorded
            assert loss.grad_fn is None
        for name, p in model.named_parameters():
            if not p.requires_grad:
                assert p.grad is None, f'gradient reached frozen {name}'
        opt.step()
        model.train()  # a later train() must not unfreeze anything
    for n, m in frozen:
        assert torch.equal(m.running_mean, before[n]), f'{n} statistics moved'
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, params_before[n]), f'frozen {n} changed'
    moved = [n for n, m in free if not torch.equal(m.running_mean, before[n])]
    assert len(moved) == len(free), f'unfrozen BN statistics should update: ' \
        f'{sorted(set(n for n, _ in free) - set(moved))}'


def test_norm_eval_keeps_all_bn_in_eval():
    model = ResNetBackbone(depth=18, frozen_stages=-1, norm_eval=True).train()
    assert all(not m.training for m in model.modules() if isinstance(m, _BatchNorm))
    assert all(p.requires_grad for p in model.parameters())


def test_frozen_stem_only():
    model = ResNetBackbone(depth=18, frozen_stages=0).train()
    assert not model.conv1.weight.requires_grad and not model.bn1.weight.requires_grad
    assert model.layer1[0].conv1.weight.requires_grad


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world_size, port, result_dir):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world_size)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = ResNetBackbone(depth=18, frozen_stages=1, base_channels=16).train()
    ddp = torch.nn.parallel.DistributedDataParallel(model)  # no find_unused_parameters
    opt = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=0.1)
    torch.manual_seed(rank)
    for _ in range(2):
        opt.zero_grad()
        sum(o.mean() for o in ddp(torch.randn(2, 3, 64, 64))).backward()
        opt.step()
    grads = torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])
    torch.save(grads, os.path.join(result_dir, f'rank{rank}.pt'))
    dist.destroy_process_group()


def test_ddp_two_processes_frozen_stages(tmp_path):
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2,
                       start_method='spawn')
    a = torch.load(tmp_path / 'rank0.pt')
    b = torch.load(tmp_path / 'rank1.pt')
    assert torch.equal(a, b), 'ranks diverged: gradients were not all-reduced'


def test_frozen_bn_norm_cfg_builds_our_frozen_bn_under_the_mmdet_scope():
    """``norm_cfg=dict(type='FrozenBN')`` in an MMDetection config (default scope mmdet,
    where mmdet registers a FrozenBN of its own): our FrozenBN, which the BN fold knows,
    with mmdet's keys and numbers."""
    from helpers import mmdet_backbone, ours_from_mmdet_cfg
    from mmengine.registry import DefaultScope

    from resnet_backbone.functional import fold_conv_bn
    from resnet_backbone.norms import FrozenBatchNorm2d
    cfg = dict(type='ResNet', depth=18, norm_cfg=dict(type='FrozenBN'), frozen_stages=-1,
               out_indices=(0, 1, 2, 3))
    ref = randomize(mmdet_backbone(cfg))
    assert DefaultScope.get_current_instance().scope_name == 'mmdet'
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, buf in ref.named_buffers():
            if name.endswith(('weight', 'bias', 'running_mean')):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=g) + name.endswith('weight'))
            elif name.endswith('running_var'):
                buf.copy_(0.5 + torch.rand(buf.shape, generator=g))
    ours = ours_from_mmdet_cfg(cfg)
    norms = [m for n, m in ours.named_modules() if n.rsplit('.', 1)[-1].startswith('bn')
             or n.endswith('downsample.1')]
    assert len(norms) == 20 and all(type(m) is FrozenBatchNorm2d for m in norms)
    assert fold_conv_bn(ours.conv1, ours.bn1) is not None
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64, generator=g)
    ref.eval()  # mmdet's returns None
    with torch.no_grad():
        for a, b in zip(ref(x), ours.eval()(x)):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * a.abs().max().item())
