#!/usr/bin/env python
"""Record mmcv's compiled op results for tests/test_mmcv_ext.py (needs a compiled mmcv).

    python tools/make_mmcv_reference.py [PART ...]    # roi_align nms dcn mask_rcnn (default all)

Runs the cases of tests/mmcv_reference.py through mmcv's wrappers on mmcv's own
compiled kernels, in a pinned process (one thread, oneDNN/MKL held to AVX2), and
writes inputs and outputs to tests/data/mmcv_reference/PART.pt. A compiled mmcv:
`make setup MMCV_OPS=compiled` (or any environment whose mmcv._ext is compiled).
"""
import os.path as osp
import subprocess
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.join(ROOT, 'tests'))
sys.path.insert(0, ROOT)


def main(argv=None):
    from mmcv_reference import PARTS, REFERENCE_DIR, pinned_command

    from resnet_backbone.mmcv_ext import mmcv_ext_kind
    parts = (sys.argv[1:] if argv is None else argv) or list(PARTS)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f'unknown part(s) {unknown}; choose from {list(PARTS)}')
    if mmcv_ext_kind() != 'compiled':
        raise SystemExit(f'mmcv._ext here is {mmcv_ext_kind()!r}, not compiled: the reference '
                         "must come from mmcv's own kernels (make setup MMCV_OPS=compiled)")
    cmd, env = pinned_command(REFERENCE_DIR, *parts)
    return subprocess.call(cmd, env=env)


if __name__ == '__main__':
    sys.exit(main())
