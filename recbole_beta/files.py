"""Result files: plain data, written whole or not at all."""

import enum
import json
import os

import numpy as np
import torch


def plain(value):
    """``value`` as plain data for JSON or a checkpoint: enums and devices become strings, numpy Python."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, np.generic):  # before float: np.float64 is a float subclass
        return value.item()
    if isinstance(value, (bool, int, float, str, type(None), torch.Tensor)):
        return value
    if isinstance(value, enum.Enum):
        return str(value)
    return str(value)


def atomic_write(path, write, binary=False):
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``: a crash
    or a concurrent reader never sees half a file, and an existing file stays until the new one is whole."""
    folder, name = os.path.split(os.fspath(path))
    tmp = os.path.join(folder, f".{name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8", newline="") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_json(path, data, indent=1):
    """``data`` (made plain) as JSON at ``path``, atomically."""
    return atomic_write(path, lambda f: json.dump(plain(data), f, indent=indent))


def write_text(path, text):
    return atomic_write(path, lambda f: f.write(text))
