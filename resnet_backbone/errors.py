"""Argument checks that raise ValueError/TypeError naming parameter, value and what is allowed."""
import os
from collections.abc import Sequence


def check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f'{name}={value!r} is not supported; allowed: '
                         + ', '.join(repr(a) for a in allowed))
    return value


def check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f'{name} must be True or False, got {type(value).__name__}: {value!r}')
    return value


def env_flag(name, default=True):
    """An on/off switch from environment variable ``name`` (unset or empty: ``default``)."""
    value = os.environ.get(name, '').strip().lower()
    if not value:
        return default
    if value in ('1', 'on', 'true', 'yes'):
        return True
    if value in ('0', 'off', 'false', 'no'):
        return False
    raise ValueError(f'{name}={value!r} is not understood; allowed: 1/on/true or 0/off/false')


def check_int(name, value, minimum=None, maximum=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'{name} must be an int, got {type(value).__name__}: {value!r}')
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        lo = '-inf' if minimum is None else minimum
        hi = 'inf' if maximum is None else maximum
        raise ValueError(f'{name}={value} is out of range; allowed: {lo} to {hi}')
    return value


def check_int_sequence(name, value, length=None, minimum=None):
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f'{name} must be a tuple or list of ints, got '
                        f'{type(value).__name__}: {value!r}')
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int):
            raise TypeError(f'{name} must contain ints, got {value!r}')
        if minimum is not None and item < minimum:
            raise ValueError(f'{name}={tuple(value)!r} has {item}; every entry must be >= {minimum}')
    if length is not None and len(value) != length:
        raise ValueError(f'{name}={tuple(value)!r} has {len(value)} entries; it needs one per '
                         f'stage, i.e. {length} (num_stages)')
    return tuple(value)
