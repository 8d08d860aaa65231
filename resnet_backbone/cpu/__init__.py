"""CPU kernels: faster oneDNN/GEMM routes for the network's convolutions, behind one switch.

The network (``stem``, ``blocks``, ``stage``, ``backbone``) is plain PyTorch
and reaches these kernels only through the seam, :mod:`resnet_backbone.ops`.
Each kernel computes what the plain code computes (the tests compare them) and
applies only to float32 CPU tensors in eager mode, outside autocast.

The switch: :func:`set_enabled` (``resnet_backbone.set_cpu_kernels``) or the
environment variable ``RESNET_BACKBONE_CPU_KERNELS=0``. Off, the network runs
its plain PyTorch code in NCHW on every device.

Each route also has a name in :data:`PATHS`; :func:`paths_disabled` turns
single routes off, for the A/B benchmarks (``tools/bench/ab.py``) that
decide which routes earn their place (docs/benchmarks.md).
"""
import contextlib

from ..errors import env_flag

ENV = 'RESNET_BACKBONE_CPU_KERNELS'
PATHS = {
    'channels_last': 'convolutions on channels_last maps (oneDNN), outputs handed back as NCHW',
    'nchw_copy': 'channels_last outputs handed back as NCHW by a blocked copy on all threads',
    'train_post_ops': 'convs with gradients: residual sum and ReLU as oneDNN post-ops',
    'gemm_weight_grad': 'weight gradient of the strided 3x3 convs as one GEMM per tap',
    'reuse': "no-grad residual sums written into the dead map they add (a stage's own)",
    'winograd': "wide 3x3 stride-1 training convs by Winograd's F(2x2, 3x3)",
}


_enabled = env_flag(ENV)
_disabled_paths = set()


def enabled():
    """Whether the CPU kernels are switched on."""
    return _enabled


def set_enabled(flag):
    """Switch the CPU kernels on (True) or off (False); returns the previous setting."""
    global _enabled
    if not isinstance(flag, bool):
        raise TypeError(f'set_cpu_kernels takes True or False, got {type(flag).__name__}: '
                        f'{flag!r}')
    previous, _enabled = _enabled, flag
    return previous


def path_on(name):
    """Whether route ``name`` of :data:`PATHS` may run (the switch on, the route not off)."""
    return _enabled and name not in _disabled_paths


@contextlib.contextmanager
def paths_disabled(*names):
    """Within the block, the named routes are off (the others as they were)."""
    unknown = sorted(set(names) - set(PATHS))
    if unknown:
        raise ValueError(f'unknown CPU kernel route(s) {unknown}; allowed: {sorted(PATHS)}')
    added = set(names) - _disabled_paths
    _disabled_paths.update(added)
    try:
        yield
    finally:
        _disabled_paths.difference_update(added)
