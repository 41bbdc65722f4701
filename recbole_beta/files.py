"""Result files: plain data, written whole or not at all."""

import enum
import json
import os
import secrets
from pathlib import Path

import numpy as np
import torch

from recbole_beta.errors import OutputError


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


class AtomicFiles:
    """Files written under temporary names in one folder, then renamed onto their names together by
    ``commit()``: nothing at the final paths changes unless every file was written whole, and a
    crash or a concurrent reader never sees half a file. As a context manager it commits on success
    and removes the temporary files on an error::

        with AtomicFiles(folder) as files:
            with files.open("d.inter") as f: ...
            with files.open("d.summary.json") as f: ...
    """

    def __init__(self, directory):
        self.directory = Path(directory)
        self.pending = []  # (temporary path, final path)

    def open(self, filename, binary=False):
        """A new temporary file (text: UTF-8, lines end in \\n) that ``commit()`` makes ``directory/filename``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        # not tempfile.mkstemp: its 0600 mode would end up on the final file
        tmp = self.directory / f".{filename}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        f = open(tmp, "xb") if binary else open(tmp, "x", encoding="utf-8", newline="")
        self.pending.append((tmp, self.directory / filename))
        return f

    def commit(self):
        """Move every temporary file onto its final name."""
        for tmp, final in self.pending:
            os.replace(tmp, final)
        self.pending = []

    def discard(self):
        """Remove the temporary files not committed."""
        for tmp, _ in self.pending:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        self.pending = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        self.discard()
        return False


def atomic_write(path, write, binary=False):
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path`` (one file of
    :class:`AtomicFiles`): an existing file stays until the new one is whole."""
    target = Path(path)
    with AtomicFiles(target.parent) as files, files.open(target.name, binary) as f:
        write(f)
    return path


def write_json(target, data, indent=1, end=""):
    """``data`` (made plain) as JSON, then ``end``: at ``target`` atomically when it is a path, or into
    ``target`` when it is an open text file (one of an :class:`AtomicFiles` commit)."""

    def write(f):
        json.dump(plain(data), f, indent=indent)
        f.write(end)

    if hasattr(target, "write"):
        write(target)
        return target
    return atomic_write(target, write)


def write_text(path, text):
    return atomic_write(path, lambda f: f.write(text))


def ensure_writable(folder, what):
    """Make ``folder`` if needed and write a file in it, so that a run fails at once, in one line naming
    ``what`` (a config key or option), rather than after its work when its output cannot be written."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        probe = Path(folder) / f".write-test.{os.getpid()}.{secrets.token_hex(4)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise OutputError(f"{what}={os.fspath(folder)!r} cannot be written: {error.strerror or error}") from None
    return folder


def require_file(path, error, missing="no such file", not_file="not a file"):
    """Raise ``error(reason)`` (a one-line error naming the caller's file) unless ``path`` is an existing
    regular file: ``missing`` if nothing is there, ``not_file`` if a folder (or other) is."""
    if not os.path.exists(path):
        raise error(missing)
    if not os.path.isfile(path):
        raise error(not_file)
    return path
