"""The environment of child processes: a copy of ours without secrets.

A process started with ``env=None`` inherits every variable, ``VISAGE_MASTER_KEY`` included,
and hands it on to whatever it starts in turn (DVC starts git, ssh, its remote plugins). A
secret in the environment is also readable by anything that can read ``/proc/<pid>/environ``
of those children. So every subprocess visage-ml starts gets :func:`child_env`, which drops the
secrets; a child that needs one (``dvc repro`` running visage's own stages, which decrypt with
the master key) names it in ``keep`` and says why beside the call.

What counts as a secret: :data:`SECRET_NAMES`, and any ``VISAGE_*`` variable whose name holds
``KEY``, ``SECRET``, ``TOKEN``, ``PASSWORD`` or ``PASSPHRASE`` (project secrets added later are
covered without a change here). Credentials a child is meant to use (``AWS_*`` for an S3 DVC
remote) are not ours to drop.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

SECRET_NAMES: frozenset[str] = frozenset({"VISAGE_MASTER_KEY"})
_SECRET_RE = re.compile(r"^VISAGE_.*(KEY|SECRET|TOKEN|PASSWORD|PASSPHRASE)", re.IGNORECASE)


def is_secret(name: str) -> bool:
    """Whether the environment variable ``name`` holds a visage-ml secret."""
    return name in SECRET_NAMES or bool(_SECRET_RE.match(name))


def child_env(
    extra: Mapping[str, str] | None = None,
    *,
    keep: Iterable[str] = (),
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A copy of ``base`` (``os.environ``) without secrets, plus ``extra``.

    Parameters
    ----------
    extra
        Variables to set in the child (never checked: the caller chose them).
    keep
        Secret names the child legitimately needs (each call that keeps one says why).
    base
        The environment to copy (``os.environ`` when None).

    Returns
    -------
    dict
        The environment to pass as ``env=`` to :mod:`subprocess`.
    """
    source = os.environ if base is None else base
    kept = set(keep)
    env = {k: v for k, v in source.items() if k in kept or not is_secret(k)}
    if extra:
        env.update(extra)
    return env
