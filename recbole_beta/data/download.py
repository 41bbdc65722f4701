"""Opt-in download of the datasets RecBole hosts (ml-20m among them), through RecBole's own code.

RecBole 1.2.1 downloads a dataset it knows (a name in ``recbole/properties/dataset/url.yaml``)
in ``Dataset._download``: it asks ``recbole.utils.url.decide_download`` whether to go on
(which prompts with ``input()`` when the zip is over 1 GB), downloads the zip into
``<data_path>/<name>/``, extracts it there, deletes it, renames ``<zip name>.*`` to
``<name>.*`` and then calls ``torch.distributed.barrier()``, which raises in a
single-process run (no process group).

:func:`download_dataset` runs that same method, with two scoped changes only:

* :func:`barrier_guard`: ``torch.distributed.barrier`` does nothing while no process group is
  initialised (under DDP the real barrier runs, so the other ranks wait for rank 0);
* the confirmation prompt is answered "y": the user asked for the download with
  ``download: True``, and a run must not wait on stdin.

Both are undone when the download ends, however it ends. The key ``download_url`` (not set by
default) replaces the address from url.yaml, e.g. a mirror, or a local server in the tests; with
it set, any dataset name can be downloaded from a zip laid out like RecBole's (flat
``<zip name>.inter``, ``.item``, ... files).
"""

import contextlib
import os
import zipfile
from logging import getLogger
from unittest import mock

import torch.distributed as dist
import yaml

from recbole_beta.errors import DatasetNotFoundError

#: where the preprocessing commands for a hand-made copy are documented
README = "dataset/README.md"

_MISSING = object()


def recbole_urls():
    """RecBole's ``{dataset name: zip url}`` from its ``properties/dataset/url.yaml``."""
    import recbole

    path = os.path.join(os.path.dirname(os.path.realpath(recbole.__file__)), "properties", "dataset", "url.yaml")
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def download_url_of(config):
    """The zip address for ``config['dataset']``: ``download_url`` if set, else RecBole's; None if neither."""
    return config["download_url"] or recbole_urls().get(config["dataset"])


def is_downloadable(config):
    """True when :func:`download_dataset` has an address to fetch ``config['dataset']`` from."""
    return download_url_of(config) is not None


@contextlib.contextmanager
def barrier_guard():
    """Within the block, ``torch.distributed.barrier()`` is a no-op while no process group exists.

    The check is made at each call, so a process group initialised meanwhile gets the real
    barrier. The original function is put back on exit, exceptions included.
    """
    original = getattr(dist, "barrier", _MISSING)

    def barrier(*args, **kwargs):
        if original is not _MISSING and dist.is_available() and dist.is_initialized():
            return original(*args, **kwargs)
        return None

    dist.barrier = barrier
    try:
        yield
    finally:
        if original is _MISSING:
            del dist.barrier
        else:
            dist.barrier = original


@contextlib.contextmanager
def _confirmed(logger):
    """Answer ``decide_download``'s "Will you proceed? (y/N)" with "y" (logged), within the block only."""
    from recbole.utils import url as recbole_url

    def answer(prompt=""):
        logger.info(f"{' '.join(str(prompt).split())} y (download=True)")
        return "y"

    with mock.patch.object(recbole_url, "input", answer, create=True):
        yield


def _by_hand(config):
    """The part of every message that says how to make the files without the download."""
    name, path = config["dataset"], config["data_path"]
    root = os.path.dirname(os.path.normpath(path)) or "."
    return (
        f"put {name}.inter in {path}/ by hand (see {README}); from GroupLens' raw ml-20m.zip: "
        f"python -m recbole_beta.data convert path/to/ml-20m/ratings.csv --multvae --name {name} --out {root}/"
    )


def _one_line(error):
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def download_dataset(config):
    """Fetch and extract ``config['dataset']`` into ``config['data_path']`` with RecBole's ``_download``.

    Returns the path of the ``.inter`` file. Raises :class:`DatasetNotFoundError` (one line: the
    reason, where the files go, the converter command) when the name has no address, the
    download fails (e.g. no network) or the archive holds no ``<name>.inter``.
    """
    from recbole.data.dataset import Dataset

    name, path = config["dataset"], config["data_path"]
    inter = os.path.join(path, f"{name}.inter")
    url = download_url_of(config)
    if url is None:
        raise DatasetNotFoundError(
            f"dataset={name!r} cannot be downloaded: RecBole has no address for it "
            f"(recbole/properties/dataset/url.yaml) and download_url is not set; {_by_hand(config)}"
        )

    logger = getLogger()
    zip_path = os.path.join(path, url.rpartition("/")[2])
    zip_was_there = os.path.exists(zip_path)

    # RecBole's own Dataset._download, on an instance that has just what it reads.
    dataset = Dataset.__new__(Dataset)
    dataset.config, dataset.dataset_name, dataset.dataset_path, dataset.logger = config, name, path, logger
    dataset._get_download_url = lambda url_file, allow_none=False: url
    try:
        with barrier_guard(), _confirmed(logger):
            dataset._download()
    except (OSError, ValueError, RuntimeError, TypeError, zipfile.BadZipFile) as error:
        if not zip_was_there and os.path.isfile(zip_path):
            os.remove(zip_path)  # a half-done zip would be reused by the next try
        raise DatasetNotFoundError(
            f"dataset={name!r} could not be downloaded from {url} ({_one_line(error)}); {_by_hand(config)}"
        ) from error

    if not os.path.isfile(inter):
        found = sorted(os.listdir(path)) if os.path.isdir(path) else []
        raise DatasetNotFoundError(
            f"dataset={name!r}: the archive from {url} was extracted into {path}/ but holds no {name}.inter "
            f"(found {found[:5]}; RecBole's zips hold <zip name>.inter at the top level); {_by_hand(config)}"
        )
    logger.info(f"dataset {name!r} downloaded from {url} into {path}/")
    return inter
