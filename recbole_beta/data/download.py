"""Opt-in download of the datasets RecBole hosts (ml-20m among them), with RecBole's own pieces.

RecBole 1.2.1 downloads a dataset it knows (a name in ``recbole/properties/dataset/url.yaml``)
in ``Dataset._download``: it asks ``recbole.utils.url.decide_download`` whether to go on
(which prompts with ``input()`` when the zip is over 1 GB), downloads the zip into
``<data_path>/<name>/``, extracts it there, deletes it, renames ``<zip name>.*`` to
``<name>.*`` and then calls ``torch.distributed.barrier()``, which raises in a
single-process run (no process group).

:func:`download_dataset` takes the same steps with the same functions of ``recbole.utils.url``
(``makedirs``, ``download_url``, ``extract_zip``, ``rename_atomic_files``) and RecBole's log
lines, with two differences:

* no prompt: the user asked for the download with ``download: True``, and a run must not wait
  on stdin; a zip over 1 GB is logged with its size, as the answered prompt;
* the barrier only runs under DDP (a process group exists): rank 0 (``local_rank``) downloads,
  the other ranks of the node wait for it there.

The key ``download_url`` (not set by default) replaces the address from url.yaml, e.g. a mirror,
or a local server in the tests; with it set, any dataset name can be downloaded from a zip laid
out like RecBole's (flat ``<zip name>.inter``, ``.item``, ... files).
"""

import os
import urllib.request
import zipfile
from logging import getLogger

import torch.distributed as dist
import yaml

from recbole_beta.errors import DatasetNotFoundError

#: where the preprocessing commands for a hand-made copy are documented
README = "dataset/README.md"


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


def _by_hand(config):
    """The part of every message that says how to make the files without the download."""
    name, path = config["dataset"], config["data_path"]
    root = os.path.dirname(os.path.normpath(path)) or "."
    return (
        f"put {name}.inter in {path}/ by hand (see {README}); from GroupLens' raw ml-20m.zip: "
        f"python -m recbole_beta data convert path/to/ml-20m/ratings.csv --multvae --name {name} --out {root}/"
    )


def _one_line(error):
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _log_size(url, logger):
    """Log what ``decide_download`` would ask for a zip over 1 GB, answered by ``download: True``."""
    from recbole.utils.url import GBFACTOR

    # not decide_download: over 1 GB it calls input() (measured: EOFError with stdin from /dev/null,
    # OSError under pytest)
    with urllib.request.urlopen(url) as response:
        size = int(response.info()["Content-Length"]) / GBFACTOR
    if size > 1:
        logger.info(f"This will download {size:.2f}GB. Will you proceed? (y/N) y (download=True)")


def _fetch(url, name, path, logger):
    """RecBole's ``Dataset._download`` on rank 0, without its prompt; see the module's docstring."""
    from recbole.utils.url import download_url, extract_zip, makedirs, rename_atomic_files

    logger.info(f"Prepare to download dataset [{name}] from [{url}].")
    _log_size(url, logger)
    makedirs(path)
    zip_path = download_url(url, path)
    extract_zip(zip_path, path)
    os.unlink(zip_path)
    rename_atomic_files(path, os.path.splitext(os.path.basename(zip_path))[0], name)
    logger.info("Downloading done.")


def download_dataset(config):
    """Fetch and extract ``config['dataset']`` into ``config['data_path']`` as RecBole's ``_download`` does.

    Returns the path of the ``.inter`` file. Under DDP only ``local_rank`` 0 downloads; every rank
    then meets at ``torch.distributed.barrier()``. Raises :class:`DatasetNotFoundError` (one line: the
    reason, where the files go, the converter command) when the name has no address, the
    download fails (e.g. no network) or the archive holds no ``<name>.inter``.
    """
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
    try:
        if config["local_rank"] == 0:
            _fetch(url, name, path, logger)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # the node's other ranks wait here for rank 0's files
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
