"""The ``curate`` command line: a thin Click shell over :mod:`curate.api`.

Every command builds a config and makes one API call; errors become one message.
"""
from __future__ import annotations

import json
import sys

import click

class _NumberOrOff(click.ParamType):
    """A number, or ``off`` (also ``none``/``null``): switches the signal off (config value null)."""

    def __init__(self, base):
        self.base = base
        self.name = f"{base.name}|off"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value.strip().lower() in ("off", "none", "null"):
            return OFF
        return self.base.convert(value, param, ctx)


OFF = object()  # an option given as `off`: the config value becomes null

# where a per-sample stage runs (hash, embed, flag's image classifiers): curate.config.EngineConfig, docs/SCALE_OUT.md
_ENGINE_OPTIONS = [
    ("--engine", "engine", click.Choice(["local", "ray"]), "local (this machine) or ray (a Ray cluster, same results)"),
    ("--ray-address", "ray_address", str, "ray: cluster to join (auto, or HOST:PORT); default $RAY_ADDRESS, else "
     "start Ray on this machine"),
    ("--actors", "actors", int, "ray: actors in the pool (default: as many as the cluster's resources allow)"),
    ("--actor-cpus", "actor_cpus", float, "ray: CPUs per actor (default 1)"),
    ("--ray-staging", "ray_staging", str, "ray: folder or URI (s3://...) for the work shards every node reads"),
]

STAGE_OPTIONS = {
    # stage: [(option, config key, type, help)]
    "ingest": [("--batch-rows", "batch_rows", int, "rows per insert batch"),
               ("--schema", "schema", str, "layout of every metadata source: auto, or a name from `curate schemas`"),
               ("--duckdb-threads", "duckdb_threads", int, "DuckDB threads"),
               ("--duckdb-memory-limit", "duckdb_memory_limit", str, "DuckDB memory limit, e.g. 3GB")],
    "hash": [("--max-pixels", "max_pixels", int, "refuse to decode above this many pixels"),
             ("--workers", "workers", int, "decoding processes"), *_ENGINE_OPTIONS],
    "embed": [("--model", "model", str, "efficientnet_lite0 | open_clip:<arch>/<tag|path|none> | sscd:<path>"),
              ("--device", "device", click.Choice(["auto", "cpu", "cuda"]), "where the model runs"),
              ("--batch-size", "batch_size", int, "images per forward pass"),
              ("--num-workers", "num_workers", str, "decoding worker processes, or auto (see curate.models.feeder.decode_workers)"),
              ("--precision", "precision", click.Choice(["auto", "fp32", "fp16", "bf16"]),
               "autocast dtype (auto: bf16/fp16 on GPU, fp32 on CPU)"),
              ("--preprocess", "preprocess", click.Choice(["auto", "model", "full", "sscd_288", "sscd_320", "dcr_224",
                                                          "dcr_laion_224"]),
               "input preprocessing: auto, model (the model's own), full (whole image, no crop), SSCD presets; "
               "part of the embedding key"),
              ("--caption-model", "caption_model", str, "all-MiniLM-L6-v2 | open_clip:<arch>/<pretrained> (captions)"),
              *_ENGINE_OPTIONS, ("--num-gpus", "num_gpus", float, "ray: GPUs per embedding actor (e.g. 1; 0 = CPU)")],
    "dedup": [("--phash-max-distance", "phash_max_distance", _NumberOrOff(click.INT),
               "pHash Hamming radius in bits (0-64), or off (no pHash edges)"),
              ("--phash-mirror/--no-phash-mirror", "phash_mirror", None,
               "also match each image's mirror pHash (flipped copies)"),
              ("--embedding-min-cosine", "embedding_min_cosine", _NumberOrOff(click.FLOAT),
               "cosine similarity threshold (-1..1), or off (no embedding edges)"),
              ("--caption-exact/--no-caption-exact", "caption_exact", None, "edges between equal normalised captions"),
              # embedding_search: ivfpq only: survey, fill and search the embedding parts in Ray tasks
              *[o for o in _ENGINE_OPTIONS if o[1] in ("engine", "ray_address", "actor_cpus")]],
    "flag": [("--pack", "packs", str, "rule pack name or YAML path (repeatable)"),
             ("--claims", "claims", str, "claim file (.yaml/.csv) or folder of them (repeatable); see curate.stages.flag.claims"),
             ("--opt-out", "opt_out", str, "opt-out list: one URL or domain per line (repeatable)"), *_ENGINE_OPTIONS],
    "export": [("--format", "format", click.Choice(["manifest", "webdataset"]),
                "manifest (default), or webdataset: also out/webdataset/NNNNNN.tar shards of the kept samples"),
               ("--shard-size", "shard_size", int, "webdataset: samples per shard (default 10000)"),
               ("--shard-max-bytes", "shard_max_bytes", int, "webdataset: bytes per shard file (default: no limit)")],
    "report": [("--max-clusters", "max_clusters", int, "clusters shown in the report")],
}

