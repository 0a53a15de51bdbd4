"""``probe generate`` and ``probe import``: generations for the probe prompts → table ``generations``.

**Generate.** A ``diffusers`` text-to-image pipeline (``DiffusionPipeline.from_pretrained`` of a
local folder or a hub id; the safety checker is switched off, since a blacked-out image would
hide a copy) runs every probe prompt (``probes`` table, by rank) with ``probe.seeds`` seeds
``seed, seed+1, …`` — the same seeds for every prompt. Each image's initial noise comes from its
own CPU ``torch.Generator`` seeded with its seed, so an image depends on (model, prompt, seed,
settings) only, not on the batch it was made in or the device. ``probe.scheduler: ddim`` (the
default) swaps in ``DDIMScheduler`` (Wen et al.'s setting); ``model`` keeps the pipeline's.
GPU when present (``probe.device: auto``; fp16 there, fp32 on CPU).

**Noise-difference magnitude** (Wen et al., "Detecting, Explaining, and Mitigating Memorization
in Diffusion Models", ICLR 2024): with classifier-free guidance the denoiser is evaluated at every
step on the same latent x_t with the prompt embedding and with the empty prompt's; a forward hook
on the pipeline's denoiser (``unet`` or ``transformer``) takes both outputs of that one call and
records, per image and step, ``‖ε(x_t, e_prompt) − ε(x_t, e_∅)‖₂`` — the 2-norm over the whole
latent (all channels and positions), of the unguided difference, in float32, as in the authors'
code (``track_noise_norm``). ``noise_per_step`` keeps every step (the first step alone is their
one-step detector); ``noise_magnitude`` is the mean over steps, d(p) in the paper. Memorized
prompts give larger values (AUC ≈ 0.99 on 500 memorized vs 500 ordinary SD v1 prompts, 50 DDIM
steps, 4 generations). It needs guidance (``guidance_scale > 1``): without it the pipeline never
evaluates the empty prompt and the magnitude is NULL. The empty prompt itself has d = 0.
Pipelines that differ from Stable Diffusion v1 are brought to the paper's quantity or refused
(:class:`NoiseTracker`): an SDXL-type pipeline (``force_zeros_for_empty_prompt``: a zero
embedding instead of the empty prompt's) gets the empty prompt as its negative prompt, so the
unconditional branch is e_∅ (recorded in the settings as ``unconditional``); a denoiser that also
predicts the variance (output channels = 2 × input: DeepFloyd IF, learned-sigma UNets) is
measured on its noise half; a ``v_prediction`` output is converted to the noise; flow-matching
and ``sample`` outputs are refused with a ConfigError.

**Files and resume.** Images go to ``<workspace>/probes/<set>/<probe_id>/seed-<seed>.png`` with a
sidecar ``.json`` (gen_id, prompt, seed, model, settings, noise values), each written atomically,
image first; a generation is done when its sidecar exists. A run first removes temp files,
records sidecars the catalog lacks and forgets rows whose image is gone, then generates only
the missing (probe, seed) pairs — so a killed run keeps every finished image and does not redo
it. A set (``--name``, default: the model folder's or hub id's name) holds one model and one
group of settings; asking for other settings under the same name is an error.

**Import.** Generations made elsewhere: a folder of images and a prompt list — a ``.csv``,
``.tsv``, ``.jsonl`` or ``.parquet`` with columns ``file`` (relative to the folder; also
``path``/``image``) and ``prompt`` (also ``caption``/``text``), optional ``seed``; or a ``.txt``
with one prompt per line, whose images are named ``<line>.<ext>`` or ``<line>_<anything>.<ext>``
(line numbers from 0). Images are referenced in place, checked through the image loader.
Prompts that are not probes yet become probes with ``origin = 'import'`` (no risk), whose
reference samples are the training samples with the same normalised caption and their clusters.
"""
from __future__ import annotations

