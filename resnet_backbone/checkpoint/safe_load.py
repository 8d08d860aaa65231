"""Reading checkpoint files without running code from them.

* ``.pth``/``.pt``/``.bin``/``.ckpt``: ``torch.load(weights_only=True)``.
* ``.pkl`` (detectron2 / Caffe2): a restricted unpickler that builds only
  numpy arrays, numpy scalars and plain containers.
* ``.safetensors``: the safetensors package.
"""
import os
import pickle

import numpy as np
import torch

from .integrity import checkpoint_problem


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint whose unpickling would import or call something not allowed."""


_PKL_ALLOWED = {
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
    ('numpy', 'ndarray'), ('numpy', 'dtype'), ('numpy.core.numeric', '_frombuffer'),
    ('numpy._core.numeric', '_frombuffer'), ('collections', 'OrderedDict'),
    ('builtins', 'set'), ('builtins', 'frozenset'), ('__builtin__', 'set'),
    ('_codecs', 'encode'),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _PKL_ALLOWED:
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f'refusing to unpickle {module}.{name}: a .pkl checkpoint may hold only numpy '
            'arrays and plain containers, and this one would import code. Nothing was run.')


def _read_pkl(path):
    with open(path, 'rb') as f:
        data = _RestrictedUnpickler(f, encoding='latin1').load()
    return data


def _read_safetensors(path):
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(path, device='cpu')
    except SafetensorError as e:  # not among the errors below: named here, with the file
        raise CheckpointError(
            f'checkpoint file {path} ({os.path.getsize(path)} bytes) is not a valid '
            f'safetensors file: {e}; download it again') from None


def _read_torch(path):
    problem = checkpoint_problem(path)  # torch.load does not check zip CRCs
    if problem is not None:
        raise CheckpointError(f'checkpoint file {path} is truncated or corrupt: {problem}; '
                              'download it again')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f'{path}: refused by torch.load(weights_only=True): it holds objects other than '
            f'tensors and plain containers, and loading it could run code. Nothing was run. '
            f'If you trust the file, convert it with tools/convert_checkpoint.py. ({e})'
            .split('\n')[0]) from None


def read_checkpoint(path):
    """Return the object stored in a checkpoint file, refusing anything that runs code."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    if os.path.getsize(path) == 0:
        raise CheckpointError(f'checkpoint file {path} is empty (0 bytes); download it again')
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == '.pkl':
            return _read_pkl(path)
        if ext == '.safetensors':
            return _read_safetensors(path)
        return _read_torch(path)
    except UnsafeCheckpointError:
        raise
    except (EOFError, RuntimeError, pickle.UnpicklingError, ValueError, OSError,
            IndexError, KeyError, AttributeError, ImportError, TypeError) as e:
        raise CheckpointError(
            f'checkpoint file {path} ({os.path.getsize(path)} bytes) is truncated or corrupt: '
            f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}; '
            'download it again') from None


def to_tensor_dict(state):
    """Convert numpy values to tensors; drop non-array entries."""
    out = {}
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            out[k] = v
        elif isinstance(v, np.ndarray):
            out[k] = torch.from_numpy(np.ascontiguousarray(v))
    return out

