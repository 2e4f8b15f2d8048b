"""On-premise serving: ONNX engine, consent-aware encrypted gallery, aggregate analytics, HTTP API.

Nothing is imported or loaded here; import the submodules (``engine``, ``gallery``,
``analytics``, ``api``) where they are needed.
"""
