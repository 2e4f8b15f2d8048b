"""Data-parallel training (torchrun DDP, gloo on the CPU) against one process.

The equivalence claim and its tolerance. With the same seed and the same global batch, two
processes (each training on a disjoint half of every batch, gradients all-reduced, batch norm
over the global batch) compute the same steps as one process, up to the order of
floating-point sums. How far that order moves the result depends on the precision:

- float64 (the tiny model wrapped by ``dist_worker.Float64``): final weights within 1e-6 (seen:
  5e-8; the floor is the margin loss, which the head computes in float32), per-step losses
  within 1e-5 (they are recorded in float32), validation score means within 1e-6.
- float32 (what training runs in): AdamW's first steps divide each gradient entry by its own
  magnitude, so an entry near zero whose sign the summation order flips moves by a whole
  learning rate. One process run with 2 threads instead of 1 already differs from itself by as
  much (seen: 0.045 in the weights after 10 steps, for both comparisons). So the float32 check
  is: the first step's loss agrees within 1e-5 (same global batch, same forward), and the
  two-process run is no further from one process than one process is from itself on another
  thread count.

The wrong designs fail the float64 bound by four orders of magnitude: overlapping shards
(every rank on the same half batch) and per-process batch-norm statistics (seen: 0.49, 0.44).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from dist_worker import EPOCHS, FAIL_AT_STEP, tiny_fit
from torch import nn

from visage_ml.training import distributed
from visage_ml.training.batches import augment_batch
from visage_ml.training.config import AugmentConfig

WORKER = Path(__file__).resolve().parent / "dist_worker.py"
WEIGHTS_TOL_FP64 = 1e-6
LOSS_TOL = 1e-5
SCORE_TOL = 1e-6
BROKEN = 1e-2  # a wrong design moves the weights by more than this (seen: 0.44 - 0.49)
STEPS = EPOCHS * 5  # 42 training images, global batch 8
# In one process of `make test`: the two-process runs (module fixtures, 32 s) are made once.
pytestmark = pytest.mark.xdist_group("distributed")


def _torchrun(out: Path, *modes: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd.append(f"--log-dir={out / 'torchrun'}")  # not a torchelastic_* folder left in /tmp
    return subprocess.run(
        [*cmd, str(WORKER), str(out), *modes],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _max_diff(a: dict, b: dict) -> float:
    return max(
        float((a[m][k].double() - b[m][k].double()).abs().max())
        for m in a
        for k in a[m]
        if a[m][k].is_floating_point()
    )


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("ddp")
    proc = _torchrun(out, "sync", "nosync", "overlap", "resume", "fp32")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {p.stem: torch.load(p, weights_only=False, map_location="cpu") for p in out.glob("*.pt")}


@pytest.fixture(scope="module")
def one() -> dict[str, dict]:
    threads = torch.get_num_threads()
    try:
        return {"fp64": tiny_fit(None), "fp32": tiny_fit(None, fp64=False)}
    finally:
        torch.set_num_threads(threads)


def test_two_processes_match_one_process_up_to_summation_order(two, one):
    ref, got = one["fp64"], two["sync"]
    assert len(got["step_losses"]) == len(ref["step_losses"]) == STEPS
    assert _max_diff(ref["weights"], got["weights"]) < WEIGHTS_TOL_FP64
    assert np.allclose(got["step_losses"], ref["step_losses"], rtol=0, atol=LOSS_TOL)
    for mine, theirs in zip(got["history"], ref["history"], strict=True):
        for key in ("val_genuine_mean", "val_impostor_mean"):
            assert abs(mine[key] - theirs[key]) < SCORE_TOL, key
    # The final validation metric: the same (one flipped pair of 45 would be 0.022).
    assert got["val_tar"][-1] == ref["val_tar"][-1]


def test_overlapping_shards_break_the_match(two, one):
    ref, got = one["fp64"], two["overlap"]
    assert _max_diff(ref["weights"], got["weights"]) > BROKEN
    assert not np.allclose(got["step_losses"][1:], ref["step_losses"][1:], atol=0.1)


def test_per_process_batchnorm_statistics_break_the_match(two, one):
    # The design choice: batch norm over the global batch. Without it each process normalises
    # by its half batch's statistics, a different function from the first step on.
    got = two["nosync"]
    assert abs(got["step_losses"][0] - one["fp64"]["step_losses"][0]) > 1e-3
    assert _max_diff(one["fp64"]["weights"], got["weights"]) > BROKEN


def test_float32_two_processes_differ_no_more_than_one_process_on_two_threads(two, one):
    ref, got = one["fp32"], two["fp32"]
    assert abs(got["step_losses"][0] - ref["step_losses"][0]) < LOSS_TOL
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        other = tiny_fit(None, fp64=False, threads=2)
    finally:
        torch.set_num_threads(threads)
    self_noise = _max_diff(ref["weights"], other["weights"])
    assert _max_diff(ref["weights"], got["weights"]) <= 2 * self_noise + 1e-6


def test_resuming_after_an_epoch_continues_exactly(two):
    uninterrupted, resumed = two["sync"], two["resume"]
    assert resumed["step_losses"] == uninterrupted["step_losses"][STEPS // EPOCHS :]
    assert _max_diff(uninterrupted["weights"], resumed["weights"]) == 0.0


def test_a_failing_rank_stops_the_job_with_its_error(tmp_path):
    t0 = time.perf_counter()
    proc = _torchrun(tmp_path, "fail", timeout=90)
    assert proc.returncode != 0
    assert "rank 1 failed on purpose" in proc.stderr
    assert time.perf_counter() - t0 < 60  # torchrun stopped rank 0: no wait for a timeout
    assert not list(tmp_path.glob("*.pt"))
    assert FAIL_AT_STEP < STEPS


# ---------------------------------------------------------------------------------------------
# the pieces, in one process
# ---------------------------------------------------------------------------------------------


def _ctx(rank: int, world: int) -> distributed.DistContext:
    return distributed.DistContext(
        rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu")
    )


@pytest.mark.parametrize("world", [2, 4])
def test_shards_are_disjoint_and_cover_the_global_batch_in_order(world):
    idx = np.sort(np.random.default_rng(0).choice(1000, 16, replace=False))
    shares = [_ctx(r, world).shard(idx) for r in range(world)]
    assert all(len(s) == 16 // world for s, _ in shares)
    assert np.array_equal(np.concatenate([s for s, _ in shares]), idx)
    assert [off for _, off in shares] == [r * 16 // world for r in range(world)]


def test_a_global_batch_that_does_not_divide_is_a_clear_error():
    with pytest.raises(ValueError, match=r"multiple of distributed\.nproc"):
        distributed.check_global_batch(10, 4)
    with pytest.raises(ValueError, match="does not split evenly"):
        _ctx(0, 3).shard(np.arange(8))
    # Fewer training images than batch_size: the one batch of all of them must divide too.
    with pytest.raises(ValueError, match="global batch of 7"):
        distributed.check_global_batch(64, 2, n_images=7)
    assert distributed.check_global_batch(64, 4, n_images=1000) == 16


def test_each_share_is_augmented_as_its_slice_of_the_global_batch():
    cfg = AugmentConfig(flip=True, color_jitter=0.3, crop_scale=(0.7, 1.0))
    batch = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (8, 24, 24, 3), np.uint8))
    whole = augment_batch(batch, cfg, torch.Generator().manual_seed(3))
    for offset in (0, 4):
        share = augment_batch(
            batch[offset : offset + 4],
            cfg,
            torch.Generator().manual_seed(3),
            part=(offset, 8),
        )
        assert torch.allclose(share, whole[offset : offset + 4], atol=1e-5)
    # Drawing only for the share (the naive way) augments its images differently.
    naive = augment_batch(batch[4:], cfg, torch.Generator().manual_seed(3))
    assert not torch.allclose(naive, whole[4:], atol=1e-2)
    with pytest.raises(ValueError, match="does not hold"):
        augment_batch(batch[:4], cfg, torch.Generator(), part=(6, 8))


def test_batchnorm_conversion_shares_parameters_and_reverts():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.BatchNorm1d(16))
    weight = net[1].weight
    keys = set(net.state_dict())
    assert distributed.convert_batchnorm(net, cuda=False) == 2
    assert isinstance(net[1], distributed.CrossRankBatchNorm)
    assert net[1].weight is weight and set(net.state_dict()) == keys
    # Outside a process group it is plain batch norm.
    x = torch.randn(5, 3, 4, 4)
    converted = net(x)
    assert distributed.revert_batchnorm(net) == 2
    assert type(net[1]) is nn.BatchNorm2d and type(net[3]) is nn.BatchNorm1d
    assert net[1].weight is weight and not hasattr(net[1], "_visage_bn_class")
    net[1].num_batches_tracked.zero_()
    net[3].num_batches_tracked.zero_()
    assert converted.shape == (5, 16)


def test_backend_and_worker_environment():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert distributed.resolve_backend("auto", cpu) == "gloo"
    assert distributed.resolve_backend("auto", gpu) == "nccl"
    with pytest.raises(ValueError, match="auto or gloo"):
        distributed.resolve_backend("nccl", cpu)
    assert distributed.worker_env({}) is None
    assert distributed.worker_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == (1, 2, 1)
    with pytest.raises(RuntimeError, match="torchrun"):
        distributed.init_from_env()


def test_the_gpu_benchmark_runs_its_code_path_on_the_cpu(capsys):
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_train_gpu.py"
    spec = importlib.util.spec_from_file_location("_bench_train_gpu", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        argv = ["--device", "cpu", "--quick", "--nproc", "1", "--steps", "1"]
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    out = json.loads(capsys.readouterr().out)
    fp32 = out["one_device"]["fp32"]
    assert fp32["real_images_per_s"] > 0 and fp32["synthetic_images_per_s"] > 0
    assert fp32["ratio"] == pytest.approx(
        fp32["real_images_per_s"] / fp32["synthetic_images_per_s"], abs=2e-3
    )
    assert isinstance(out["meets_goal"], bool)
