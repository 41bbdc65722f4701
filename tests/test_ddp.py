"""DDP: real two-process runs on ml-100k on the CPU (gloo), the step counting behind them, the
backend choice (nccl on GPUs, gloo otherwise) and rank 0's checkpoint.

The two-process runs go through ``quick_start.run`` as ``--nproc=2`` does. Each rank appends its
beta strategy's state after every training step to a file, so the ranks' trajectories can be
compared step by step.
"""

import json
import math
import os
import socket
import threading
from pathlib import Path

import pytest
import torch
from torch.utils.data import BatchSampler, DistributedSampler

from conftest import SERIAL
from recbole_beta import quick_start
from recbole_beta.checkpoint import load_checkpoint
from recbole_beta.config import Config
from recbole_beta.errors import CheckpointError, ConfigError, DatasetNotFoundError
from recbole_beta.model.beta_multvae import BetaMultVAE, steps_per_epoch
from recbole_beta.quick_start import prepare

#: small and quick: 944 user ids over 2 ranks in batches of 128, 4 steps an epoch on each rank
SMALL = {
    "show_progress": False, "train_batch_size": 256, "mlp_hidden_size": [64], "latent_dimension": 32,
    "topk": [10], "valid_metric": "NDCG@10",
}
STEPS_PER_EPOCH = 4
#: a controller whose beta moves (the KL soon passes its target), with gains large enough that the
#: ranks' own batch KLs would send them apart
CONTROL = {"kl_target": 0.05, "kp": 0.05, "ki": 0.02, "controller_beta_max": 1.0}
#: every strategy, and a product through which the KL reaches the controller
STRATEGIES = {
    "constant": {"beta_strategy": "constant", "beta": 0.3},
    "annealed": {"beta_strategy": "annealed", "anneal_cap": 0.5, "total_anneal_steps": 10},
    "cyclical": {"beta_strategy": "cyclical", "n_cycles": 2, "beta_max": 0.4},
    "scaled": {"beta_strategy": "scaled", "gamma": 0.002},
    "controlled": {"beta_strategy": "controlled", **CONTROL},
    "scaled_x_controlled": {"beta_strategy": ["scaled", "controlled"], "gamma": 0.01, **CONTROL},
}
#: what a spawned rank reads: where to write its trace (dir, name), and the ports of the runs when
#: one spawn makes several (ports)
_ENV = "RECBOLE_BETA_TEST_DDP"
_trace = {}


def free_ports(n=1):
    """Ports nobody listens on now (bound to port 0 together, then released)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [str(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _record(entry):
    with open(_trace["file"], "a") as f:
        f.write(json.dumps(entry) + "\n")


def _record_steps():
    """In a rank: append to _trace['file'] the strategy's state and beta after each training step,
    and the strategy state of each checkpoint loaded (to resume, or to test the best model)."""
    calculate_loss, load_other_parameter = BetaMultVAE.calculate_loss, BetaMultVAE.load_other_parameter

    def recording_calculate_loss(self, interaction):
        losses = calculate_loss(self, interaction)
        # the weights this step starts from: ranks whose gradients are all-reduced hold the same
        weights = [float(p.detach().double().sum()) for p in self.parameters()]
        _record({"state": self.beta_strategy.state_dict(), "beta": self.beta_strategy.beta, "weights": weights})
        return losses

    def recording_load_other_parameter(self, para):
        _record({"loaded": para["beta_strategy"]})
        return load_other_parameter(self, para)

    BetaMultVAE.calculate_loss = recording_calculate_loss
    BetaMultVAE.load_other_parameter = recording_load_other_parameter


def recording_rank(rank, model, dataset, config_file_list, kwargs):
    """quick_start._run_rank, recording the rank's beta trajectory."""
    spec = json.loads(os.environ[_ENV])
    _trace["file"] = Path(spec["dir"]) / f"{spec['name']}.rank{rank}.jsonl"
    _record_steps()
    from recbole_beta.quick_start import _run_rank  # the real one: this process imported it afresh

    _run_rank(rank, model, dataset, config_file_list, kwargs)


def every_strategy_rank(rank, model, dataset, config_file_list, kwargs):
    """quick_start._run_rank once per strategy in this rank's process, each run with its own process
    group (on its own port), checkpoint folder and trace."""
    spec = json.loads(os.environ[_ENV])
    _record_steps()
    from recbole_beta.quick_start import _run_rank

    for (name, overrides), port in zip(STRATEGIES.items(), spec["ports"]):
        _trace["file"] = Path(spec["dir"]) / f"{name}.rank{rank}.jsonl"
        config_dict = dict(kwargs["config_dict"], **overrides, port=port, checkpoint_dir=f"saved/{name}")
        _run_rank(rank, model, dataset, config_file_list, dict(kwargs, config_dict=config_dict, queue=None))