import csv
import io
import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from curate.config import RunConfig
from curate.errors import ConfigError, CurateError
from curate.media.captions import NORM_SQL
from curate.media.images import open_image, read_ref
from curate.models import resolve_device
from curate.probes import probe_id as prompt_probe_id
from curate.probes import stable_id
from curate.progress import bar, info
from curate.store.catalog import Workspace
from curate.store.fsio import atomic_write_bytes

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def set_name(model: str) -> str:
    """Default generation-set name for a model: the folder's name, or the hub id with ``/`` → ``--``."""
    p = Path(model.rstrip("/"))
    name = p.name if p.exists() else model.strip("/").replace("/", "--")
    return _safe(name) or "generations"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")


def _dtype(precision: str, device: str):
    import torch

    if precision == "auto":
        return torch.float16 if device == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def load_pipeline(model: str, device: str = "auto", precision: str = "auto", scheduler: str = "ddim"):
    """Load a diffusers text-to-image pipeline.

    Args:
        model: a local folder written by ``save_pretrained`` or a hub id (needs network or the
            hub cache).
        device: 'auto' | 'cpu' | 'cuda'.
        precision: 'auto' (fp16 on GPU, fp32 on CPU) | 'fp32' | 'fp16' | 'bf16'.
        scheduler: 'ddim' (replace the scheduler by DDIMScheduler from its config) | 'model'.

    Returns:
        (pipeline on the device, description dict: pipeline, scheduler, device, dtype, diffusers).

    Raises:
        ConfigError: diffusers missing, or the model cannot be loaded (the message says how to
            provide a local copy).
    """
    try:
        import diffusers
        from diffusers import DDIMScheduler, DiffusionPipeline
    except ImportError:
        raise ConfigError("probe generate needs the package diffusers (pip install diffusers)") from None
    dev = resolve_device(device)
    dtype = _dtype(precision, dev)
    local = Path(model).expanduser()
    if local.exists() and not (local / "model_index.json").is_file():
        raise ConfigError(f"{model} is not a diffusers pipeline folder (no model_index.json); pass a folder "
                          "written by DiffusionPipeline.save_pretrained or a hub id")
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()  # loading chatter (accelerate hints, progress bars) is not curate's output
    dlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe = DiffusionPipeline.from_pretrained(str(local) if local.exists() else model, torch_dtype=dtype,
                                                     safety_checker=None, requires_safety_checker=False)
    except Exception as e:  # noqa: BLE001 - hub/network/format errors of every kind
        raise ConfigError(
            f"cannot load diffusers pipeline {model!r}: {type(e).__name__}: {e}. Offline? Download it elsewhere "
            f"(e.g. `huggingface-cli download {model} --local-dir sd`) and pass the folder") from None
    finally:
        dlog.set_verbosity(level)
        dlog.enable_progress_bar()
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None  # a blacked-out image would hide a copy
    if scheduler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe = pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    desc = {"pipeline": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__, "device": dev,
            "dtype": str(dtype).replace("torch.", ""), "diffusers": diffusers.__version__}
    return pipe, desc


