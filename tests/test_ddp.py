"""What the CPU can check of RecBole's DDP mode (nccl, CUDA only): per-rank step counting, one
beta schedule on every rank, and one checkpoint (rank 0's)."""

import math

import pytest
import torch
from torch.utils.data import BatchSampler, DistributedSampler

from recbole_beta.config import Config
from recbole_beta.model.beta_multvae import steps_per_epoch
from recbole_beta.quick_start import prepare
from recbole_beta.registry import get_model


def ddp_view(config, world_size, rank):
    """The config a rank sees under DDP (RecBole sets these in Config._init_device)."""
    config["single_spec"], config["world_size"], config["local_rank"] = False, world_size, rank
    return config


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


def test_every_rank_builds_the_same_schedule(fast):
    config = Config(model="CyclicalBetaMultVAE", dataset="ml-100k",
                    config_dict={**fast, "epochs": 10, "n_cycles": 2, "train_batch_size": 256})
    _, (train, _, _), _, _ = prepare(config)
    schedules = []
    for rank in range(2):
        model_class = get_model("CyclicalBetaMultVAE")
        instance = model_class(ddp_view(config, 2, rank), train._dataset)
        strategy = instance.beta_strategy
        # 944 ids over 2 ranks = 472 each, in batches of 128: 4 steps per epoch, 40 per run
        assert strategy.cycle_length == 40 / 2
        schedules.append([(strategy.step(), strategy.beta)[1] for _ in range(40)])
    assert schedules[0] == schedules[1]


def test_only_rank_zero_writes_the_checkpoint(fast, tmp_path):
    config = Config(model="ScaledBetaMultVAE", dataset="ml-100k", config_dict={**fast, "checkpoint_dir": str(tmp_path)})
    _, _, _, trainer = prepare(config)
    ddp_view(config, 2, 1)
    trainer._save_checkpoint(0, verbose=False)
    assert not list(tmp_path.glob("*.pth"))
    ddp_view(config, 2, 0)
    trainer._save_checkpoint(0, verbose=False)
    (checkpoint,) = list(tmp_path.glob("*.pth"))
    state = torch.load(checkpoint, weights_only=True)
    assert list(state["other_parameter"]) == ["beta_strategy"]  # the strategy state, once
