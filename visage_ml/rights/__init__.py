"""Data-subject rights across every store (L7): erasure, export, rectification, lineage.

Orchestration sits here, above the stores it drives (gallery, vault, data, DVC, MLflow); the
stores know nothing of requests. See docs/architecture.md.
"""