class NoiseTracker:
    """Forward hook on a pipeline's denoiser that records Wen et al.'s per-step noise difference.

    While active, every denoiser call whose batch is ``2 · n`` (classifier-free guidance: the
    unconditional half first, then the prompt half, as diffusers' pipelines concatenate them)
    appends, per image, ``‖ε_text − ε_uncond‖₂`` over the whole latent (float32) to
    :attr:`steps`. Calls of another batch size are counted in :attr:`other_calls`.

    Wen et al. (ICLR 2024) define d(p) on the *noise prediction* ε; denoisers that output
    something else are brought back to it or refused, never measured as they are:

    - learned variance (output channels = 2 × input channels: DeepFloyd IF, DiT, PixArt-α, the
      learned-sigma UNets): the first half of the channels is ε (the pipelines split it so),
      the second the variance — only ε is measured (:attr:`variance_channels` says how many
      channels were left out);
    - ``v_prediction`` schedulers (Stable Diffusion 2 768-v): v = (ε − σ_t·x_t)/α_t with
      α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), so at the same x_t ε_text − ε_uncond = α_t·(v_text − v_uncond);
    - any other output (``sample`` prediction, flow matching, a channel count that is neither)
      is refused with a :class:`~curate.errors.ConfigError`.

    Raises:
        ConfigError: no denoiser, or an output the noise difference cannot be taken of.
    """

    def __init__(self, pipe, n: int):
        self.n = n
        self.steps: list[list[float]] = [[] for _ in range(n)]
        self.other_calls = 0
        net = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        if net is None:
            raise ConfigError(f"{type(pipe).__name__} has neither a unet nor a transformer to measure")
        conf = _config_dict(getattr(net, "config", None))
        cin, cout = conf.get("in_channels"), conf.get("out_channels")
        self.variance_channels = 0
        if cin and cout and cout != cin:
            if cout != 2 * cin:
                raise ConfigError(
                    f"{type(net).__name__} has {cin} input and {cout} output channels: neither a noise prediction nor "
                    "noise + learned variance, so Wen et al.'s noise difference cannot be measured; generate with "
                    "--guidance-scale 1 (no measurement) or elsewhere and `curate probe import` the images")
            self.variance_channels = cout - cin
        sched = getattr(pipe, "scheduler", None)
        sconf = _config_dict(getattr(sched, "config", None))
        self.prediction = sconf.get("prediction_type")
        if self.prediction not in ("epsilon", "v_prediction"):
            what = ("a flow velocity (flow matching)" if self.prediction is None else f"{self.prediction!r}")
            raise ConfigError(
                f"{type(sched).__name__} predicts {what}, not the noise: Wen et al.'s noise-difference magnitude is "
                "defined on the noise prediction (epsilon; v_prediction is converted). Generate with "
                "--guidance-scale 1 (no measurement) or elsewhere and `curate probe import` the images")
        self._alphas = getattr(sched, "alphas_cumprod", None) if self.prediction == "v_prediction" else None
        if self.prediction == "v_prediction" and self._alphas is None:
            raise ConfigError(f"{type(sched).__name__} predicts v but has no alphas_cumprod to convert it to the noise")
        self._handle = net.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        out = output[0] if isinstance(output, (tuple, list)) else getattr(output, "sample", output)
        if out.shape[0] != 2 * self.n:
            self.other_calls += 1
            return
        eps = out.float()
        if self.variance_channels:
            eps = eps[:, : eps.shape[1] - self.variance_channels]  # noise first, then the learned variance
        uncond, text = eps.chunk(2)
        d = (text - uncond).flatten(1).norm(p=2, dim=1)
        if self._alphas is not None:
            t = args[1] if len(args) > 1 else kwargs.get("timestep")
            t = int(t.flatten()[0]) if hasattr(t, "flatten") else int(t)
            d = d * float(self._alphas[t]) ** 0.5
        for j, v in enumerate(d.tolist()):
            self.steps[j].append(float(v))

    def close(self) -> None:
        self._handle.remove()


def _config_dict(conf) -> dict:
    """A diffusers config (FrozenDict), a plain dict or an object with attributes → dict."""
    if conf is None:
        return {}
    if isinstance(conf, dict):
        return dict(conf)
    return {k: getattr(conf, k) for k in ("in_channels", "out_channels", "prediction_type") if hasattr(conf, k)}


def zero_unconditional(pipe) -> bool:
    """Whether the pipeline replaces the empty prompt by a zero embedding for the unconditional
    branch when no negative prompt is given (SDXL and its kin: ``force_zeros_for_empty_prompt``)."""
    return bool(_config_dict(getattr(pipe, "config", None)).get("force_zeros_for_empty_prompt"))


