import io
import itertools
import time

import numpy as np
import pytest
import torch
from train_fakes import fake_faces

from visage_ml.models.backbones import create_backbone
from visage_ml.models.demographic import create_demographic_net
from visage_ml.models.heads import create_head
from visage_ml.preprocess import standardize
from visage_ml.training import loop
from visage_ml.training.batches import augment_batch, epoch_batches
from visage_ml.training.config import (
    AugmentConfig,
    DemographicTargets,
    LoopConfig,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from visage_ml.training.loop import fit_demographics, fit_embedder, lr_factor

SIZE = 32


@pytest.fixture(scope="module")
def faces():
    imgs, ids = fake_faces(10, 6, SIZE)
    return imgs, ids


def _fit(faces, *, epochs=3, resume=None, on_epoch_end=None, batch_size=8, **cfg):
    imgs, ids = faces
    train, val = np.where(ids >= 3)[0], np.where(ids < 3)[0]
    seed_everything(1)
    model = create_backbone("mobilefacenet", embedding_dim=32, input_size=SIZE)
    head = create_head("arcface", embedding_dim=32, num_classes=7, s=16.0, m2=0.2)
    config = LoopConfig(
        epochs=epochs, batch_size=batch_size, lr=3e-3, progress=False, seed=5, device="cpu", **cfg
    )
    return fit_embedder(
        model,
        head,
        images=imgs,
        rows=train,
        labels=ids[train] - 3,
        val_rows=val,
        val_labels=ids[val],
        config=config,
        resume=resume,
        on_epoch_end=on_epoch_end,
    )


def _roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_tiny_run_lowers_the_loss_and_resumes_exactly(faces):
    saved = {}
    first = _fit(faces, on_epoch_end=lambda rec, st: saved.update({rec["epoch"]: _roundtrip(st)}))
    losses = [h["loss"] for h in first.history]
    assert losses[-1] < 0.6 * losses[0]
    assert first.epochs_run == 3 and first.stopped == "completed"
    tars = [h["val_tar"] for h in first.history]
    # The run keeps its best epoch by validation TAR, not its last one.
    assert (first.best_metric, first.best_epoch) == (max(tars), 1 + tars.index(max(tars)))
    assert first.images_per_second > 0

    # Resuming after epoch 1 (from a weights_only round trip) repeats epochs 2-3 bit for bit.
    resumed = _fit(faces, resume=saved[1])
    steps = len(first.step_losses) // 3
    assert resumed.step_losses[0] == first.step_losses[steps]
    assert resumed.step_losses == first.step_losses[steps:]
    assert [h["loss"] for h in resumed.history] == losses
    for k, v in first.best_state.items():
        assert torch.equal(v, resumed.best_state[k]), k


def test_a_finished_run_resumes_to_its_result(faces):
    saved = {}
    first = _fit(faces, epochs=1, on_epoch_end=lambda rec, st: saved.update(st=_roundtrip(st)))
    again = _fit(faces, epochs=1, resume=saved["st"])
    assert again.step_losses == []
    assert again.history == first.history
    assert again.best_metric == first.best_metric


def test_step_and_time_budgets_stop_early(faces):
    result = _fit(faces, epochs=5, max_steps=3)
    assert result.stopped == "max_steps"
    assert len(result.step_losses) == 3
    result = _fit(faces, epochs=50, max_minutes=1e-6)
    assert result.stopped == "time_budget"
    assert result.epochs_run == 1


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_training_computes_the_same_loss_and_keeps_the_weights_names(
    faces, backend, monkeypatch
):
    monkeypatch.setattr(loop, "COMPILE_BACKEND", backend)
    # 42 training images in batches of 6: one shape to compile (a short last batch would
    # compile a second, dynamic graph: seconds on the CPU, and nothing more to check).
    eager = _fit(faces, epochs=2, batch_size=6)
    compiled = _fit(faces, epochs=2, batch_size=6, compile=True)
    # The first step's loss is the same function of the same weights and batch.
    assert compiled.step_losses[0] == pytest.approx(eager.step_losses[0], rel=1e-4)
    assert compiled.history[-1]["loss"] < compiled.history[0]["loss"]
    assert "val_tar" in compiled.history[-1]  # validation ran through the compiled model
    # The saved weights load into a plain network, as the export stage does.
    assert compiled.best_state.keys() == eager.best_state.keys()
    plain = create_backbone("mobilefacenet", embedding_dim=32, input_size=SIZE)
    plain.load_state_dict(compiled.best_state)


def test_images_per_second_leaves_out_the_first_step_which_compiles_and_autotunes(
    faces, monkeypatch
):
    # A compiled run spends its first step compiling (tens of seconds on a GPU host): the
    # images/s a user compares between eager and compiled runs must be that of training.
    real = loop.augment_batch
    calls = []

    def slow_first(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(1.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "augment_batch", slow_first)
    saved = {}
    run = _fit(faces, epochs=2, on_epoch_end=lambda rec, st: saved.update({rec["epoch"]: st}))
    assert run.warmup_seconds >= 1.5
    assert run.train_seconds >= run.warmup_seconds  # the stage's time still counts it
    # 5 batches of 8 an epoch (of 42 training images), the first step's batch left out.
    steady = run.train_seconds - run.warmup_seconds
    assert run.images_per_second == pytest.approx((2 * 40 - 8) / steady)
    assert run.images_per_second > 2 * 40 / run.train_seconds
    first, second = run.history
    assert first["warmup_seconds"] >= 1.5 and second["warmup_seconds"] == 0.0
    assert first["images_per_s"] == pytest.approx(32 / (first["seconds"] - first["warmup_seconds"]))
    # A resumed process warms up again: its first step is left out too, and the earlier one's.
    calls.clear()
    resumed = _fit(faces, epochs=3, resume=saved[2])
    assert resumed.warmup_seconds >= 3.0
    assert resumed.history[-1]["warmup_seconds"] >= 1.5


def test_group_balanced_sampling_evens_out_groups():
    rng = np.random.default_rng(0)
    groups = np.array([0] * 900 + [1] * 60 + [2] * 30 + [3] * 10)
    drawn = np.concatenate(
        epoch_batches(n=1000, batch_size=100, sampling="group_balanced", rng=rng, groups=groups)
    )
    shares = np.bincount(groups[drawn], minlength=4) / len(drawn)
    assert np.all(np.abs(shares - 0.25) < 0.05)
    uniform = np.concatenate(epoch_batches(n=1000, batch_size=100, sampling="uniform", rng=rng))
    assert sorted(uniform.tolist()) == list(range(1000))


def test_class_balanced_sampling_and_bad_choice():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 90 + [1] * 10)
    drawn = np.concatenate(
        epoch_batches(n=100, batch_size=10, sampling="class_balanced", rng=rng, labels=labels)
    )
    assert 0.35 < np.mean(labels[drawn] == 1) < 0.65
    with pytest.raises(ValueError, match="uniform, class_balanced, group_balanced"):
        epoch_batches(n=10, batch_size=2, sampling="balanced", rng=rng)


def test_augmentation_is_seeded_and_off_means_standardise_only():
    x = torch.from_numpy(fake_faces(2, 2, 24)[0])
    cfg = AugmentConfig(flip=True, color_jitter=0.3, crop_scale=(0.7, 1.0))
    a = augment_batch(x, cfg, torch.Generator().manual_seed(3))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(3))
    assert a.shape == (4, 3, 24, 24) and a.dtype == torch.float32
    assert torch.equal(a, b)
    plain = augment_batch(x, AugmentConfig(False, 0.0, (1.0, 1.0)), torch.Generator())
    assert torch.equal(plain, standardize(x.permute(0, 3, 1, 2).float()))
    flipped = augment_batch(
        x, AugmentConfig(True, 0.0, (1.0, 1.0)), torch.Generator().manual_seed(0)
    )
    for i in range(4):
        assert torch.equal(flipped[i], plain[i]) or torch.equal(flipped[i], plain[i].flip(2))