def traces(folder, name):
    """Each rank's records, in order."""
    return [[json.loads(line) for line in (folder / f"{name}.rank{rank}.jsonl").read_text().splitlines()]
            for rank in range(2)]


def steps(trace):
    return [entry for entry in trace if "state" in entry]


def loads(trace):
    return [entry["loaded"] for entry in trace if "loaded" in entry]


@pytest.mark.slow
@SERIAL
def test_every_rank_steps_the_same_beta_trajectory(tmp_path, monkeypatch):
    monkeypatch.setenv(_ENV, json.dumps({"dir": str(tmp_path), "ports": free_ports(len(STRATEGIES))}))
    monkeypatch.setattr(quick_start, "_run_rank", every_strategy_rank)
    epochs = 2
    quick_start.run("BetaMultVAE", "ml-100k", config_dict={**SMALL, "epochs": epochs, "state": "WARNING",
                                                           "results_dir": None}, nproc=2, port=free_ports()[0])
    for name in STRATEGIES:
        rank0, rank1 = traces(tmp_path, name)
        assert [step["state"]["step_count"] for step in steps(rank0)] == list(range(1, epochs * STEPS_PER_EPOCH + 1))
        # exactly: state and beta at every step, and the same best checkpoint tested on both ranks
        assert rank0 == rank1, name
        assert len(loads(rank0)) == 1, name
        assert len(list((tmp_path / "saved" / name).glob("*.pth"))) == 1, name
    # the schedules and the controller did move
    assert len({step["beta"] for step in steps(traces(tmp_path, "cyclical")[0])}) > 2
    controlled = steps(traces(tmp_path, "controlled")[0])
    assert len({step["beta"] for step in controlled}) == len(controlled)
    assert controlled[-1]["beta"] > controlled[0]["beta"]


@pytest.mark.slow
@SERIAL
def test_one_checkpoint_one_report_and_resume_continues_it(tmp_path, monkeypatch):
    def run(name, epochs, resume=None):
        monkeypatch.setenv(_ENV, json.dumps({"dir": str(tmp_path), "name": name}))
        config = {**SMALL, **STRATEGIES["controlled"], "epochs": epochs, "state": "INFO"}
        return quick_start.run("BetaMultVAE", "ml-100k", config_dict=config, resume=resume, nproc=2,
                               port=free_ports()[0])

    monkeypatch.setattr(quick_start, "_run_rank", recording_rank)
    first = run("first", epochs=2)
    # rank 0's result comes back, and only rank 0 reports: one result file, one "test result" line
    assert first is not None and set(first["test_result"]) == {"recall@10", "ndcg@10"}
    (result_file,) = list(Path("results").glob("*.json"))
    assert first["result_file"] == str(result_file)
    logged = "".join(path.read_text() for path in Path("log").rglob("*.log"))
    assert logged.count("test result") == 1
    (checkpoint,) = list(Path("saved").glob("*.pth"))  # one checkpoint, rank 0's
    assert first["checkpoint"] == str(checkpoint)
    state = load_checkpoint(checkpoint)
    done = state["epoch"] + 1
    rank0, rank1 = traces(tmp_path, "first")
    assert rank0 == rank1  # the same steps, and both ranks tested the checkpoint's model
    assert state["other_parameter"]["beta_strategy"] == steps(rank0)[done * STEPS_PER_EPOCH - 1]["state"]
    assert loads(rank0) == [state["other_parameter"]["beta_strategy"]]

    resumed = run("resumed", epochs=done + 2, resume=str(checkpoint))
    # both ranks start where the checkpoint stopped, with its controller, and go on together
    rank0, rank1 = traces(tmp_path, "resumed")
    assert rank0 == rank1
    assert loads(rank0)[0] == state["other_parameter"]["beta_strategy"]
    assert [step["state"]["step_count"] for step in steps(rank0)] == list(
        range(done * STEPS_PER_EPOCH + 1, (done + 2) * STEPS_PER_EPOCH + 1)
    )
    assert [h["epoch"] for h in resumed["history"]] == list(range(done + 2))
    assert resumed["history"][:done] == first["history"][:done]
    assert list(Path("saved").glob("*.pth")) == [checkpoint]  # the resumed run saves into it


