"""DistributedDataParallel and FSDP2 (fully_shard) over rnnfused modules: 2 CPU processes
with gloo, each on half of the batch, give gradients bitwise identical to one process that
averages the gradients of the two halves, and equal (float32 summation order) to one
process on the whole batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import rnnfused

WORLD = 2
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        rnnfused.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True))


def _batch():
    return torch.randn(4, 6, 3, generator=torch.Generator().manual_seed(1))


def _grads(model, x):
    model.zero_grad()
    model(x)[0].square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _worker(rank, out_dir):
    # A file rendezvous: a free TCP port probed beforehand can be taken by another
    # process before the workers bind it (a rare failure, seen once).
    rendezvous = os.path.join(out_dir, "rendezvous")
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=WORLD)
    shard = _batch().chunk(WORLD)[rank]
    results = {}
    ddp = torch.nn.parallel.DistributedDataParallel(_model())
    ddp(shard)[0].square().mean().backward()
    results["ddp"] = {n: p.grad.clone() for n, p in ddp.module.named_parameters()}
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        fully_shard = None
    if fully_shard is not None:
        model = _model()
        fully_shard(model[0])
        fully_shard(model)
        model(shard)[0].square().mean().backward()
        results["fsdp2"] = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()
    # Out without the interpreter's teardown: on two Zen 5 vCPUs (torch 2.14.1) a worker
    # aborted there ("terminate called without an active exception", SIGABRT) in about
    # one run in ten, after its results were saved and the group destroyed, with
    # torch.nn's LSTM and rnnfused not imported as well.
    os._exit(0)


def test_ddp_and_fsdp2_gradients_match_one_process(tmp_path):
    mp.start_processes(_worker, args=(str(tmp_path),), nprocs=WORLD, start_method="spawn")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    model = _model()
    x = _batch()
    halves = [_grads(model, shard) for shard in x.chunk(WORLD)]
    averaged = {n: sum(h[n] for h in halves) / WORLD for n in halves[0]}
    whole = _grads(model, x)
    for strategy in ("ddp", "fsdp2"):
        if strategy not in results[0]:
            continue
        for rank in range(WORLD):
            grads = results[rank][strategy]
            assert list(grads) == list(whole)
            for n in whole:
                assert torch.equal(grads[n], averaged[n]), (strategy, rank, n)
                torch.testing.assert_close(grads[n], whole[n], atol=1e-6, rtol=1e-5)
