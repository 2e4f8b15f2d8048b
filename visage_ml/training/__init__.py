"""Training of the identity embedder and the demographic net (the stages write their outputs).

- :mod:`~visage_ml.training.config`: loop settings, results, device and precision;
- :mod:`~visage_ml.training.batches`: the data path (prefetch, augmentation on the device);
- :mod:`~visage_ml.training.tasks`: the embedder's and the demographic net's loss and validation;
- :mod:`~visage_ml.training.loop`: the epoch loop, early stopping, resumable state;
- :mod:`~visage_ml.training.resume`: which resume checkpoint fits a run (every rank's);
- :mod:`~visage_ml.training.embedder`, :mod:`~visage_ml.training.demographics`: what each
  training stage trains on (the processed crops, the synthetic training people), the network
  it starts from, its report and inference checkpoint;
- :mod:`~visage_ml.training.launch`: starting a stage in several torchrun processes.
"""
