"""What differs between the embedder and the demographic net: loss and validation."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from visage_ml.data.pairs import genuine_pairs, impostor_pairs, pair_scores, tar_at_far
from visage_ml.models.demographic import demographic_loss
from visage_ml.training.batches import BatchPrefetcher, eval_batches, standardized_batch, to_device
from visage_ml.training.config import VAL_IMPOSTOR_PAIRS, DemographicTargets, autocast

logger = logging.getLogger(__name__)


@torch.no_grad()
def embed_rows(
    model: nn.Module,
    images: np.ndarray,
    rows: np.ndarray,
    *,
    device: torch.device,
    batch_size: int = 256,
    amp_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Embeddings ``(len(rows), D)`` float32 of ``images[rows]`` (model switched to eval mode)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for x, _ in BatchPrefetcher(
            images, rows, eval_batches(len(rows), batch_size), device=device
        ):
            with autocast(device, amp_dtype):
                out.append(model(standardized_batch(x)).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


# ---------------------------------------------------------------------------------------------
# tasks: what differs between the embedder and the demographic net
# ---------------------------------------------------------------------------------------------


class EmbedderTask:
    metric_name = "val_tar"

    def __init__(
        self,
        model: nn.Module,
        head: nn.Module,
        labels: np.ndarray,
        val_rows: np.ndarray | None,
        val_labels: np.ndarray | None,
        *,
        far: float,
        seed: int,
    ):
        self.model, self.head = model, head
        self.labels = torch.tensor(np.asarray(labels), dtype=torch.long)
        self.val_rows = val_rows
        self.far = far
        self.pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        if val_rows is not None and val_labels is not None and len(val_rows) > 1:
            codes = np.unique(np.asarray(val_labels), return_inverse=True)[1]
            ga, gb = genuine_pairs(codes)
            if ga.size and np.unique(codes).size > 1:
                ia, ib = impostor_pairs(codes, VAL_IMPOSTOR_PAIRS, seed=seed)
                genuine = np.zeros(ga.size + ia.size, dtype=bool)
                genuine[: ga.size] = True
                self.pairs = (np.concatenate([ga, ia]), np.concatenate([gb, ib]), genuine)
        if self.pairs is None:
            logger.warning("no usable validation pairs: training without early stopping")

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "head": self.head}

    def loss(self, x: torch.Tensor, idx: np.ndarray, device: torch.device) -> torch.Tensor:
        y = to_device(self.labels[idx], device)
        return self.head(self.model(x), y)

    def evaluate(
        self, images: np.ndarray, device: torch.device, amp: torch.dtype | None, batch: int
    ) -> dict[str, float]:
        if self.pairs is None or self.val_rows is None:
            return {}
        emb = embed_rows(
            self.model, images, self.val_rows, device=device, batch_size=batch, amp_dtype=amp
        )
        a, b, genuine = self.pairs
        scores = pair_scores(emb, a, b)
        return {
            "val_tar": tar_at_far(scores[genuine], scores[~genuine], self.far),
            "val_genuine_mean": float(scores[genuine].mean()),
            "val_impostor_mean": float(scores[~genuine].mean()),
        }


class DemographicTask:
    metric_name = "val_score"

    def __init__(
        self,
        model: nn.Module,
        targets: DemographicTargets,
        val_rows: np.ndarray | None,
        val_targets: DemographicTargets | None,
        *,
        group_balanced_loss: bool,
    ):
        self.model = model
        self._loss = demographic_loss
        self.age = torch.tensor(np.asarray(targets.age), dtype=torch.float32)
        self.gender = torch.tensor(np.asarray(targets.gender), dtype=torch.long)
        self.group = torch.tensor(np.asarray(targets.group), dtype=torch.long)
        # Partly labeled data: per-task masks (fully labeled data keeps the plain loss).
        self.known: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        if not targets.complete:
            age_k, gender_k, group_k = targets.known
            self.known = (
                torch.from_numpy(age_k),
                torch.from_numpy(gender_k),
                torch.from_numpy(group_k),
            )
        self.weights: torch.Tensor | None = None
        if group_balanced_loss:
            _, inverse, counts = np.unique(
                np.asarray(targets.group), return_inverse=True, return_counts=True
            )
            w = 1.0 / counts[inverse]
            self.weights = torch.as_tensor(w / w.mean(), dtype=torch.float32)
        self.val_rows = val_rows if val_rows is not None and len(val_rows) > 0 else None
        self.val_targets = val_targets

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def loss(self, x: torch.Tensor, idx: np.ndarray, device: torch.device) -> torch.Tensor:
        outputs = self.model(x)
        return self._loss(
            outputs,
            age=to_device(self.age[idx], device),
            gender=to_device(self.gender[idx], device),
            group=to_device(self.group[idx], device),
            age_std=float(self.model.age_std),
            weights=None if self.weights is None else to_device(self.weights[idx], device),
            known=None if self.known is None else self._known_at(idx, device),
        )

    def _known_at(
        self, idx: np.ndarray, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert self.known is not None
        age, gender, group = self.known
        return (
            to_device(age[idx], device),
            to_device(gender[idx], device),
            to_device(group[idx], device),
        )

    def evaluate(
        self, images: np.ndarray, device: torch.device, amp: torch.dtype | None, batch: int
    ) -> dict[str, float]:
        if self.val_rows is None or self.val_targets is None:
            return {}
        return evaluate_demographics(
            self.model,
            images,
            self.val_rows,
            self.val_targets,
            device=device,
            batch_size=batch,
            amp_dtype=amp,
        )


@torch.no_grad()
def evaluate_demographics(
    model: nn.Module,
    images: np.ndarray,
    rows: np.ndarray,
    targets: DemographicTargets,
    *,
    device: torch.device,
    batch_size: int = 256,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Gender and group accuracy, age MAE (years) and ``val_score`` (their summary, higher is
    better: mean accuracy minus MAE / 100) of ``model`` on ``images[rows]``.

    Each figure counts only the images whose label is known (``NaN`` when none is)."""
    was_training = model.training
    model.eval()
    ages, genders, groups = [], [], []
    try:
        for x, _ in BatchPrefetcher(
            images, rows, eval_batches(len(rows), batch_size), device=device
        ):
            with autocast(device, amp_dtype):
                age, g, r = model(standardized_batch(x))
            ages.append(age.float().cpu())
            genders.append(g.argmax(1).cpu())
            groups.append(r.argmax(1).cpu())
    finally:
        model.train(was_training)
    k_age, k_gender, k_group = targets.known
    age_err = np.abs(torch.cat(ages).numpy() - np.asarray(targets.age, np.float64))[k_age]
    age_mae = float(age_err.mean()) if age_err.size else float("nan")
    gender_hit = (torch.cat(genders).numpy() == np.asarray(targets.gender))[k_gender]
    group_hit = (torch.cat(groups).numpy() == np.asarray(targets.group))[k_group]
    gender_acc = float(gender_hit.mean()) if gender_hit.size else float("nan")
    group_acc = float(group_hit.mean()) if group_hit.size else float("nan")
    if not (gender_hit.size and group_hit.size and age_err.size):
        # A task without labels in the validation split does not enter the summary.
        parts = [v for v, n in ((gender_acc, gender_hit.size), (group_acc, group_hit.size)) if n]
        score = (float(np.mean(parts)) if parts else 0.0) - (
            age_mae / 100.0 if age_err.size else 0.0
        )
        return {
            "val_gender_accuracy": gender_acc,
            "val_group_accuracy": group_acc,
            "val_age_mae": age_mae,
            "val_score": score,
        }
    return {
        "val_gender_accuracy": gender_acc,
        "val_group_accuracy": group_acc,
        "val_age_mae": age_mae,
        "val_score": (gender_acc + group_acc) / 2 - age_mae / 100.0,
    }
