"""visage-ml: on-premise face recognition and demographics with provable data-subject rights."""

__version__ = "0.1.0"


class VisageWarning(UserWarning):
    """Warnings visage-ml itself raises (tests turn them into errors)."""
