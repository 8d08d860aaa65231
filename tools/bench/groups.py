"""The backbone groups: every implementation in one setting, checked, then timed."""
import fnmatch
import gc

import torch

from .common import (DTYPES, GRAD_SAME_FACTOR, GRAD_SAME_FLOOR, REFERENCE, SEED, _once,
                     ours_class)
from .measure import (Runner, _guard, add_ratios, add_stats, flop_counter, grad_diffs,
                      grad_norm_err, out_rel_diff, time_and_measure)
from .models import (build_impl, dcn_reference_impl, group_impls, loss_weights,
                     reference_impl, reference_state, set_mode)
from .report import format_row

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
    time_and_measure(alive, args.warmup, args.repeats, device, times, meter, rows)
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
