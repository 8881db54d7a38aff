"""pipeline.train.distributed on CPU: environment parsing, exact validation shards, and two gloo processes
(torch.multiprocessing) for the gradient average and the sharded evaluation."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ddfp.data.spec import get_spec
from ddfp.model.deeplab import build_model
from pipeline import params
from pipeline.stages.splits import run_splits
from pipeline.stages.synthetic import write_synthetic
from pipeline.train import distributed
from pipeline.train.distributed import DistEnv, env_from, shard
from pipeline.train.loaders import val_loader
from pipeline.train.validation import confusion


def test_env_from_torchrun_submitit_and_nothing():
    assert env_from({}) == distributed.SINGLE and not env_from({}).distributed
    env = env_from({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.source, env.is_main) == (3, 4, 1, "torchrun", False)
    assert env_from({"RANK": "0", "WORLD_SIZE": "2", "SUBMITIT_EXECUTOR": "slurm"}).source == "slurm"
    with pytest.raises(ValueError, match="RANK=2"):
        env_from({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="torch.distributed"):
        env_from({"RANK": "x", "WORLD_SIZE": "2"})


def test_init_without_launcher_is_a_single_process(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SUBMITIT_EXECUTOR", "SLURM_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    env = distributed.init("cpu")
    assert env == distributed.SINGLE and not dist.is_initialized()
    assert env.device("cpu") == torch.device("cpu")
    assert distributed.average_gradients(env, [], [torch.tensor(1.0)])[0] == 1.0


@pytest.mark.parametrize("n", [0, 1, 5, 16, 1449])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_cover_every_item_exactly_once(n, world):
    parts = [shard(n, r, world) for r in range(world)]
    assert sorted(i for p in parts for i in p) == list(range(n))  # no padding, no duplicate
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def _worker(rank: int, world: int, init_file: str, data, out, fn):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(fn(DistEnv(rank, world, rank, "test"), data), f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path, world, fn, data=None):
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), data, str(tmp_path / "out"), fn), nprocs=world)
    return [torch.load(f"{tmp_path / 'out'}.{r}", weights_only=True) for r in range(world)]


def _grads(env: DistEnv, _):
    # rank r: a.grad = r + 1, b.grad only on rank 1, c.grad nowhere, loss r + 1.
    a, b, c = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    a.grad = torch.full((3,), env.rank + 1.0)
    if env.rank == 1:
        b.grad = torch.full((3,), 4.0)
    (loss,) = distributed.average_gradients(env, [a, b, c], [torch.tensor(env.rank + 1.0)], bucket_numel=2)
    return {"a": a.grad, "b": b.grad, "c_none": c.grad is None, "loss": loss,
            "flag": distributed.agree(env, env.rank == 1, torch.device("cpu"))}


def test_gradient_average_over_two_gloo_ranks(tmp_path):
    for res in _spawn(tmp_path, 2, _grads):
        assert torch.equal(res["a"], torch.full((3,), 1.5))  # mean of 1 and 2
        assert torch.equal(res["b"], torch.full((3,), 2.0))  # absent on rank 0 = zero there
        assert res["c_none"] and res["loss"] == 1.5 and res["flag"]


def _confusion(env: DistEnv, data):
    cfg, root = data
    torch.manual_seed(0)
    model = build_model(cfg.model, get_spec(cfg.data.dataset).num_classes)
    loader = val_loader(cfg, root / "dataset", root / "splits" / "8", env.rank, env.world_size)
    return {"cm": confusion(model, loader, cfg, torch.device("cpu")), "n": len(loader.dataset)}


@pytest.mark.slow
def test_evaluation_on_two_ranks_equals_one_rank(tmp_path):
    # Its own dataset, not the shared tiny_data: 15 validation images (the smoke profile has 16), a
    # count two ranks cannot share evenly.
    cfg = params.load(None, "smoke", {"model.pretrained": False, "data.crop_size": 32, "synthetic.num_val": 15})
    write_synthetic(cfg, tmp_path / "dataset")
    run_splits(cfg, tmp_path / "dataset", tmp_path / "splits")
    (single,) = [_confusion(distributed.SINGLE, (cfg, tmp_path))]
    ranks = _spawn(tmp_path, 2, _confusion, (cfg, tmp_path))
    assert [r["n"] for r in ranks] == [8, 7]  # 15 images: no padding to 16
    assert single["cm"].sum() > 0
    for r in ranks:
        assert torch.equal(r["cm"], single["cm"])  # exact: integer counts, each image once