@pytest.mark.slow
@SERIAL
def test_the_sparse_path_trains_the_same_weights_on_both_ranks(tmp_path, monkeypatch):
    """The sparse path's first layer holds W^T as its parameter and its output layer is a custom
    autograd function: DDP must still all-reduce their gradients, so both ranks step alike."""
    monkeypatch.setenv(_ENV, json.dumps({"dir": str(tmp_path), "name": "sparse"}))
    monkeypatch.setattr(quick_start, "_run_rank", recording_rank)
    result = quick_start.run("BetaMultVAE", "ml-100k", nproc=2, port=free_ports()[0], config_dict={
        **SMALL, **STRATEGIES["annealed"], "sparse_input": True, "epochs": 2, "state": "WARNING", "results_dir": None})
    rank0, rank1 = traces(tmp_path, "sparse")
    assert len(steps(rank0)) == 2 * STEPS_PER_EPOCH
    assert rank0 == rank1
    first, last = steps(rank0)[0]["weights"], steps(rank0)[-1]["weights"]
    assert all(a != b for a, b in zip(first, last))  # every parameter was trained
    assert result["test_result"]["ndcg@10"] > 0


def big_result_rank(rank, model, dataset, config_file_list, kwargs):
    """A rank 0 whose result is larger than a pipe's buffer (64 KB), as a long run's history is."""
    if rank == 0:
        kwargs["queue"].put({"history": [{"epoch": epoch, "note": f"{epoch:04d}" * 250} for epoch in range(300)]})


@pytest.mark.slow
@SERIAL
def test_a_result_larger_than_the_pipe_comes_back(monkeypatch):
    monkeypatch.setattr(quick_start, "_run_rank", big_result_rank)
    box = {}
    thread = threading.Thread(
        target=lambda: box.update(result=quick_start.run("BetaMultVAE", "ml-100k", nproc=2, port=free_ports()[0])),
        daemon=True,
    )
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "run() hangs: rank 0 cannot exit before its result is read"
    assert len(box["result"]["history"]) == 300


@pytest.mark.parametrize("config_dict,resume,error", [
    ({"beta_strategy": "constant", "beta": -1}, None, ConfigError),
    ({"dataset": "no-such-data"}, None, DatasetNotFoundError),
    ({}, "missing.pth", CheckpointError),
])
def test_bad_input_fails_in_one_line_before_any_rank_starts(monkeypatch, config_dict, resume, error):
    monkeypatch.setattr(quick_start, "_run_rank", None)  # spawning ranks would fail otherwise
    with pytest.raises(error):
        quick_start.run("BetaMultVAE", None if "dataset" in config_dict else "ml-100k", config_dict=config_dict,
                        resume=resume, nproc=2, port=free_ports()[0])


@pytest.mark.parametrize("use_gpu,cuda,backend,device", [
    (True, True, "nccl", "cuda:1"),  # RecBole's own path: nccl on cuda:local_rank
    (True, False, "gloo", "cpu"),
    (False, True, "gloo", "cpu"),
])
def test_ddp_backend_is_nccl_on_gpus_and_gloo_otherwise(monkeypatch, use_gpu, cuda, backend, device):
    started = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # this test process keeps its threads
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend, **kw: started.update(backend=backend))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    config = Config(model="ConstantBetaMultVAE", dataset="ml-100k", config_dict={
        "use_gpu": use_gpu, "gpu_id": "0,1", "local_rank": 1, "nproc": 2, "world_size": 2, "offset": 0,
        "ip": "localhost", "port": "1", "state": "WARNING",
    })
    assert started["backend"] == backend
    assert str(config["device"]) == device and config["single_spec"] is False


@pytest.mark.parametrize("n_users,batch,world", [(944, 256, 2), (944, 2048, 2), (136678, 2048, 4), (1001, 100, 3)])
def test_steps_per_epoch_is_what_each_rank_iterates(n_users, batch, world):
    config = {"train_batch_size": batch, "single_spec": False, "world_size": world}
    expected = steps_per_epoch(config, n_users)
    for rank in range(world):
        # RecBole's AbstractDataLoader under DDP: a DistributedSampler and batch // world_size
        sampler = DistributedSampler(range(n_users), num_replicas=world, rank=rank, shuffle=True, drop_last=False)
        batches = list(BatchSampler(sampler, max(1, batch // world), drop_last=False))
        assert len(batches) == expected
    assert steps_per_epoch({"train_batch_size": batch, "single_spec": True}, n_users) == math.ceil(n_users / batch)


def test_only_rank_zero_writes_the_checkpoint(fast, tmp_path):
    config = Config(model="ScaledBetaMultVAE", dataset="ml-100k", config_dict={**fast, "checkpoint_dir": str(tmp_path)})
    _, _, _, trainer = prepare(config)
    config["single_spec"], config["world_size"], config["local_rank"] = False, 2, 1
    trainer._save_checkpoint(0, verbose=False)
    assert not list(tmp_path.glob("*.pth"))
    config["local_rank"] = 0
    trainer._save_checkpoint(0, verbose=False)
    (checkpoint,) = list(tmp_path.glob("*.pth"))
    state = torch.load(checkpoint, weights_only=True)
    assert list(state["other_parameter"]) == ["beta_strategy"]  # the strategy state, once
