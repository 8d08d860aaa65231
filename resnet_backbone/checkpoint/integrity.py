"""Is a checkpoint file complete? (torch saves zips: a truncated one fails, CRCs are checked.)"""
import os.path as osp
import zipfile


def checkpoint_problem(path):
    """None if ``path`` is a complete checkpoint file, else why it is not.

    torch saves zip archives: a truncated one has no central directory, a
    corrupted one fails a CRC check (torch.load itself does not check CRCs, so
    flipped bits in tensor data would load silently). Files in torch's legacy
    format (a pickle stream) cannot be verified this way and are accepted when
    they start like one; anything else is not a torch checkpoint.
    """
    if not path:
        return 'no file named'
    if not osp.isfile(path):
        return 'file does not exist'
    size = osp.getsize(path)
    if size == 0:
        return 'file is empty (0 bytes)'
    with open(path, 'rb') as f:
        magic = f.read(4)
    if magic != b'PK\x03\x04':
        if magic[:1] == b'\x80':  # pickle protocol >= 2: torch's legacy format
            return None
        return f'not a torch checkpoint (neither zip nor pickle; {size} bytes)'

    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        return f'incomplete or corrupt zip ({size} bytes): {e}'
    if bad is not None:
        return f'CRC mismatch in {bad} ({size} bytes)'
    return None


def is_complete_checkpoint(path):
    return checkpoint_problem(path) is None


def is_legacy_format(path):
    """A torch checkpoint in the old (pre-1.6, non-zip) format: a pickle stream."""
    with open(path, 'rb') as f:
        return f.read(1) == b'\x80'



