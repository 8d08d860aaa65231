"""Loading converted weights into a backbone, with a report and no partial loads."""
import logging
from dataclasses import dataclass, field

import torch
from mmengine.logging import print_log

from .convert import convert_state_dict
from .resolve import resolve_checkpoint
from .safe_load import CheckpointError, read_checkpoint

# Leftovers every ImageNet checkpoint carries: dropped without a word.
_SILENT_LEFTOVERS = ('fc.', 'fc1000_', 'pred_', 'head.fc.', 'classifier.')


@dataclass
class LoadReport:
    dialect: str
    loaded: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)

    def __str__(self):
        lines = [f'loaded {len(self.loaded)} tensors (dialect: {self.dialect})']
        if self.missing:
            lines.append(f'missing in checkpoint ({len(self.missing)}): '
                         + ', '.join(self.missing))
        if self.unexpected:
            lines.append(f'unexpected in checkpoint ({len(self.unexpected)}): '
                         + ', '.join(self.unexpected))
        return '\n'.join(lines)


def _is_silent(key):
    return key.endswith('num_batches_tracked') or key.startswith(_SILENT_LEFTOVERS)


def load_checkpoint(model, checkpoint, dialect='auto', strict=False):
    """Load ``checkpoint`` (path, URL-like name or raw dict) into ``model``.

    Everything is read, converted and shape-checked before the first tensor
    is copied, so a bad checkpoint leaves the model unchanged.
    """
    raw = checkpoint if isinstance(checkpoint, dict) else read_checkpoint(
        resolve_checkpoint(checkpoint))
    state, dialect = convert_state_dict(raw, dialect)
    own = model.state_dict()
    report = LoadReport(dialect)
    mismatched = []
    for key, value in state.items():
        if key not in own:
            if not _is_silent(key):
                report.unexpected.append(key)
        elif own[key].shape != value.shape:
            mismatched.append(f'{key}: checkpoint {tuple(value.shape)} vs model '
                              f'{tuple(own[key].shape)}')
        else:
            report.loaded.append(key)
    report.missing = [k for k in own if k not in state and not _is_silent(k)]
    if mismatched:
        raise CheckpointError(
            f'checkpoint does not fit the model ({len(mismatched)} shape mismatches; is it '
            'for another depth or width?): ' + '; '.join(mismatched[:10])
            + ('; ...' if len(mismatched) > 10 else '') + '. The model was left unchanged.')
    if not report.loaded:
        raise CheckpointError(
            f'no tensor of the checkpoint (dialect {dialect}) matches the model; it is for '
            f'another architecture. First keys: {", ".join(list(state)[:5])}. The model was '
            'left unchanged.')
    if strict and (report.missing or report.unexpected):
        raise CheckpointError(f'strict load failed:\n{report}')
    with torch.no_grad():
        for key in report.loaded:
            own[key].copy_(state[key].to(own[key].dtype))
    return report


def init_cfg_checkpoint(init_cfg):
    """The checkpoint named by a ``Pretrained`` init_cfg, or None."""
    cfgs = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    for cfg in cfgs:
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            if not cfg.get('checkpoint'):
                raise ValueError(f"init_cfg={cfg!r} needs a 'checkpoint' (path or name such as "
                                 "'torchvision://resnet50')")
            return cfg['checkpoint']
    return None


def load_pretrained(model, checkpoint, init_cfg):
    """Load a ``Pretrained`` init_cfg's weights and log the report."""
    cfg = next(c for c in (init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg])
               if isinstance(c, dict) and c.get('type') == 'Pretrained')
    report = load_checkpoint(model, checkpoint, dialect=cfg.get('dialect', 'auto'),
                             strict=cfg.get('strict', False))
    level = logging.WARNING if report.missing or report.unexpected else logging.INFO
    print_log(f'{type(model).__name__}: {checkpoint}: {report}', logger='current', level=level)
    return report
