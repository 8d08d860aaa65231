"""Timing, checks and memory: one implementation in one setting, rounds, peak memory, FLOPs."""
import contextlib
import gc
import math
import os
import statistics
import sys
import time

import torch

from .common import MIB, autocast_ctx, synchronize
from .models import weighted_loss

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


def time_and_measure(alive, warmup, repeats, device, times, meter, rows):
    """Timed rounds, then the peak memory of one more step of each runner still alive;
    the errors of the runners that failed go into their rows."""
    timed_rounds(alive, warmup, repeats, device, times)
    for r in alive:
        if r.impl in times.get('_errors', {}):
            continue
        try:
            rows[r.impl]['peak_mem_mib'] = meter.measure(r.step, r.zero_grad)
        except Exception as e:
            rows[r.impl]['peak_mem_error'] = f'{type(e).__name__}: {e}'
    for impl, err in times.get('_errors', {}).items():
        rows[impl]['error'] = err


def _guard(runner, fn, times, alive):
    try:
        fn()
        return True
    except Exception as e:  # one failing implementation must not end the run
        times.setdefault('_errors', {})[runner.impl] = f'{type(e).__name__}: {str(e)[:300]}'
        alive.remove(runner)
        return False


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
