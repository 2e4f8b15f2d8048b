"""Fault injection for crash tests: ``VISAGE_FAULT=<point>`` ends the process at that point.

Inert unless the environment variable names the point exactly: each check is one dictionary
lookup. The process then ends with :data:`FAULT_EXIT` through ``os._exit``, like ``kill -9``:
no ``finally`` block, no ``atexit`` handler, no buffered write runs. The tests in
``tests/reliability/test_crash.py`` restart after each point and check that nothing is lost,
the ledger verifies, the gallery agrees with the registry and no erased subject is matchable.

Points (besides the erasure's own ``erasure:<step>[:planned]``, see
:mod:`visage_ml.rights.erasure.orchestrator`):

=====================================  ==========================================================
point                                  where
=====================================  ==========================================================
``ledger:append:before-write``         events signed, nothing written yet
``ledger:append:torn``                 half of the new lines written (a torn tail), then death
``ledger:append:before-fsync``         lines written, not yet fsync'd
``witness:kept:cosigned``              the witnesses cosigned the checkpoint of an
                                       ``erasure.completed``, nothing of it written here yet
``gallery:enroll:key-created``         the subject's data key exists, no template yet
``gallery:enroll:template-written``    template file replaced, ``gallery.enrolled`` not appended
``gallery:enroll:recorded``            ``gallery.enrolled`` appended, memory not updated
``gallery:erase:dropped``              row left memory, nothing on disk touched
``io:secure-unlink:zeroed``            a file overwritten with zeros and fsync'd, not unlinked
``gallery:erase:key-destroyed``        the key file is gone (commit point), template remains
``gallery:erase:template-removed``     both files gone, ``gallery.removed`` not appended
``import:registered``                  subjects in vault and ledger, no basis, raw not swapped
``import:basis-recorded``              basis recorded, ``data/raw`` not swapped
``rawstore:staged``                    staging tree complete and fsync'd, before the swap
``rawstore:swap:between``              ``data/raw`` renamed away, staging not renamed in
``rawstore:swap:done``                 new ``data/raw`` in place, old tree not removed
``rawstore:committed``                 swapped, before ``dvc add`` and the consent snapshot
``seal:file:written``                  ``visage privacy seal``: a sealed copy written, the
                                       plaintext not yet removed
``keys:rewrap:file``                   a master-key rotation re-wrapped one key file
``rotate:next-written``                the new master key waits in ``master.key.next``
``rotate:rewrapped``                   every ring re-wrapped, ``master.key`` not yet replaced
=====================================  ==========================================================
"""

from __future__ import annotations

import os

FAULT_ENV = "VISAGE_FAULT"
FAULT_EXIT = 137


def armed(point: str) -> bool:
    """Whether ``$VISAGE_FAULT`` names ``point``."""
    return os.environ.get(FAULT_ENV) == point


def die() -> None:
    """End the process at once, as ``kill -9`` would (no clean-up of any kind)."""
    os._exit(FAULT_EXIT)


def crash_point(point: str) -> None:
    """End the process here when ``$VISAGE_FAULT`` names ``point`` (tests only)."""
    if os.environ.get(FAULT_ENV) == point:
        os._exit(FAULT_EXIT)
