"""Accuracy and demographic-differential metrics for the exported models."""
