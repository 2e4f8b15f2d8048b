"""Networks of visage-ml: the identity-embedder registry, margin heads, the demographic net and
self-describing checkpoints.

Submodules import torch; import them where torch is wanted (training, export), never from
serving code, which runs the exported ONNX models.

- :mod:`visage_ml.models.backbones`: ``create_backbone(name, ...)`` and ``register_backbone``.
- :mod:`visage_ml.models.heads`: ``NormLinear``, ``CombinedMarginLoss``, ``create_head``.
- :mod:`visage_ml.models.demographic`: ``DemographicNet`` (age, gender, group).
- :mod:`visage_ml.models.checkpoint`: inference / resume checkpoints and ``load_model``.
"""