def _settings(pc, desc: dict | None = None) -> dict:
    """What a set's images were made with; :func:`_set_settings_key` of it must not change within a set."""
    out = {"model": pc.model, "steps": pc.steps, "guidance_scale": pc.guidance_scale, "scheduler_choice": pc.scheduler,
           "height": pc.height, "width": pc.width, "precision": pc.precision, "safety_checker": "off",
           "noise_magnitude": "Wen et al. ICLR 2024: mean over steps of ||eps(x_t, prompt) - eps(x_t, empty)||_2 "
                              "over the whole latent"}
    if desc:
        out.update(scheduler=desc["scheduler"], dtype=desc["dtype"], pipeline=desc["pipeline"])
        if "unconditional" in desc:
            out["unconditional"] = desc["unconditional"]
    return out


def _set_settings_key(settings: dict) -> dict:
    """The settings that make a set's images comparable (device and library versions are not)."""
    return {k: settings.get(k) for k in ("model", "steps", "guidance_scale", "scheduler_choice", "height", "width",
                                         "precision")}


def reconcile(ws: Workspace, gen_set: str, folder: Path) -> dict[str, int]:
    """Make ``generations`` agree with the set's folder: temp files removed, sidecars the catalog
    lacks recorded, rows whose image or sidecar is gone forgotten (with their scores)."""
    removed_tmp = 0
    for p in folder.rglob("*.tmp*"):
        if re.search(r"\.tmp\d+$", p.name) and p.is_file():
            p.unlink()
            removed_tmp += 1
    known = {int(r[0]): r[1] for r in ws.q("SELECT gen_id, path FROM generations WHERE gen_set = ? AND origin = 'generate'",
                                            [gen_set])}
    gone = [g for g, path in known.items() if not (Path(path).is_file() and Path(path).with_suffix(".json").is_file())]
    rows = []
    for side in sorted(folder.rglob("seed-*.json")):
        png = side.with_suffix(".png")
        if not png.is_file():
            continue
        meta = json.loads(side.read_text())
        if int(meta["gen_id"]) not in known:
            rows.append(meta | {"path": str(png)})
    with ws.transaction() as con:
        if gone:
            ids = ",".join(map(str, gone))
            for t in ("generations", "gen_matches", "gen_scores"):
                con.execute(f"DELETE FROM {t} WHERE gen_id IN ({ids})")
        _insert(con, rows)
    return {"recovered": len(rows), "forgotten": len(gone), "temp_files_removed": removed_tmp}


def _insert(con, rows: list[dict]) -> None:
    for r in rows:
        con.execute(
            "INSERT INTO generations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [r["gen_id"], r["gen_set"], r["probe_id"], r["prompt"], r.get("seed"), r["path"], r.get("model"),
             json.dumps(r.get("settings") or {}, sort_keys=True), r.get("noise_magnitude"), r.get("noise_per_step"),
             r["origin"], r.get("width"), r.get("height")],
        )


