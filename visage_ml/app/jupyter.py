"""The project's Jupyter saves notebooks without outputs (faces shown stay in the browser).

Set for the virtual environment's Jupyter by ``make setup`` (``jupyter-config/visage-ml.json``
copied to ``<venv>/etc/jupyter/jupyter_server_config.json``: every ``jupyter lab`` or ``jupyter
server`` of that environment loads it) and passed again by ``make lab``:
``ContentsManager.pre_save_hook = visage_ml.app.jupyter.strip_before_save``. Why:
:mod:`visage_ml.privacy.notebooks`.
"""

from __future__ import annotations

import logging
from typing import Any

from visage_ml.privacy.notebooks import strip_outputs

logger = logging.getLogger(__name__)
MSG_NOT_SAVED = (
    "visage-ml could not remove this notebook's outputs, so it was not saved (outputs may hold "
    "faces); clear the outputs (Edit > Clear Outputs of All Cells) and save again"
)


def strip_before_save(model: dict[str, Any], **kwargs: Any) -> None:
    """A Jupyter ``pre_save_hook``: a notebook's outputs are removed before it is written.

    A failure refuses the save (Jupyter would otherwise log it and save the outputs)."""
    if model.get("type") != "notebook":
        return
    try:
        removed = strip_outputs(model["content"])
    except Exception as exc:
        from tornado.web import HTTPError

        raise HTTPError(500, reason=MSG_NOT_SAVED) from exc
    if removed:
        logger.info("notebook saved without its %d output(s)", removed)
