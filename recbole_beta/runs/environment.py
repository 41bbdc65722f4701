"""Environment variables changed for a block and put back after it, however it ends."""

import os
from contextlib import contextmanager


@contextmanager
def kept_environ(*names, **values):
    """Run the block, then restore ``names`` and the keys of ``values`` as they were (unset if they were).
    ``values`` are set for the block (None unsets a variable).

    Why it is needed: RecBole's Config writes ``CUDA_VISIBLE_DEVICES`` into this process's environment,
    which a local Ray instance or a worker process started afterwards would inherit.
    """
    keys = list(names) + [key for key in values if key not in names]
    before = {key: os.environ.get(key) for key in keys}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
