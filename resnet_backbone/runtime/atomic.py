"""Atomic checkpoints for mmengine, and a resume that ignores partial files.

mmengine's ``save_checkpoint`` writes ``epoch_N.pth``/``iter_N.pth`` in place,
and ``CheckpointHook`` then rewrites ``<work_dir>/last_checkpoint`` in place.
A kill (or power loss) in the middle leaves a truncated ``.pth`` or an empty
``last_checkpoint``; the next ``--resume`` then crashes or loads garbage.

:func:`install_atomic_checkpoints` (run by ``resnet_backbone.runtime.install()``)
changes two names in ``mmengine.runner.runner``, the module whose ``Runner``
saves and resumes:

* ``save_checkpoint``: local files are written to a hidden temporary file in
  the same folder, flushed and fsync'ed, then renamed over the final name
  (``os.replace``, atomic on POSIX and Windows), and the folder is fsync'ed.
  A reader sees the old file or the complete new one, never a partial one.
  Remote back ends (``s3://``, ``petrel://``...) keep mmengine's writer.
* ``find_latest_checkpoint``: the ``--resume`` lookup. It accepts what
  ``last_checkpoint`` names only if that file is complete (a valid zip with
  matching CRCs, as torch saves; an old-format pickle only if it loads),
  prefers a complete ``epoch_N``/``iter_N``
  file with a larger N in the same folder (a kill between writing the
  checkpoint and the pointer), and otherwise falls back to the newest
  complete one, logging a warning that names what was skipped.
"""
import logging
import os
import os.path as osp
import re
import tempfile

import torch
from mmengine.logging import print_log

from ..checkpoint.integrity import checkpoint_problem, is_complete_checkpoint, is_legacy_format

TMP_SUFFIX = '.tmp'
_STEP_NAME = re.compile(r'^(epoch|iter)_(\d+)\.pth$')
_ORIGINAL = {}


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _new_file_mode():
    """The mode ``open(path, 'w')`` gives a new file: 0666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path, write):
    """Call ``write(file)`` on a temporary file, then move it to ``path`` atomically.

    The temporary file is hidden (``.<name>.<pid>.<random>.tmp``) in the same
    folder; on any error it is removed and ``path`` is left as it was.
    """
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(path)}.{os.getpid()}.',
                               suffix=TMP_SUFFIX, dir=folder)
    try:
        os.chmod(tmp, _new_file_mode())  # mkstemp's 0600 would survive the rename
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        try:
            os.remove(tmp)
        except OSError:
            pass
        kept = 'the previous file there is unchanged' if osp.exists(path) else 'nothing written'
        if isinstance(error, OSError):  # disk full, permission denied, I/O error...
            raise OSError(error.errno, f'could not write {path}: '
                          f'{error.strerror or error}; {kept}', path) from error
        error.add_note(f'while writing {path}: {kept}')
        raise
    _fsync_dir(folder)
    return path


def atomic_save(obj, path):
    """``torch.save(obj, path)`` that never leaves a partial file at ``path``."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def _step_of(path):
    m = _STEP_NAME.match(osp.basename(path))
    return (m[1], int(m[2])) if m else None


def _mtime(path):
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


def _candidates(folder):
    """``(kind, step, path)`` of ``epoch_N.pth``/``iter_N.pth`` in ``folder``, newest first.

    Newest means last written (then largest N): a work dir reused for a new
    run may still hold larger-N files of an older one.
    """
    found = []
    if osp.isdir(folder):
        for name in os.listdir(folder):
            step = _step_of(name)
            if step:
                found.append((step[0], step[1], osp.join(folder, name)))
    return sorted(found, key=lambda c: (_mtime(c[2]), c[1]), reverse=True)


