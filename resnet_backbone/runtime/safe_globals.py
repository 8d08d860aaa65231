"""Let ``torch.load(weights_only=True)`` read mmengine Runner checkpoints.

torch >= 2.6 loads with ``weights_only=True`` by default. A checkpoint saved
by mmengine's ``Runner`` holds, besides tensors and plain containers, only
these globals (found by saving real Runner checkpoints and listing them with
``torch.serialization.get_unsafe_globals_in_checkpoint``):

* ``mmengine.logging.history_buffer.HistoryBuffer``: the message hub's
  smoothed log values (``message_hub.log_scalars``);
* ``numpy._core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``:
  the numpy arrays inside each ``HistoryBuffer``;
* ``numpy._core.multiarray.scalar``: numpy scalars in ``message_hub.runtime_info``
  (e.g. ``eta``);
* ``builtins.getattr``: ``HistoryBuffer.__getstate__`` stores its statistics
  methods, which pickle writes as ``getattr(HistoryBuffer, 'mean')``;
* the numpy dtype classes (``numpy.dtypes.Float64DType``, ``Int64DType``...):
  not named in the file, but torch only sets the state of objects whose type
  is allowed, and numpy restores a dtype by setting its state. We allow the
  bool, integer and floating-point ones (values and counts in the buffers
  are float64 and int64; the others are as harmless).

We allow exactly these, under their names in the file (and the
``numpy.core.*`` names of files written with numpy 1.x). ``getattr`` is not
allowed as such: the name ``builtins.getattr`` is bound to
:func:`history_buffer_method`, which returns public methods of
``HistoryBuffer`` and refuses anything else, so a crafted file cannot reach
arbitrary attributes. Safe loading stays on for everything else.
"""
import inspect
import pickle

import numpy as np
import torch

_numpy_core = getattr(np, '_core', None) or np.core
_multiarray = _numpy_core.multiarray


def history_buffer_method(obj, name):
    """``getattr`` for unpickling: only ``HistoryBuffer``'s public statistics methods."""
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and isinstance(name, str) and not name.startswith('_'):
        value = inspect.getattr_static(HistoryBuffer, name, None)
        if inspect.isfunction(value):
            return value
    raise pickle.UnpicklingError(
        f'refusing getattr({obj!r}, {name!r}) while loading a checkpoint: only public '
        'methods of mmengine.logging.HistoryBuffer may be looked up (resnet_backbone.runtime '
        'allowlist)')


def numpy_reconstruct(*args):
    """numpy's ``_reconstruct`` (how a pickled array starts)."""
    return _multiarray._reconstruct(*args)


def numpy_scalar(*args):
    """numpy's ``scalar`` (how a pickled numpy scalar is made)."""
    return _multiarray.scalar(*args)


def mmengine_safe_globals():
    """``[(object, name in the pickle)]`` that mmengine Runner checkpoints need.

    Every entry is a ``(object, name)`` pair, and numpy's functions are
    wrapped, so that code which adds and later removes the bare objects
    (e.g. a ``torch.serialization.safe_globals`` block) cannot remove ours.
    """
    from mmengine.logging import HistoryBuffer
    allowed = [
        (HistoryBuffer, 'mmengine.logging.history_buffer.HistoryBuffer'),
        (np.ndarray, 'numpy.ndarray'),
        (np.dtype, 'numpy.dtype'),
        (history_buffer_method, 'builtins.getattr'),
    ]
    for prefix in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        allowed.append((numpy_reconstruct, f'{prefix}._reconstruct'))
        allowed.append((numpy_scalar, f'{prefix}.scalar'))
    for name in NUMERIC_DTYPES:
        cls = type(np.dtype(name))
        allowed.append((cls, f'{cls.__module__}.{cls.__qualname__}'))
    return allowed


NUMERIC_DTYPES = ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32',
                  'uint64', 'float16', 'float32', 'float64')


MMENGINE_SAFE_GLOBAL_NAMES = (
    'mmengine.logging.history_buffer.HistoryBuffer', 'numpy.ndarray', 'numpy.dtype',
    'builtins.getattr', 'numpy._core.multiarray._reconstruct', 'numpy._core.multiarray.scalar',
    'numpy.core.multiarray._reconstruct', 'numpy.core.multiarray.scalar')


def allow_mmengine_checkpoints():
    """Add :func:`mmengine_safe_globals` to torch's weights-only allowlist (idempotent).

    Returns the names allowed, or ``()`` on torch versions without
    ``add_safe_globals`` (< 2.4, which load these files without it anyway).
    """
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is None:
        return ()
    add(mmengine_safe_globals())
    return MMENGINE_SAFE_GLOBAL_NAMES
