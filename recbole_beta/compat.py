"""RecBole 1.2.1 on today's stack: what its own code gets wrong when run as the plugin runs it.

- :func:`init_logger`: RecBole 1.2.1's ``init_logger`` attaches its handlers with ``logging.basicConfig``,
  which does nothing once the root logger has handlers: a second run in one process (a sweep, a search, a
  test session) would log into the first run's file. Checkpoints that torch >= 2.6 can load are
  :mod:`recbole_beta.checkpoint`'s; RecBole's own are converted by ``python -m recbole_beta convert-checkpoint``.
"""

import logging

from recbole.utils import init_logger as recbole_init_logger

from recbole_beta.errors import fail

_run_handlers = []  # the handlers RecBole attached for the run in progress (closed when the next starts)


def init_logger(config, console_level=None):
    """RecBole's init_logger, once per run even within one process.

    RecBole attaches its console and file handlers with ``logging.basicConfig``, which does nothing
    when the root logger has handlers already: a second run in the same process (a sweep, a search,
    a test session) would log into the first run's file, or nowhere. So the previous run's handlers
    are closed, and other handlers (pytest's, say) are set aside while RecBole adds its own.
    ``console_level``: if given, the level of RecBole's console handler (its log file keeps
    ``config["state"]``), e.g. ``logging.WARNING`` under a sweep's progress bar.
    """
    root = logging.getLogger()
    for handler in _run_handlers:
        root.removeHandler(handler)
        handler.close()
    _run_handlers.clear()
    foreign = list(root.handlers)
    for handler in foreign:
        root.removeHandler(handler)
    recbole_init_logger(config)
    _run_handlers.extend(root.handlers)
    if console_level is not None:
        for handler in _run_handlers:
            if type(handler) is logging.StreamHandler:
                handler.setLevel(max(handler.level, console_level))
    for handler in foreign:
        root.addHandler(handler)


if __name__ == "__main__":  # an old name of the command, which moved to the top with the other command lines
    raise SystemExit(fail("`python -m recbole_beta.compat` is now `python -m recbole_beta convert-checkpoint IN OUT`"))
