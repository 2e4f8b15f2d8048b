"""Training loops for the identity embedder and the demographic net (no file I/O).

- :mod:`~visage_ml.training.config`: loop settings, results, device and precision;
- :mod:`~visage_ml.training.batches`: the data path (prefetch, augmentation on the device);
- :mod:`~visage_ml.training.tasks`: the embedder's and the demographic net's loss and validation;
- :mod:`~visage_ml.training.loop`: the epoch loop, early stopping, resumable state.
"""