def test_lr_warms_up_then_decays():
    f = [lr_factor(s, warmup_steps=10, total_steps=100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[10:]))
    assert f[-1] < 0.05


def test_auto_precision_is_fp32_on_a_gpu_too_and_bf16_is_asked_for():
    # Measured on an H200 (docs/gpu.md): bf16 autocast trained the GPU preset slower.
    cuda = torch.device("cuda")
    assert resolve_precision("auto", cuda) is None
    assert resolve_precision("bf16", cuda) is torch.bfloat16
    assert resolve_precision("fp32", cuda) is None
    assert resolve_precision("auto", torch.device("cpu")) is None
    with pytest.raises(ValueError, match="auto, bf16, fp32"):
        resolve_precision("fp16", cuda)


def test_cuda_requested_without_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="'auto' or 'cpu'"):
        resolve_device("cuda")


def test_demographic_training_reports_validation_metrics(faces):
    imgs, ids = faces
    train, val = np.where(ids >= 3)[0], np.where(ids < 3)[0]
    age = (20 + 5 * ids).astype(np.float32)
    targets = DemographicTargets(age=age, gender=ids % 2, group=ids % 4)

    def sub(rows):
        return DemographicTargets(age[rows], (ids % 2)[rows], (ids % 4)[rows])

    seed_everything(0)
    net = create_demographic_net("demographic_cnn", input_size=SIZE, age_mean=40, age_std=15)
    result = fit_demographics(
        net,
        images=imgs,
        rows=train,
        targets=sub(train),
        val_rows=val,
        val_targets=sub(val),
        group_balanced_loss=True,
        config=LoopConfig(epochs=3, batch_size=8, lr=3e-3, progress=False, device="cpu"),
    )
    assert targets.age.shape == ids.shape
    assert set(result.val_metrics) >= {"val_gender_accuracy", "val_group_accuracy", "val_age_mae"}
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.best_state.keys() == net.state_dict().keys()


@pytest.mark.gpu
def test_cuda_bf16_training_runs_and_learns():
    imgs, ids = fake_faces(16, 8, 64)
    seed_everything(0)
    model = create_backbone("resnet18", embedding_dim=64, input_size=64)
    head = create_head("arcface", embedding_dim=64, num_classes=16, s=16.0, m2=0.2)
    result = fit_embedder(
        model,
        head,
        images=imgs,
        rows=np.arange(len(ids)),
        labels=ids,
        config=LoopConfig(
            epochs=4, batch_size=32, lr=2e-3, device="cuda", precision="bf16", progress=False
        ),
    )
    assert result.device.startswith("cuda")
    assert np.isfinite(result.step_losses).all()
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_an_interrupted_training_stage_says_how_to_resume(caplog):
    from visage_ml.app.stages._train_common import stage_main

    def run(progress):
        raise KeyboardInterrupt

    assert stage_main(run) == 130
    assert "run the stage again" in caplog.text and "resume" in caplog.text
