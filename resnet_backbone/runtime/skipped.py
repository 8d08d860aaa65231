"""The count of skipped corrupt images: per process, and across processes through a file.

Light (no mmdet import), so hooks can read it without loading the data module.
"""
import os
import os.path as osp
import threading

SKIP_LOG_ENV = 'RESNET_BACKBONE_SKIPPED_IMAGES_LOG'
_lock = threading.Lock()
_skipped = []


def skipped_images():
    """``dict(count=, files=[(path, reason)])`` of images skipped in this process."""
    with _lock:
        return dict(count=len(_skipped), files=list(_skipped))


def reset_skipped_images():
    with _lock:
        _skipped.clear()


def record_skipped_image(path, reason):
    """Count a skipped image; also append it to the file named by the environment, if any.

    Returns this process's count so far.
    """
    with _lock:
        _skipped.append((path, reason))
        count = len(_skipped)
    log = os.environ.get(SKIP_LOG_ENV)
    if log:
        try:
            with open(log, 'a', encoding='utf-8') as f:
                f.write(f'{path}\t{reason}\n')
        except OSError:
            pass
    return count


def read_skip_log(path):
    """``[(path, reason)]`` recorded in a skip log file (all processes)."""
    if not path or not osp.isfile(path):
        return []
    with open(path, encoding='utf-8') as f:
        return [tuple(line.rstrip('\n').split('\t', 1)) for line in f if line.strip()]
