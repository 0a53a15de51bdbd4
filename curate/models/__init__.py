"""Embedding models, chosen by short registry names.

- :mod:`~curate.models.preprocess`: what a model sees (resize, crop, border trim, presets).
- :mod:`~curate.models.base`: :class:`ModelSpec`, loaded-model types, device and precision.
- :mod:`~curate.models.image`: image model families, registry :data:`IMAGE_MODELS`.
- :mod:`~curate.models.text`: caption models, registry :data:`TEXT_MODELS`.
- :mod:`~curate.models.feeder`: batches decoded in worker processes, the forward pass, norms.
- :mod:`~curate.models.recipe`: the model and embedding key a run config stands for.
"""
from curate.models.base import ImageEmbedder, ModelSpec, TextEmbedder, resolve_device, resolve_precision  # noqa: F401
from curate.models.image import IMAGE_MODELS, load_image_model, resolve_image_model  # noqa: F401
from curate.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, PRESETS, Preprocess, trim_uniform_border  # noqa: F401
from curate.models.text import TEXT_MODELS, load_text_model, text_identity, text_key  # noqa: F401