def remove_stale_temporaries(folder):
    """Remove temporary files that killed writers left in ``folder``; return their names."""
    removed = []
    if not osp.isdir(folder):
        return removed
    for name in os.listdir(folder):
        m = re.match(r'^\..+\.(\d+)\.[^.]+' + re.escape(TMP_SUFFIX) + '$', name)
        if not m:
            continue
        pid = int(m[1])
        if pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue  # its writer is still running
            except ProcessLookupError:
                pass
            except OSError:
                continue
        try:
            os.remove(osp.join(folder, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def find_latest_checkpoint(path):
    """The checkpoint ``--resume`` should continue from in work dir ``path``, or None.

    Drop-in for ``mmengine.runner.checkpoint.find_latest_checkpoint`` that
    never returns a partial file (see the module docstring).
    """
    pointer_file = osp.join(path, 'last_checkpoint')
    named = None
    if osp.exists(pointer_file):
        with open(pointer_file) as f:
            named = f.read().strip()
    skipped = []
    if named:
        problem = resume_problem(named)
        if problem is None:
            newer = _newer_complete(named)
            if newer:
                print_log(f'last_checkpoint names {named}, but {newer} is newer and complete '
                          '(the run was stopped between saving it and updating '
                          'last_checkpoint): resuming from it', logger='current',
                          level=logging.WARNING)
                return newer
            return named
        skipped.append(f'{named} ({problem})')
    elif osp.exists(pointer_file):
        skipped.append(f'{pointer_file} (empty)')
    folders = [path] + ([osp.dirname(named)] if named and osp.dirname(named) != path else [])
    for folder in folders:
        for _, _, candidate in _candidates(folder):
            problem = resume_problem(candidate)
            if problem is None:
                print_log('skipped incomplete checkpoint(s): ' + '; '.join(skipped)
                          + f'. Resuming from {candidate}', logger='current',
                          level=logging.WARNING)
                return candidate
            skipped.append(f'{candidate} ({problem})')
    if skipped:
        print_log('no complete checkpoint to resume from; skipped: ' + '; '.join(skipped)
                  + '. Training starts from scratch.', logger='current', level=logging.WARNING)
    else:
        print_log('Did not find last_checkpoint to be resumed.', logger='current')
    return None


def _newer_complete(named):
    """A complete checkpoint of the same run written after ``named`` (larger N, later)."""
    step = _step_of(named)
    if step is None:
        return None
    for kind, n, candidate in _candidates(osp.dirname(named)):
        if (kind == step[0] and n > step[1] and _mtime(candidate) > _mtime(named)
                and resume_problem(candidate) is None):
            return candidate
    return None


def resume_problem(path):
    """None if ``--resume`` can load ``path``, else why not.

    On top of :func:`checkpoint_problem`, an old-format (non-zip) checkpoint, whose
    completeness no CRC shows, is loaded once (safely) to find out.
    """
    problem = checkpoint_problem(path)
    if problem is not None or not is_legacy_format(path):
        return problem
    from .safe_globals import mmengine_safe_globals
    try:
        with torch.serialization.safe_globals(mmengine_safe_globals()):
            torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001  (whatever stops the load stops the resume)
        return f'old-format (non-zip) checkpoint that does not load: {type(e).__name__}: ' \
            f'{str(e).splitlines()[0] if str(e) else ""}'
    return None


def is_local_path(path):
    """A path on the local file system (not ``s3://``, ``petrel://``, ``http://``...)."""
    return isinstance(path, (str, os.PathLike)) and '://' not in os.fspath(path)


def save_checkpoint(checkpoint, filename, file_client_args=None, backend_args=None):
    """mmengine's ``save_checkpoint`` with atomic writes for local files."""
    if file_client_args is None and not backend_args and is_local_path(filename):
        atomic_save(checkpoint, filename)
        return
    _ORIGINAL['save_checkpoint'](checkpoint, filename, file_client_args=file_client_args,
                                 backend_args=backend_args)


def _find_latest_checkpoint_and_tidy(path):
    from mmengine.dist import is_main_process
    if is_main_process():
        removed = remove_stale_temporaries(path)
        if removed:
            print_log(f'removed temporary files of interrupted checkpoint writes in {path}: '
                      + ', '.join(removed), logger='current', level=logging.WARNING)
    return find_latest_checkpoint(path)


def install_atomic_checkpoints():
    """Make mmengine's Runner save atomically and resume only from complete files.

    Idempotent; :func:`uninstall_atomic_checkpoints` restores mmengine's functions.
    """
    import mmengine.runner.checkpoint as ckpt_module
    import mmengine.runner.runner as runner_module
    if 'save_checkpoint' not in _ORIGINAL:
        _ORIGINAL['save_checkpoint'] = ckpt_module.save_checkpoint
        _ORIGINAL['find_latest_checkpoint'] = ckpt_module.find_latest_checkpoint
    runner_module.save_checkpoint = save_checkpoint
    runner_module.find_latest_checkpoint = _find_latest_checkpoint_and_tidy


def uninstall_atomic_checkpoints():
    import mmengine.runner.runner as runner_module
    if _ORIGINAL:
        runner_module.save_checkpoint = _ORIGINAL['save_checkpoint']
        runner_module.find_latest_checkpoint = _ORIGINAL['find_latest_checkpoint']


def atomic_checkpoints_installed():
    import mmengine.runner.runner as runner_module
    return runner_module.save_checkpoint is save_checkpoint
