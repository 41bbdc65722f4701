"""Environment variables changed for a block and put back after it, however it ends."""

import os
from contextlib import contextmanager
from unittest import mock


@contextmanager
def kept_environ(*names, **values):
    """Run the block with ``values`` set (None unsets a variable), then put the environment back as it was:
    ``unittest.mock.patch.dict`` on ``os.environ``, which restores every variable, ``names`` (those the block
    is known to change) among them.

    Why it is needed: RecBole's Config writes ``CUDA_VISIBLE_DEVICES`` into this process's environment,
    which a local Ray instance or a worker process started afterwards would inherit.
    """
    with mock.patch.dict(os.environ, {key: value for key, value in values.items() if value is not None}):
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
        yield
