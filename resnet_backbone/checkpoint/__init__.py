"""Checkpoint loading: safe reading, dialect conversion, name resolution, reports."""
from .convert import DIALECTS, convert_state_dict, detect_dialect, unwrap_state_dict
from .load import LoadReport, init_cfg_checkpoint, load_checkpoint, load_pretrained
from .normalization import WEIGHT_NORMALIZATION, check_normalization, normalization_for
from .resolve import resolve_checkpoint
from .safe_load import CheckpointError, UnsafeCheckpointError, read_checkpoint

__all__ = ['DIALECTS', 'convert_state_dict', 'detect_dialect', 'unwrap_state_dict',
           'LoadReport', 'init_cfg_checkpoint', 'load_checkpoint', 'load_pretrained',
           'WEIGHT_NORMALIZATION', 'check_normalization', 'normalization_for',
           'resolve_checkpoint', 'CheckpointError', 'UnsafeCheckpointError', 'read_checkpoint']
