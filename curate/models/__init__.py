"""Embedding models: the registry, preprocessing, image and text models, and the batch feeder."""
