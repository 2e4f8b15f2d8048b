"""Data acquisition and preparation: SynthFaces (the embedded synthetic data set), importers,
manifests, and MTCNN face detection with 5-point alignment.

Submodules are imported explicitly (``from visage_ml.data.synth import write_synthfaces``);
importing this package loads nothing heavy.
"""
