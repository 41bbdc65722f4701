"""Opt-in download with RecBole's download pieces (``recbole.utils.url``), served from a local HTTP server.

The zip is laid out like RecBole's hosted ones (``ProcessedDatasets/.../ml-20m.zip``): flat atomic
files named after the zip (``Hosted_Tiny.inter``, ``Hosted_Tiny.item``), which RecBole extracts
into ``<data_path>/<name>/`` and renames to ``<name>.*``.
"""

import contextlib
import functools
import http.server
import json
import random
import socket
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from recbole.utils import url as recbole_url

from conftest import SERIAL
from recbole_beta.cli import main
from recbole_beta.config import Config
from recbole_beta.data.download import download_dataset, is_downloadable
from recbole_beta.errors import DatasetNotFoundError
from recbole_beta.quick_start import check_dataset, run_recbole_beta

ZIP_BASE = "Hosted_Tiny"  # the zip's own name, as RecBole's zips use theirs (e.g. Amazon_Books)
NAME = "hosted-tiny"  # the dataset name the run asks for


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class SlowCountingHandler(QuietHandler):
    """Notes each request in ``requests`` and answers it after ``delay`` seconds."""

    requests = []
    delay = 0.0

    def do_GET(self):
        type(self).requests.append(self.path)
        time.sleep(self.delay)
        super().do_GET()


@contextlib.contextmanager
def http_server(directory, handler=QuietHandler):
    """Serve ``directory`` on 127.0.0.1 at a free port, in a thread; yields the base URL."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(directory))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def closed_port_url():
    """A URL on 127.0.0.1 where nothing listens: what a download sees with no network."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{ZIP_BASE}.zip"


def write_hosted_zip(folder, users=40, items=25):
    """A small implicit dataset zipped as RecBole hosts its datasets; returns (zip path, rows)."""
    rng = random.Random(0)
    rows = [(f"u{u}", f"i{i}") for u in range(users) for i in sorted(rng.sample(range(items), 6 + u % 7))]
    inter = "user_id:token\titem_id:token\n" + "".join(f"{u}\t{i}\n" for u, i in rows)
    item = "item_id:token\tgenre:token\n" + "".join(f"i{i}\tg{i % 3}\n" for i in range(items))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ZIP_BASE}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{ZIP_BASE}.inter", inter)
        z.writestr(f"{ZIP_BASE}.item", item)
    return path, rows


def config_for(name, data_path, **extra):
    return Config(model="BetaMultVAE", dataset=name,
                  config_dict={"data_path": str(data_path), "state": "WARNING", **extra})


def test_download_then_train_through_the_plugin(tmp_path, fast):
    _, rows = write_hosted_zip(tmp_path / "www")
    data = tmp_path / "data"
    with http_server(tmp_path / "www") as base:
        config = dict(fast, epochs=1, download=True, data_path=str(data), download_url=f"{base}/{ZIP_BASE}.zip",
                      eval_batch_size=256, topk=[5, 10, 20], valid_metric="NDCG@20")  # 25 items: no top 100
        result = run_recbole_beta("BetaMultVAE", NAME, config_dict=config)

    folder = data / NAME
    assert sorted(p.name for p in folder.iterdir()) == [f"{NAME}.inter", f"{NAME}.item"]  # renamed, zip deleted
    assert len((folder / f"{NAME}.inter").read_text().splitlines()) == len(rows) + 1
    assert set(result["test_result"]) == {f"{m}@{k}" for m in ("recall", "ndcg") for k in (5, 10, 20)}
    assert all(0 <= v <= 1 for v in result["test_result"].values())
    assert len(result["history"]) == 1
    assert dist.barrier.__module__.startswith("torch.distributed")  # the guard left nothing behind


def test_a_large_download_is_confirmed_without_a_prompt(tmp_path, monkeypatch, caplog):
    caplog.set_level("INFO")
    # every file counts as "over 1 GB": decide_download calls input(), which under pytest would raise
    monkeypatch.setattr(recbole_url, "GBFACTOR", 1.0)
    write_hosted_zip(tmp_path / "www")
    with http_server(tmp_path / "www") as base:
        config = config_for(NAME, tmp_path / "data", download=True, download_url=f"{base}/{ZIP_BASE}.zip")
        path = download_dataset(config)
    assert path == str(tmp_path / "data" / NAME / f"{NAME}.inter")
    # no prompt (input() raises under pytest): the size is logged as the answered question, before the download
    text = caplog.text
    assert "Will you proceed? (y/N) y (download=True)" in text
    assert text.index("Will you proceed?") < text.index(f"Downloading {base}/{ZIP_BASE}.zip")


def test_an_existing_dataset_is_not_downloaded_again(tmp_path):
    folder = tmp_path / "data" / NAME
    folder.mkdir(parents=True)
    inter = folder / f"{NAME}.inter"
    inter.write_text("user_id:token\titem_id:token\nu\ti\n")
    before = inter.stat()
    check_dataset(config_for(NAME, tmp_path / "data", download=True, download_url=closed_port_url()))
    # untouched: not rewritten, not replaced, nothing added beside it
    after = inter.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert inter.read_text() == "user_id:token\titem_id:token\nu\ti\n"
    assert sorted(p.name for p in (tmp_path / "data").rglob("*")) == [NAME, f"{NAME}.inter"]