HELP = {
    "ingest": "Load metadata (parquet, CC3M/CC12M TSV), image folders, webdataset shards, img2dataset outputs and\n"
              "HF datasets into the catalog. The layout chosen for each file and its column mapping go to stderr.\n\n"
              "Example: curate --workspace ws ingest --config examples/sample/curate.yaml --schema auto",
    "hash": "sha256, decode status and pHash (bit-identical to imagededup's, on the loader's pixels) for every "
            "image.\n\nExample: curate --workspace ws hash --workers 8\n\n"
            "On a Ray cluster: curate --workspace ws hash --engine ray --ray-address auto --ray-staging s3://b/tmp",
    "embed": "Image (and caption) embeddings: float16, L2-normalised parts keyed by model + preprocessing.\n\n"
             "Example: curate --workspace ws embed --device cuda --batch-size 256 --caption-model all-MiniLM-L6-v2\n\n"
             "On a Ray cluster: curate --workspace ws embed --engine ray --ray-address auto --num-gpus 1 --actor-cpus 8",
    "dedup": "Duplicate edges (sha256, pHash incl. mirror images, embedding) and clusters with one keeper.\n\n"
             "Example: curate --workspace ws dedup --phash-max-distance 8 --embedding-min-cosine off",
    "flag": "Evaluate rule packs; --dry-run prints per-rule hit counts without writing.\n\n"
            "Example: curate --workspace ws flag --dry-run",
    "export": "Write out/manifest.parquet, out/removals/all.csv and out/summary.json; with --format webdataset also\n"
              "the kept samples as tar shards out/webdataset/NNNNNN.tar (<key>.jpg|png|webp, .json, .txt) + index.json.\n\n"
              "Example: curate --workspace ws export --format webdataset --shard-size 5000",
    "report": "Write the self-contained out/report/index.html.\n\nExample: curate --workspace ws report",
}


class _Group(click.Group):
    def invoke(self, ctx):
        from curate.errors import CurateError

        try:
            return super().invoke(ctx)
        except CurateError as e:
            raise click.ClickException(str(e)) from None
        except Exception as e:  # a full disk or a read-only folder, from any writer: one line, not a traceback
            from curate import api

            err = api.explain_error(e, (ctx.obj or {}).get("workspace"))
            if err is None:
                raise
            raise click.ClickException(str(err)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--workspace", "-w", envvar="CURATE_WORKSPACE", type=click.Path(file_okay=False),
              help="Workspace folder (env CURATE_WORKSPACE).")
@click.option("--quiet", "-q", is_flag=True, help="No progress output on stderr.")
@click.version_option(package_name="curate")
@click.pass_context
def main(ctx, workspace, quiet):
    """curate: prepare and audit image–text training sets for text-to-image diffusion models.

    \b
    Example:
      curate --workspace ws run examples/sample/curate.yaml
      curate --workspace ws status --json
    """
    from curate import api

    api.set_quiet(quiet)
    ctx.obj = {"workspace": workspace}


def _ws(ctx) -> str:
    ws = ctx.obj["workspace"]
    if not ws:
        raise click.UsageError("no workspace: pass --workspace DIR or set CURATE_WORKSPACE")
    return ws