def generate(ws: Workspace, cfg: RunConfig, *, gen_set: str | None = None, limit: int | None = None,
             pipe=None) -> dict[str, Any]:
    """Generate ``probe.seeds`` images per probe prompt (see module doc); resumable.

    Args:
        gen_set: name of the generation set (default :func:`set_name` of ``probe.model``).
        limit: only the first ``limit`` probes by rank (imported probes after the selected ones).
        pipe: an already loaded pipeline (tests, notebooks); ``probe.model`` still names it.

    Returns:
        counters: set, model, pipeline description, probes, generated, already_done, recovered,
        noise_measured (images with a magnitude), folder.

    Raises:
        ConfigError: no ``probe.model``, or the pipeline cannot be loaded.
        CurateError: no probes (run ``curate probe select``), or the set exists with other settings.
    """
    import torch

    pc = cfg.probe
    if not pc.model:
        raise ConfigError("probe generate needs a model: --model <diffusers folder or hub id> (config probe.model)")
    gen_set = _safe(gen_set) if gen_set else set_name(pc.model)
    probes = ws.q("SELECT probe_id, prompt FROM probes ORDER BY rank NULLS LAST, probe_id")
    if limit is not None:
        probes = probes[:limit]
    if not probes:
        raise CurateError("no probes: run `curate probe select` (or `curate probe import`) first")
    folder = ws.root / "probes" / gen_set
    folder.mkdir(parents=True, exist_ok=True)
    counters: dict[str, Any] = {"set": gen_set, "model": pc.model, "probes": len(probes), "folder": str(folder)}
    counters.update(reconcile(ws, gen_set, folder))
    seeds = [pc.seed + j for j in range(pc.seeds)]
    done = {(int(p), int(s)) for p, s in ws.q("SELECT probe_id, seed FROM generations WHERE gen_set = ?", [gen_set])}
    todo = [(int(pid), prompt, [s for s in seeds if (int(pid), s) not in done]) for pid, prompt in probes]
    todo = [t for t in todo if t[2]]
    # finished before this run: in the catalog already, or recovered from their files just now
    counters["already_done"] = max(0, sum(1 for pid, _ in probes for s in seeds if (int(pid), s) in done) - counters["recovered"])
    counters.update(generated=0, noise_measured=0)
    prev = ws.q("SELECT settings FROM generations WHERE gen_set = ? AND origin = 'generate' LIMIT 1", [gen_set])
    if prev and _set_settings_key(json.loads(prev[0][0])) != _set_settings_key(_settings(pc)):
        raise CurateError(
            f"generation set {gen_set!r} was made with {_set_settings_key(json.loads(prev[0][0]))}; these settings "
            f"are {_set_settings_key(_settings(pc))}: pass another --name")
    if not todo:
        return counters
    if pipe is None:
        pipe, desc = load_pipeline(pc.model, pc.device, pc.precision, pc.scheduler)
    else:
        import diffusers

        desc = {"pipeline": type(pipe).__name__, "scheduler": type(pipe.scheduler).__name__,
                "device": str(getattr(pipe, "device", "cpu")), "dtype": str(getattr(pipe, "dtype", "")).replace("torch.", ""),
                "diffusers": diffusers.__version__}
    measure = pc.guidance_scale > 1.0
    # Wen et al.'s d(p) compares with the empty prompt's embedding; an SDXL-type pipeline would use a
    # zero embedding, so the empty prompt is passed as the negative prompt (the images follow it too)
    zeros = zero_unconditional(pipe)
    desc["unconditional"] = ("empty prompt (passed as negative_prompt: this pipeline would use a zero embedding)"
                             if zeros else "empty prompt (the pipeline's own unconditional branch)")
    settings = _settings(pc, desc)
    counters["pipeline"] = desc
    counters["unconditional"] = desc["unconditional"]
    total = sum(len(t[2]) for t in todo)
    with bar(total=total, desc=f"generate {gen_set}", unit="img") as pb:
        for pid, prompt, missing in todo:
            for b0 in range(0, len(missing), pc.batch_size):
                batch = missing[b0 : b0 + pc.batch_size]
                gens = [torch.Generator("cpu").manual_seed(s) for s in batch]
                tracker = NoiseTracker(pipe, len(batch)) if measure else None
                try:
                    kw = {}
                    if pc.height:
                        kw["height"] = pc.height
                    if pc.width:
                        kw["width"] = pc.width
                    if zeros:
                        kw["negative_prompt"] = ""
                    out = pipe(prompt, num_images_per_prompt=len(batch), generator=gens, num_inference_steps=pc.steps,
                               guidance_scale=pc.guidance_scale, output_type="pil", **kw)
                finally:
                    if tracker is not None:
                        tracker.close()
                rows = []
                for j, (seed, im) in enumerate(zip(batch, out.images)):
                    steps = tracker.steps[j] if tracker is not None and tracker.steps[j] else None
                    gen_id = stable_id("generate", gen_set, pid, seed)
                    png = folder / str(pid) / f"seed-{seed:06d}.png"
                    png.parent.mkdir(parents=True, exist_ok=True)
                    row = {"gen_id": gen_id, "gen_set": gen_set, "probe_id": pid, "prompt": prompt, "seed": seed,
                           "model": pc.model, "settings": settings, "noise_per_step": steps,
                           "noise_magnitude": float(np.mean(steps)) if steps else None, "origin": "generate",
                           "width": im.width, "height": im.height}
                    buf = io.BytesIO()
                    im.save(buf, "PNG")
                    atomic_write_bytes(png, buf.getvalue())
                    atomic_write_bytes(png.with_suffix(".json"), (json.dumps(row, sort_keys=True) + "\n").encode())
                    rows.append(row | {"path": str(png)})
                    counters["noise_measured"] += steps is not None
                with ws.transaction() as con:
                    _insert(con, rows)
                counters["generated"] += len(rows)
                pb.update(len(batch))
    if not measure:
        info("[probe-generate] guidance_scale <= 1: no empty-prompt evaluation, noise magnitude not measured")
    return counters


