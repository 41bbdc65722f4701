"""The plugin's one-line errors for bad input, and the one way a command line fails.

Errors the plugin raises for bad input: each renders as one line that names what to fix, and the
one way a command line ends on one (:func:`fail`)."""

import math
import sys

#: what begins every line a command prints on stderr to say why it stopped
PREFIX = "recbole-beta: "


class RecBoleBetaError(Exception):
    """Base class: the CLI prints ``str(error)`` as one line, with no traceback."""


class ConfigError(RecBoleBetaError, ValueError):
    """A config key holds a value the plugin cannot use.

    The message names the key, the value given and what is allowed, e.g.
    ``gamma=-1 is not allowed: must be >= 0``.
    """

    def __init__(self, key, value, allowed):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


class RecBoleConfigError(RecBoleBetaError, ValueError):
    """A setting RecBole's own Config refuses (its check raises a bare ValueError): its message, in one line."""


class ConfigFileError(RecBoleBetaError, ValueError):
    """A config file (``--config_files``) that cannot be read as YAML key: value lines; the message names
    the file (and the line, for a YAML error)."""


class OutputError(RecBoleBetaError, OSError):
    """A folder results or checkpoints go to cannot be written; the message names it and why."""


class UnknownModelError(RecBoleBetaError, ValueError):
    """``--model`` names neither a plugin model nor a RecBole one."""


class DatasetNotFoundError(RecBoleBetaError, FileNotFoundError):
    """The dataset's atomic files are not where the config says they are."""


class DatasetError(RecBoleBetaError, ValueError):
    """The dataset's files are there but cannot serve the run: no interactions left, nothing to evaluate."""


class TrainingDivergedError(RecBoleBetaError, ArithmeticError):
    """The training loss became NaN or infinite."""


class CheckpointError(RecBoleBetaError, ValueError):
    """A checkpoint to resume from (or to convert) cannot be used: missing, not a checkpoint,
    refused by the safe loader, or of another model or dataset. The message names the file and why."""


def fail(error, file=None):
    """End a command on ``error``: print it as one line, ``recbole-beta: <error>``, on stderr (or
    ``file``) and return the exit status: 1 for a run whose loss diverged, 2 for anything else (bad
    input, a file that cannot be read or written)."""
    print(f"{PREFIX}{error}", file=file or sys.stderr)
    return 1 if isinstance(error, TrainingDivergedError) else 2


def check(key, value, ok, allowed):
    """Raise :class:`ConfigError` unless ``ok`` holds."""
    if not ok:
        raise ConfigError(key, value, allowed)
    return value


def is_number(value):
    """True for real numbers (int or float, not bool): what numeric config keys accept."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_number(key, value, *, minimum=None, maximum=None, min_open=False, integer=False):
    """Check that ``value`` is a finite number in the given range; return it as float (or int)."""
    infinite = isinstance(value, float) and not math.isfinite(value)  # --beta=1e999: RecBole reads inf
    ok = is_number(value) and not infinite and (not integer or float(value).is_integer())
    bounds = []
    if minimum is not None:
        bounds.append(f"{'>' if min_open else '>='} {minimum}")
        ok = ok and (value > minimum if min_open else value >= minimum)
    if maximum is not None:
        bounds.append(f"<= {maximum}")
        ok = ok and value <= maximum
    kind = "an integer" if integer else "a number"
    if infinite:
        kind = "a finite " + kind.split()[-1]
    check(key, value, ok, " ".join(["must be", kind, " and ".join(bounds)]).strip())
    return int(value) if integer else float(value)
