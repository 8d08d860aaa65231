#!/usr/bin/env python
"""Convert a ResNet checkpoint from any supported dialect to this backbone's keys.

    python tools/convert_checkpoint.py R-50.pkl r50_ours.pth --from detectron2

Writes a plain state dict (``torch.save``), and ``DST`` with ``.safetensors``
beside it when the safetensors package is installed. Reading is safe: pickles
that would run code are refused.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from resnet_backbone.checkpoint import (DIALECTS, convert_state_dict,  # noqa: E402
                                        read_checkpoint, resolve_checkpoint)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help='checkpoint path or name (torchvision://resnet50, ...)')
    parser.add_argument('dst', help='output .pth path')
    parser.add_argument('--from', dest='dialect', default='auto', choices=DIALECTS)
    args = parser.parse_args(argv)
    state, dialect = convert_state_dict(read_checkpoint(resolve_checkpoint(args.src)),
                                        args.dialect)
    state = {k: v.contiguous() for k, v in state.items()
             if not k.startswith(('fc.', 'fc1000_')) and not k.endswith('num_batches_tracked')}
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    torch.save(state, args.dst)
    written = [args.dst]
    try:
        from safetensors.torch import save_file
    except ImportError:
        pass
    else:
        st_path = os.path.splitext(args.dst)[0] + '.safetensors'
        save_file(state, st_path)
        written.append(st_path)
    print(f'{args.src}: dialect {dialect}, {len(state)} tensors -> {", ".join(written)}')


if __name__ == '__main__':
    main()
