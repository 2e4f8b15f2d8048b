"""Self-describing checkpoints: inference files that rebuild their model alone, and resume files.

Payloads hold only tensors and plain Python values, so every file opens with
``torch.load(path, weights_only=True)``.

Inference checkpoint (``models/embedder.pt``, ``models/demographics.pt``)::

    {"kind": "embedder" | "demographics", "config": {...}, "preprocess": PreprocessSpec dict,
     "state_dict": {...}, "data_md5": str, "model_version": str, "labels": {...},
     "metrics": {...}, "params": {...}, "format": 1}

Resume checkpoints (``models/checkpoints/<kind>/epoch-NNNN.pt``) hold the training loop's state
(:func:`visage_ml.training.loop.fit_embedder`) plus a ``fingerprint`` of the params section and the
data md5; :func:`load_resume` returns one only when the fingerprint matches.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visage_ml.io import atomic_write_bytes, canonical_json
from visage_ml.models.backbones import create_backbone
from visage_ml.models.demographic import create_demographic_net

logger = logging.getLogger(__name__)

FORMAT = 1
KINDS = ("embedder", "demographics")
_RESUME_NAME = re.compile(r"^epoch-(\d{4,})\.pt$")
MSG_BAD_CHECKPOINT = (
    "{path} is not a readable visage-ml checkpoint ({reason}): it is damaged, truncated or holds "
    "objects other than tensors and plain data, which are refused without running any code; "
    "re-create it with `dvc repro` (the training stage that writes it)"
)


def model_version(state_dict: Mapping[str, torch.Tensor]) -> str:
    """First 16 hex digits of the SHA-256 over names, dtypes, shapes and bytes of ``state_dict``."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode("utf-8"))
        h.update(str(t.dtype).encode("ascii"))
        h.update(repr(tuple(t.shape)).encode("ascii"))
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def cpu_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``module``'s state dict (safe to keep while training goes on)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def inference_payload(
    *,
    kind: str,
    config: Mapping[str, Any],
    preprocess: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    data_md5: str,
    labels: Mapping[str, Any],
    metrics: Mapping[str, Any],
    params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble an inference checkpoint; ``model_version`` is computed from ``state_dict``.

    Parameters
    ----------
    kind
        ``embedder`` or ``demographics``.
    config
        What :func:`build_model` needs to rebuild the network (``backbone``, ``input_size``...).
    preprocess
        ``PreprocessSpec.to_dict()`` of the input the model was trained on.
    state_dict, data_md5, labels, metrics, params
        Weights, the md5 of ``faces.sealed``, label orders, final metrics, training params.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind '{kind}'; choose one of: {', '.join(KINDS)}")
    sd = {k: v.detach().cpu() for k, v in state_dict.items()}
    return {
        "format": FORMAT,
        "kind": kind,
        "config": dict(config),
        "preprocess": dict(preprocess),
        "state_dict": sd,
        "data_md5": str(data_md5),
        "model_version": model_version(sd),
        "labels": dict(labels),
        "metrics": dict(metrics),
        "params": dict(params or {}),
    }


def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` with ``torch.save`` atomically (temporary file, fsync, rename)."""
    buf = io.BytesIO()
    torch.save(dict(payload), buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no code is unpickled).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is not a checkpoint dictionary: damaged, truncated, or holding objects other
        than tensors and plain data (which are refused, never executed).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"checkpoint {p} not found; run `dvc repro` (or the training stage) to create it"
        )
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a foreign or damaged file
        # torch's own message suggests weights_only=False: never do that for an unknown file.
        raise ValueError(MSG_BAD_CHECKPOINT.format(path=p, reason=type(exc).__name__)) from None
    if not isinstance(payload, dict):
        raise ValueError(MSG_BAD_CHECKPOINT.format(path=p, reason=type(payload).__name__))
    return payload


def _build_embedder(config: Mapping[str, Any]) -> nn.Module:
    return create_backbone(
        str(config["backbone"]),
        embedding_dim=int(config["embedding_dim"]),
        input_size=int(config["input_size"]),
        init="scratch",
    )


def _build_demographics(config: Mapping[str, Any]) -> nn.Module:
    return create_demographic_net(
        str(config["backbone"]),
        input_size=int(config["input_size"]),
        age_mean=float(config["age_mean"]),
        age_std=float(config["age_std"]),
    )


BUILDERS: dict[str, Callable[[Mapping[str, Any]], nn.Module]] = {
    "embedder": _build_embedder,
    "demographics": _build_demographics,
}


def build_model(kind: str, config: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised network of ``kind`` as ``config`` describes (no weights loaded)."""
    if kind not in BUILDERS:
        raise ValueError(
            f"unknown checkpoint kind '{kind}'; choose one of: {', '.join(sorted(BUILDERS))}"
        )
    return BUILDERS[kind](config)


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored at ``path`` from the checkpoint alone.

    Returns
    -------
    (model, meta)
        The network in eval mode on the CPU, and every entry of the checkpoint but the weights
        (``kind``, ``config``, ``preprocess``, ``data_md5``, ``model_version``, ``labels``,
        ``metrics``, ``params``).
    """
    payload = load_checkpoint(path)
    for key in ("kind", "config", "state_dict"):
        if key not in payload:
            raise ValueError(
                f"{path} is not a visage-ml inference checkpoint (no '{key}'); give "
                "models/embedder.pt or models/demographics.pt"
            )
    model = build_model(payload["kind"], payload["config"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, meta


# ---------------------------------------------------------------------------------------------
# resume checkpoints
# ---------------------------------------------------------------------------------------------


def fingerprint(section: Mapping[str, Any], data_md5: str, *, seed: int) -> str:
    """SHA-256 of a params section, the project seed and the data md5 (what a resume must match)."""
    doc = {"params": dict(section), "seed": int(seed), "data_md5": str(data_md5)}
    return hashlib.sha256(canonical_json(doc)).hexdigest()


def resume_files(folder: str | Path) -> list[Path]:
    """Resume checkpoints in ``folder``, oldest epoch first."""
    d = Path(folder)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _RESUME_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_resume(
    folder: str | Path, state: Mapping[str, Any], *, fingerprint: str, keep: int = 2
) -> Path:
    """Write the loop ``state`` (after epoch ``state['epoch']``), keep only the newest ``keep``."""
    d = Path(folder)
    path = d / f"epoch-{int(state['epoch']):04d}.pt"
    save_checkpoint(path, {**state, "fingerprint": fingerprint, "format": FORMAT})
    for old in resume_files(d)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_resume(folder: str | Path, *, fingerprint: str) -> dict[str, Any] | None:
    """The newest resume state in ``folder`` if its fingerprint matches, else ``None``.

    A mismatch (params or data changed) or an unreadable file is logged, and training then
    starts fresh.
    """
    files = resume_files(folder)
    if not files:
        return None
    latest = files[-1]
    try:
        state = load_checkpoint(latest)
    except Exception as exc:  # a torn or foreign file must not stop training from scratch
        logger.warning(
            "resume checkpoint %s is unreadable (%s); starting fresh", latest, type(exc).__name__
        )
        return None
    if state.get("fingerprint") != fingerprint:
        logger.warning(
            "resume checkpoint %s was made with other params, data, seed or training code "
            "(fingerprint differs); starting fresh, and it is deleted",
            latest,
        )
        return None
    logger.info("resuming from %s (after epoch %d)", latest, int(state["epoch"]))
    return state


def clear_resume(folder: str | Path) -> None:
    """Remove every resume checkpoint in ``folder`` (when a fresh run replaces them)."""
    for p in resume_files(folder):
        p.unlink(missing_ok=True)