def test_no_network_is_one_clear_line(tmp_path):
    url = closed_port_url()
    config = config_for("ml-20m", tmp_path / "data", download=True, download_url=url)
    with pytest.raises(DatasetNotFoundError) as info:
        check_dataset(config)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"dataset='ml-20m' could not be downloaded from {url} (URLError: ")
    assert f"put ml-20m.inter in {tmp_path}/data/ml-20m/ by hand (see dataset/README.md)" in message
    assert (f"python -m recbole_beta data convert path/to/ml-20m/ratings.csv --multvae --name ml-20m "
            f"--out {tmp_path}/data/") in message
    assert not list((tmp_path / "data").rglob("*.zip"))
    assert dist.barrier.__module__.startswith("torch.distributed")


def test_no_network_through_the_cli(tmp_path, monkeypatch, capsys):
    argv = ["--model=BetaMultVAE", "--dataset=ml-20m", f"--data_path={tmp_path}/data", "--download=True",
            f"--download_url={closed_port_url()}", "--state=WARNING"]
    monkeypatch.setattr(sys, "argv", ["run_recbole_beta.py", *argv])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("recbole-beta: dataset='ml-20m' could not be downloaded from http://127.0.0.1:")
    assert "\n" not in err and "Traceback" not in err


def test_without_download_the_message_offers_it_for_known_names(tmp_path):
    config = config_for("ml-20m", tmp_path / "data")
    assert config["download"] is False and is_downloadable(config)
    with pytest.raises(DatasetNotFoundError) as info:
        check_dataset(config)
    message = str(info.value)
    assert "\n" not in message
    assert f"{tmp_path}/data/ml-20m/ml-20m.inter does not exist" in message
    assert message.endswith("; or add --download=True to download it with RecBole's downloader")
    assert not (tmp_path / "data").exists()  # nothing fetched without the opt-in


def test_unknown_names_are_not_downloadable(tmp_path):
    config = config_for("no-such-data", tmp_path / "data")
    assert not is_downloadable(config)
    with pytest.raises(DatasetNotFoundError) as info:
        check_dataset(config)
    assert "--download" not in str(info.value)

    config = config_for("no-such-data", tmp_path / "data", download=True)
    with pytest.raises(DatasetNotFoundError) as info:
        check_dataset(config)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("dataset='no-such-data' cannot be downloaded: RecBole has no address for it")
    assert "python -m recbole_beta data convert" in message


def test_an_archive_without_the_inter_file_is_reported(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    with zipfile.ZipFile(www / "ml-20m.zip", "w") as z:  # GroupLens' raw layout, not RecBole's
        z.writestr("ml-20m/ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n")
    with http_server(www) as base:
        config = config_for("ml-20m", tmp_path / "data", download=True, download_url=f"{base}/ml-20m.zip")
        with pytest.raises(DatasetNotFoundError) as info:
            check_dataset(config)
    message = str(info.value)
    assert "\n" not in message
    assert "holds no ml-20m.inter" in message and "found ['ml-20m']" in message
    assert "--multvae" in message


# ---------------------------------------------------------------- under DDP

def _download_in_rank(rank, world_size, port, config, out):
    """A DDP rank (gloo): download, then note whether the files were there as soon as it returned."""
    dist.init_process_group("gloo", rank=rank, world_size=world_size, init_method=f"tcp://127.0.0.1:{port}")
    try:
        path = download_dataset(dict(config, local_rank=rank))
        Path(out, f"rank{rank}.json").write_text(json.dumps({"path": path, "there": Path(path).is_file()}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@SERIAL
def test_under_ddp_rank_zero_downloads_and_the_other_ranks_wait(tmp_path, monkeypatch):
    write_hosted_zip(tmp_path / "www")
    monkeypatch.setattr(SlowCountingHandler, "requests", [])
    monkeypatch.setattr(SlowCountingHandler, "delay", 1.0)  # a rank that did not wait would find no file
    with http_server(tmp_path / "www", SlowCountingHandler) as base:
        url = f"{base}/{ZIP_BASE}.zip"
        download_dataset(config_for(NAME, tmp_path / "alone", download=True, download_url=url))
        alone = list(SlowCountingHandler.requests)
        SlowCountingHandler.requests.clear()

        # the keys download_dataset reads; Config's data_path ends in the dataset's name
        config = {"dataset": NAME, "data_path": str(tmp_path / "data" / NAME), "download_url": url}
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_download_in_rank, args=(2, port, config, str(tmp_path)), nprocs=2)

    assert SlowCountingHandler.requests == alone  # one download: rank 0's
    inter = str(tmp_path / "data" / NAME / f"{NAME}.inter")
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {"path": inter, "there": True}
    assert sorted(p.name for p in (tmp_path / "data" / NAME).iterdir()) == [f"{NAME}.inter", f"{NAME}.item"]
