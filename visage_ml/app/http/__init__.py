"""The HTTP API (FastAPI); :func:`visage_ml.app.http.app.create_app` builds it."""