def _print_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="CONFIG.yaml | PATH...")
@click.option("--force", is_flag=True, help="Re-run every stage even if up to date (hash reads every image again).")
@click.pass_context
def run(ctx, inputs, force):
    """Run every stage; prints the summary as JSON.

    With one CONFIG.yaml: its sources and settings. With PATHs (parquet/TSV files, globs, brace
    patterns, image folders, webdataset shards, img2dataset or save_to_disk folders): each is
    detected as a source, every other setting is the default, and the config used is written to
    WORKSPACE/curate.yaml (edit it and run it to change a setting).

    Examples: curate --workspace ws run examples/sample/curate.yaml;
    curate --workspace ws run 'shards/{00000..00009}.tar' photos/
    """
    from curate import api

    if len(inputs) == 1 and inputs[0].lower().endswith((".yaml", ".yml")):
        res = api.run(_ws(ctx), _cwd_path(inputs[0], "CONFIG"), force=force)
    else:
        res = api.run_inputs(_ws(ctx), list(inputs), force=force)
    _print_json(res["summary"])


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx, as_json):
    """Per stage: its last run's status and counters.

    Example: curate --workspace ws status --json
    """
    from curate import api

    st = api.status(_ws(ctx))
    if as_json:
        _print_json(st)
        return
    for stage, info in st.items():
        counters = api.counter_text(info.get("counters") or {})
        state = info["status"] + (f" (out of date: {info['out_of_date_because']})" if info.get("out_of_date") else "")
        if info.get("changed_images"):
            state += "; `curate run` hashes them again"
        click.echo(f"{stage:8s} {state:10s} {counters}")
        if info.get("error"):
            click.echo(f"         error: {info['error'].splitlines()[0]}")
        for r in (info.get("counters") or {}).get("rules") or []:  # flag: per-rule coverage
            if isinstance(r, dict) and {"checked", "unknown", "hits"} <= set(r):
                click.echo(f"         {r['pack']}/{r['rule_id']}: checked {r['checked']}, unknown {r['unknown']} "
                           f"({r['unknown_action']}), hits {r['hits']}")
        if info.get("run"):  # a run holds the catalog: what its status.json says
            r, p = info["run"], info["run"].get("progress")
            done = f", {p['desc']} {p['done']}/{p['total'] if p['total'] is not None else '?'} {p['unit']}" if p else ""
            where = ", between stages" if r.get("between_stages") else ""
            click.echo(f"         run in progress: pid {r['pid']}, started {r['started']}{where}{done} "
                       f"(as of {r['written']})")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def schemas(as_json):
    """List the known metadata layouts and their column mappings.

    Example: curate schemas --json
    """
    from curate import api

    lays = api.layouts()
    if as_json:
        _print_json({n: l.model_dump() for n, l in lays.items()})
        return
    for n, lay in lays.items():
        click.echo(f"{n}: {lay.description}")
        if lay.names:
            click.echo(f"    (headerless {lay.format}: {' <TAB> '.join(lay.names)})")
        for canon, alts in lay.columns.items():
            req = " (required)" if canon in lay.required else ""
            click.echo(f"    {canon:12s} <- {' | '.join(alts)}{req}")


def _cwd_path(value: str, key: str) -> str:
    """A path given on the command line, made absolute against the working directory (paths in a
    config file resolve against the config's folder); a shipped pack name (no '/', no .yaml) as is."""
    from pathlib import Path

    if key == "packs" and not (value.endswith((".yaml", ".yml")) or "/" in value):
        return value
    return str(Path(value).expanduser().resolve())


def _make_stage_command(stage: str):
    def cmd(ctx, config, force, dry_run=False, **opts):
        from curate import api

        ws = _ws(ctx)
        cfg = api.workspace_config(ws, config)
        for many in ("packs", "claims", "opt_out"):  # repeatable options: replace the configured list; not given = as configured
            if many in opts:
                opts[many] = [_cwd_path(v, many) for v in opts[many]] or None
        schema = opts.pop("schema", None)
        if schema:
            cfg = api.with_schema(cfg, schema)
        # options not given are None (left as configured); `off` switches a signal off (null)
        cfg = api.with_overrides(cfg, stage, {k: None if v is OFF else v for k, v in opts.items() if v is not None})
        if dry_run:
            _print_json(api.flag_dry_run(ws, cfg))
            return
        _print_json(api.run_one(ws, stage, cfg, force=force))

    cmd.__doc__ = HELP[stage]
    params = [
        click.option("--config", "-c", type=click.Path(exists=True, dir_okay=False),
                     help="curate.yaml (default: the workspace's last config)."),
        click.option("--force", is_flag=True, help="Run even if up to date (hash: read and hash every image again)."),
    ]
    for opt, key, typ, hlp in STAGE_OPTIONS[stage]:
        if typ is None:
            params.append(click.option(opt, key, default=None, help=hlp))
        elif key in ("packs", "claims", "opt_out"):
            params.append(click.option(opt, key, multiple=True, type=typ, help=hlp))
        else:
            params.append(click.option(opt, key, type=typ, default=None, help=hlp))
    if stage == "flag":
        params.append(click.option("--dry-run", is_flag=True,
                                   help="Print per-rule (and per-claimant) hit counts; write nothing."))
    f = click.pass_context(cmd)
    for p in reversed(params):
        f = p(f)
    return main.command(name=stage)(f)


for _stage in STAGE_OPTIONS:
    _make_stage_command(_stage)


@main.group()
def probe():
    """Memorization probes: select risky prompts, generate or import images, score copying.

    \b
    Example:
      curate -w ws probe select --top-k 50
      curate -w ws probe generate --model path/to/sd-v1-4 --seeds 4
      curate -w ws probe import gens/ --prompts gens/prompts.csv --name sd14
      curate -w ws probe score --sscd sscd_disc_mixup.torchscript.pt
    """


def _probe_run(ctx, command: str, config, overrides: dict, **kwargs):
    from curate import api

    _print_json(api.probe(_ws(ctx), command, config, {k: v for k, v in overrides.items() if v is not None}, **kwargs))


_CONFIG_OPT = click.option("--config", "-c", type=click.Path(exists=True, dir_okay=False),
                           help="curate.yaml (default: the workspace's last config).")