# -- import -----------------------------------------------------------------------------------

_ALIASES = {"file": ("file", "path", "image", "filename"), "prompt": ("prompt", "caption", "text"), "seed": ("seed",)}


def _read_list(path: Path) -> list[dict]:
    """Rows of a prompt list (csv/tsv/jsonl/parquet) with canonical keys file, prompt, seed."""
    suf = path.suffix.lower()
    if suf in (".csv", ".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if suf == ".tsv" else ","))
    elif suf in (".jsonl", ".json"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif suf == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        raise ConfigError(f"prompt list {path}: use .txt, .csv, .tsv, .jsonl or .parquet")
    out = []
    for i, r in enumerate(rows):
        d = {}
        for canon, names in _ALIASES.items():
            hit = next((n for n in names if n in r), None)
            if hit is None and canon != "seed":
                raise ConfigError(f"prompt list {path}: row {i} has no {canon!r} column (one of {', '.join(names)})")
            d[canon] = r.get(hit) if hit else None
        out.append(d)
    return out


def _pairs(folder: Path, prompts: Path) -> tuple[list[dict], int]:
    """(rows {file: absolute path, prompt, seed}, files in the folder that no prompt names)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if prompts.suffix.lower() == ".txt":
        lines = prompts.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines = lines[:-1]
        rows, unmatched = [], 0
        for p in files:
            m = re.match(r"^(\d+)(?:[_-].*)?$", p.stem)
            if not m or int(m.group(1)) >= len(lines):
                unmatched += 1
                continue
            rows.append({"file": p, "prompt": lines[int(m.group(1))].rstrip("\r"), "seed": None})
        return rows, unmatched
    rows = []
    named = set()
    for r in _read_list(prompts):
        p = (folder / str(r["file"])).resolve()
        named.add(p)
        seed = r.get("seed")
        rows.append({"file": p, "prompt": "" if r["prompt"] is None else str(r["prompt"]),
                     "seed": int(seed) if seed not in (None, "") else None})
    return rows, sum(1 for p in files if p.resolve() not in named)


def import_generations(ws: Workspace, cfg: RunConfig, folder: str | Path, prompts: str | Path, *,
                       gen_set: str | None = None) -> dict[str, Any]:
    """Record images made elsewhere as generations of set ``gen_set`` (default: the folder's name).

    Args:
        folder: the images.
        prompts: the prompt list (see module doc).

    Returns:
        counters: set, imported, already_imported, rejected {reason: n} (missing file, or the
        loader's status), unmatched_files, new_probes.

    Raises:
        ConfigError: missing folder or list, unknown list format, a list without the columns.
    """
    folder, prompts = Path(folder).resolve(), Path(prompts).resolve()
    if not folder.is_dir():
        raise ConfigError(f"generations folder {folder} does not exist")
    if not prompts.is_file():
        raise ConfigError(f"prompt list {prompts} does not exist")
    gen_set = _safe(gen_set) if gen_set else (_safe(folder.name) or "imported")
    rows, unmatched = _pairs(folder, prompts)
    known = {int(r[0]) for r in ws.q("SELECT gen_id FROM generations WHERE gen_set = ?", [gen_set])}
    new, rejected, already = [], {}, 0
    for r in bar(rows, desc=f"import {gen_set}", unit="img"):
        gen_id = stable_id("import", gen_set, str(r["file"]))
        if gen_id in known:
            already += 1
            continue
        real = str(Path(r["file"]).resolve())  # stored resolved: read_ref reads no path that passes a link
        d, im = open_image(read_ref(real))
        if im is None:
            rejected[d.status] = rejected.get(d.status, 0) + 1
            continue
        new.append({"gen_id": gen_id, "gen_set": gen_set, "probe_id": prompt_probe_id(r["prompt"]), "prompt": r["prompt"],
                    "seed": r["seed"], "path": real, "model": None, "origin": "import",
                    "settings": {"imported_from": str(folder), "prompt_list": str(prompts)},
                    "width": d.width, "height": d.height})
    new_probes = _probes_for(ws, cfg, sorted({(g["probe_id"], g["prompt"]) for g in new}))
    with ws.transaction() as con:
        for p in new_probes:
            con.execute("INSERT INTO probes (probe_id, prompt, sample_ids, origin, n_samples) VALUES (?, ?, ?, 'import', ?)",
                        [p["probe_id"], p["prompt"], p["sample_ids"], p["n_samples"]])
        _insert(con, new)
    return {"set": gen_set, "imported": len(new), "already_imported": already, "rejected": rejected,
            "unmatched_files": unmatched, "new_probes": len(new_probes)}


def _probes_for(ws: Workspace, cfg: RunConfig, prompts: list[tuple[int, str]]) -> list[dict]:
    """Probe rows for imported prompts that are not probes yet, with reference samples found by
    normalised caption (and their clusters), at most ``probe.max_references`` each."""
    have = {int(r[0]) for r in ws.q("SELECT probe_id FROM probes")}
    todo = [(pid, p) for pid, p in prompts if pid not in have]
    if not todo:
        return []
    import pyarrow as pa

    t = pa.table({"probe_id": pa.array([p for p, _ in todo], pa.int64()), "caption": pa.array([p for _, p in todo])})
    ws.con.register("_imp", t)
    try:
        refs = ws.q(
            f"""WITH q AS (SELECT probe_id, {NORM_SQL} AS norm FROM _imp),
                     own AS (SELECT q.probe_id, s.sample_id FROM q JOIN samples s
                             ON {NORM_SQL.replace('caption', 's.caption')} = q.norm WHERE q.norm <> ''),
                     members AS (SELECT o.probe_id, coalesce(c2.sample_id, o.sample_id) AS sample_id
                                 FROM own o LEFT JOIN clusters c ON c.sample_id = o.sample_id
                                 LEFT JOIN clusters c2 ON c2.cluster_id = c.cluster_id)
                SELECT probe_id, list(DISTINCT sample_id ORDER BY sample_id), (SELECT count(*) FROM own o2
                       WHERE o2.probe_id = members.probe_id)
                FROM members GROUP BY probe_id""")
    finally:
        ws.con.unregister("_imp")
    by = {int(p): (list(s)[: cfg.probe.max_references], int(n)) for p, s, n in refs}
    return [{"probe_id": pid, "prompt": p, "sample_ids": by.get(pid, ([], 0))[0], "n_samples": by.get(pid, ([], 0))[1]}
            for pid, p in todo]

