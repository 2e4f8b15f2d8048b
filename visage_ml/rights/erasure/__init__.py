"""Erasure (Art. 17) of one subject across every store: see :mod:`.orchestrator`.

One module per store (``gallery``, ``tombstone``, ``vault``, ``datakey``, ``raw``, ``dvc``,
``processed``, ``exports``, ``checkpoints``, ``mlflow``) plans, erases and verifies; the
orchestrator runs them in order, records each step in the ledger, resumes interrupted requests
and issues the certificate.
"""

from visage_ml.rights.erasure.orchestrator import (
    LOCK,
    STEPS,
    STORES,
    Erasure,
    ErasureResult,
    erase_subject,
    resume_all,
)

__all__ = ["LOCK", "STEPS", "STORES", "Erasure", "ErasureResult", "erase_subject", "resume_all"]
