"""Logging that never carries another library's debug output.

Pillow logs every EXIF tag with its value at DEBUG while it reads an image (an ``Artist`` name,
a GPS position, a camera's serial number); uvicorn at debug and trace logs connection details
and ASGI messages; python-multipart, h11, httpx and others log what they parse. None of it may
reach the log of a server that receives faces, whatever ``--verbose`` says. So:

- :func:`quiet_third_party` puts each logger of :data:`FLOORS` at its floor level, so that
  records below it are never even created (a handler anyone adds later cannot see them);
- :func:`configure` (the CLI's logging set-up) lets ``--verbose`` lower only ``visage_ml``'s own
  loggers to DEBUG, and its handler passes DEBUG records from ``visage_ml`` alone.

``visage_ml`` itself logs no personal data at any level (pids only).
"""

from __future__ import annotations

import logging
import sys
from typing import IO

OWN = "visage_ml"
FORMAT = "%(levelname)s %(name)s: %(message)s"
# Lowest level each third-party logger may emit. WARNING where even INFO names data (uvicorn's
# access log holds request paths, i.e. pids); INFO elsewhere.
FLOORS: dict[str, int] = {
    "PIL": logging.WARNING,
    "multipart": logging.WARNING,
    "python_multipart": logging.WARNING,
    "uvicorn.access": logging.WARNING,
    "uvicorn.asgi": logging.WARNING,
    "uvicorn": logging.INFO,
    "uvicorn.error": logging.INFO,
    "h11": logging.INFO,
    "httpcore": logging.INFO,
    "httpx": logging.INFO,
    "asyncio": logging.INFO,
    "anyio": logging.INFO,
    "starlette": logging.INFO,
    "fastapi": logging.INFO,
    "urllib3": logging.INFO,
    "matplotlib": logging.INFO,
    "numba": logging.INFO,
    "onnxruntime": logging.INFO,
    "torch": logging.INFO,
    "filelock": logging.INFO,
    "fsspec": logging.INFO,
    "dvc": logging.INFO,
    "git": logging.INFO,
    "mlflow": logging.INFO,
    # MLflow's store: SQLAlchemy's INFO is mapper set-up chatter and, for the engine, every SQL
    # statement with its parameters (run names, tags): an erasure's output drowned in it.
    "alembic": logging.WARNING,
    "sqlalchemy": logging.WARNING,
    # fpdf2 subsets fonts for the notice and records PDFs; fontTools logs each table at INFO.
    "fontTools": logging.WARNING,
    "fpdf": logging.WARNING,
}


class OwnDebugOnly(logging.Filter):
    """Passes records at INFO and above, and DEBUG records of ``visage_ml`` only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.INFO:
            return True
        return record.name == OWN or record.name.startswith(OWN + ".")


def quiet_third_party() -> None:
    """Raise each logger of :data:`FLOORS` to its floor (never lower a level set higher)."""
    for name, floor in FLOORS.items():
        logger = logging.getLogger(name)
        if logger.level < floor:
            logger.setLevel(floor)


def configure(*, verbose: bool = False, stream: IO[str] | None = None) -> None:
    """The CLI's logging: INFO to stderr, DEBUG of ``visage_ml`` only with ``verbose``.

    Adds a handler only when the root logger has none (like :func:`logging.basicConfig`), so an
    embedding application's (or pytest's) handlers are left alone; the third-party floors and
    ``visage_ml``'s level are set in every case.
    """
    quiet_third_party()
    logging.getLogger(OWN).setLevel(logging.DEBUG if verbose else logging.NOTSET)
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(OwnDebugOnly())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
