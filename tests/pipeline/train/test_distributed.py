"""pipeline.train.distributed on CPU: environment parsing, exact validation shards, and two gloo processes
(torch.multiprocessing) for the gradient average and the sharded evaluation."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ddfp.data.spec import get_spec
from ddfp.model.deeplab import build_model
from ddfp.step import Batch
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


def _first_step(env: DistEnv, data):
    """One optimiser step of supervised training at train.global_batch 4 on `env`'s ranks: the
    student's weights after it and the labelled images it saw."""
    from ddfp.methods import phase_at
    from pipeline.train.fit import steps
    from pipeline.train.learner import Learner
    from pipeline.train.loaders import train_loaders

    cfg, root = data
    torch.set_num_threads(1)
    loaders = train_loaders(cfg, root / "dataset", root / "splits" / "8", env.rank, env.world_size)
    learner = Learner(cfg, torch.device("cpu"), loaders.iters_per_epoch, env)
    loaders.set_epoch(0)
    micro = next(steps(zip(loaders.labeled, loaders.unlabeled), loaders.accumulation))
    batches = [Batch.from_samples(bl, bu, lambda x: x, lambda x: x) for bl, bu in micro]
    learner.run_iteration(batches, phase_at(0, cfg), 0, diagnostics=False)
    # Parameters only: BN running statistics move once per micro-batch here, once per rank there.
    weights = {k: v.detach().clone() for k, v in learner.models.student.named_parameters()}
    return {"weights": weights, "images": torch.cat([b.img_x for b in batches]),
            "accumulation": loaders.accumulation}


@pytest.mark.slow
def test_accumulation_takes_the_step_of_more_processes(tiny_data, tmp_path):
    # The paper's global batch on fewer GPUs: one process accumulating 2 micro-batches of 2 takes the
    # step of 2 gloo processes of 2 each, on the same images. BN statistics are per micro-batch, as
    # they are per process without SyncBN, so train-mode BN agrees; dropout off (its draws differ).
    cfg = params.load(None, "smoke", {"model.pretrained": False, "data.crop_size": 32, "model.dropout": 0.0,
                                      "train.method": "supervised", "train.batch_size": 2, "train.global_batch": 4,
                                      "run.channels_last": False})
    ranks = _spawn(tmp_path, 2, _first_step, (cfg, tiny_data))
    (one,) = [_first_step(distributed.SINGLE, (cfg, tiny_data))]
    assert one["accumulation"] == 2 and [r["accumulation"] for r in ranks] == [1, 1]
    assert torch.equal(one["images"], torch.cat([r["images"] for r in ranks]))  # the same images, in rank order
    for name, value in one["weights"].items():
        torch.testing.assert_close(value, ranks[0]["weights"][name], rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(ranks[1]["weights"][name], ranks[0]["weights"][name], msg=name)
    initial = _first_step_initial(cfg)
    changed = sum(not torch.equal(v, initial[k]) for k, v in one["weights"].items())
    assert changed > 10  # the step moved the weights: the comparison is not of two untouched models


def _first_step_initial(cfg):
    from pipeline.train.learner import Learner

    return {k: v.detach().clone() for k, v in Learner(cfg, torch.device("cpu"), 10).models.student.named_parameters()}


def test_a_global_batch_that_the_processes_cannot_reach_is_refused():
    from ddfp.config import ConfigError
    from pipeline.train.loaders import accumulation_steps, global_batch_line

    cfg = params.load(None, "pascal")
    assert cfg.train.global_batch == 16
    assert [accumulation_steps(cfg, w) for w in (1, 2, 4)] == [4, 2, 1]
    assert "4 accumulated micro-batches" in global_batch_line(cfg, 1) and "BN statistics" in global_batch_line(cfg, 1)
    with pytest.raises(ConfigError, match="train.global_batch: 16 is not a multiple of train.batch_size 4 x 3"):
        accumulation_steps(cfg, 3)
