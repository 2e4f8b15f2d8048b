"""The scale-out stack: PostgreSQL + pgvector, SeaweedFS S3 and an MLflow tracking server.

Each service is a small class that starts and stops one server process in a folder on loopback
(:mod:`~visage_ml.stack.postgres`, :mod:`~visage_ml.stack.seaweed`,
:mod:`~visage_ml.stack.mlflow_server`); :mod:`~visage_ml.stack.manager` runs them together for
``visage stack up | down | status`` and points the project at them (or at a team's existing
services). Layer L0: it knows processes, ports and folders, nothing of faces.
"""
