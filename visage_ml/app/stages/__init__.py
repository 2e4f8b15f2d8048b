"""DVC pipeline stages: one module per ``dvc.yaml`` stage (``python -m visage_ml.app.stages.NAME``).

Stages are glue: they read paths from :class:`visage_ml.config.ProjectPaths` and knobs from
``params.yaml``, call the library, and write outputs atomically.
"""