@probe.command("select")
@_CONFIG_OPT
@click.option("--top-k", type=int, help="probes to keep, highest replication risk first (default 100)")
@click.option("--max-references", type=int, help="reference training samples stored per probe (default 64)")
@click.pass_context
def probe_select(ctx, config, top_k, max_references):
    """Rank prompts by replication risk (duplicate clusters, caption duplication, templates,
    specificity) into table probes and out/probes.parquet.

    Example: curate -w ws probe select --top-k 50
    """
    _probe_run(ctx, "select", config, {"top_k": top_k, "max_references": max_references})


@probe.command("generate")
@_CONFIG_OPT
@click.option("--model", help="diffusers pipeline: local folder or hub id (config probe.model)")
@click.option("--seeds", type=int, help="images per prompt (default 4)")
@click.option("--seed", type=int, help="first seed (default 0)")
@click.option("--steps", type=int, help="denoising steps (default 50)")
@click.option("--guidance-scale", type=float, help="classifier-free guidance (default 7.5; > 1 to measure noise)")
@click.option("--scheduler", type=click.Choice(["ddim", "model"]), help="ddim (default) or the pipeline's own")
@click.option("--height", type=int, help="image height (default: the pipeline's)")
@click.option("--width", type=int, help="image width (default: the pipeline's)")
@click.option("--batch-size", type=int, help="images per pipeline call (default 4)")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="where the pipeline runs")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), help="model dtype")
@click.option("--name", "gen_set", help="generation set name (default: the model's name)")
@click.option("--limit", type=int, help="only the first N probes by rank")
@click.pass_context
def probe_generate(ctx, config, model, gen_set, limit, **opts):
    """Generate images for the probe prompts (N seeds each) with a diffusers pipeline, recording
    Wen et al.'s noise-difference magnitude; resumable.

    Example: curate -w ws probe generate --model ./sd-v1-4 --seeds 4 --steps 50
    """
    from pathlib import Path

    if model and Path(model).expanduser().exists():
        model = str(Path(model).expanduser().resolve())
    _probe_run(ctx, "generate", config, {"model": model, **opts}, gen_set=gen_set, limit=limit)


@probe.command("import")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--prompts", required=True, type=click.Path(exists=True, dir_okay=False),
              help="prompt list: .csv/.tsv/.jsonl/.parquet (file, prompt[, seed]) or .txt (one per line; images <line>_*.png)")
@click.option("--name", "gen_set", help="generation set name (default: the folder's name)")
@_CONFIG_OPT
@click.pass_context
def probe_import(ctx, folder, prompts, gen_set, config):
    """Record images generated elsewhere, with their prompts, as a generation set.

    Example: curate -w ws probe import gens/ --prompts gens/prompts.csv --name sd14
    """
    _probe_run(ctx, "import", config, {}, folder=folder, prompts=prompts, gen_set=gen_set)


@probe.command("score")
@_CONFIG_OPT
@click.option("--sscd", help="copy-detection descriptor: sscd or sscd_distilled (offline ONNX), or an .onnx / SSCD "
              "TorchScript file; catalog: the catalog's vectors as they are; default: the embed model (at "
              "--sscd-preprocess when it is an SSCD descriptor)")
@click.option("--sscd-preprocess", type=click.Choice(["sscd_288", "sscd_320", "dcr_224", "dcr_laion_224"]),
              help="SSCD preprocessing (default dcr_laion_224: DCR's LAION search transform, where 0.5 was calibrated)")
@click.option("--matches", type=int, help="nearest training images stored per generation (default 5)")
@click.option("--replicated-similarity", type=float, help="top-1 similarity above which a generation is replicated")
@click.option("--close-similarity", type=float, help="top-1 similarity above which a generation is close")
@click.option("--background-sample", type=int, help="training images in the train-to-train background (default 2000)")
@click.option("--containment/--no-containment", default=None,
              help="verify each generation against its nearest training images with SIFT + RANSAC: a verified "
              "containment is a partial replication (default: on)")
@click.option("--name", "gen_set", help="score one generation set (default: all)")
@click.pass_context
def probe_score(ctx, config, sscd, gen_set, **opts):
    """Search the generations' nearest training images; Somepalli et al.'s statistics, Carlini et
    al.'s tiled l2 and a verdict per generation and prompt (replicated / close / novel).

    Example: curate -w ws probe score --sscd sscd_distilled
    """
    from pathlib import Path

    if sscd and sscd not in ("sscd", "sscd_distilled", "catalog"):
        if not Path(sscd).is_file():
            raise click.BadParameter(f"{sscd!r} is neither sscd, sscd_distilled, catalog nor a file", param_hint="--sscd")
        sscd = str(Path(sscd).resolve())
    _probe_run(ctx, "score", config, {"sscd": sscd, **opts}, gen_set=gen_set)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
