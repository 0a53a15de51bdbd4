"""The ``curate`` command line: a thin Click shell over :mod:`curate.api`.

Every command builds a config and makes one API call; errors become one message.
"""
from __future__ import annotations

import json
import os
import sys

import click

STAGE_OPTIONS = {
    # stage: [(option, config key, type, help)]
    "ingest": [("--batch-rows", "batch_rows", int, "rows per insert batch"),
               ("--schema", "schema", str, "layout of every metadata source: auto, or a name from `curate schemas`"),
               ("--duckdb-threads", "duckdb_threads", int, "DuckDB threads"),
               ("--duckdb-memory-limit", "duckdb_memory_limit", str, "DuckDB memory limit, e.g. 3GB")],
    "hash": [("--max-pixels", "max_pixels", int, "refuse to decode above this many pixels"),
             ("--workers", "workers", int, "decoding processes")],
    "embed": [("--model", "model", str, "efficientnet_lite0 | open_clip:<arch>/<tag|path|none> | sscd:<path>"),
              ("--device", "device", click.Choice(["auto", "cpu", "cuda"]), "where the model runs"),
              ("--batch-size", "batch_size", int, "images per forward pass"),
              ("--num-workers", "num_workers", int, "decoding worker processes"),
              ("--precision", "precision", click.Choice(["auto", "fp32", "fp16", "bf16"]),
               "autocast dtype (auto: bf16/fp16 on GPU, fp32 on CPU)"),
              ("--preprocess", "preprocess", click.Choice(["model", "sscd_288", "sscd_320", "dcr_224"]),
               "input preprocessing (SSCD presets; part of the embedding key)"),
              ("--caption-model", "caption_model", str, "all-MiniLM-L6-v2 | open_clip:<arch>/<pretrained> (captions)")],
    "dedup": [("--phash-max-distance", "phash_max_distance", int, "pHash Hamming radius in bits (0-64)"),
              ("--embedding-min-cosine", "embedding_min_cosine", float, "cosine similarity threshold (-1..1)"),
              ("--caption-exact/--no-caption-exact", "caption_exact", None, "edges between equal normalised captions")],
    "flag": [("--pack", "packs", str, "rule pack name or YAML path (repeatable)")],
    "export": [],
    "report": [("--max-clusters", "max_clusters", int, "clusters shown in the report")],
}

HELP = {
    "ingest": "Load metadata (parquet, CC3M/CC12M TSV), image folders, webdataset shards, img2dataset outputs and\n"
              "HF datasets into the catalog. The layout chosen for each file and its column mapping go to stderr.\n\n"
              "Example: curate --workspace ws ingest --config examples/sample/curate.yaml --schema auto",
    "hash": "sha256, decode status and pHash (bit-identical to imagededup's, on the loader's pixels) for every "
            "image.\n\nExample: curate --workspace ws hash --workers 8",
    "embed": "Image (and caption) embeddings: float16, L2-normalised parts keyed by model + preprocessing.\n\n"
             "Example: curate --workspace ws embed --device cuda --batch-size 256 --caption-model all-MiniLM-L6-v2",
    "dedup": "Duplicate edges (sha256, pHash, embedding) and clusters with one keeper.\n\n"
             "Example: curate --workspace ws dedup --phash-max-distance 8",
    "flag": "Evaluate rule packs; --dry-run prints per-rule hit counts without writing.\n\n"
            "Example: curate --workspace ws flag --dry-run",
    "export": "Write out/manifest.parquet, out/removals/all.csv and out/summary.json.\n\nExample: curate --workspace ws export",
    "report": "Write the self-contained out/report/index.html.\n\nExample: curate --workspace ws report",
}


class _Group(click.Group):
    def invoke(self, ctx):
        from curate.errors import CurateError

        try:
            return super().invoke(ctx)
        except CurateError as e:
            raise click.ClickException(str(e)) from None


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
    from curate.progress import set_quiet

    set_quiet(quiet)
    ctx.obj = {"workspace": workspace}


def _ws(ctx) -> str:
    ws = ctx.obj["workspace"]
    if not ws:
        raise click.UsageError("no workspace: pass --workspace DIR or set CURATE_WORKSPACE")
    return ws


def _print_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@main.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option("--force", is_flag=True, help="Re-run every stage even if up to date.")
@click.pass_context
def run(ctx, config, force):
    """Run every stage with CONFIG (a curate.yaml); prints the summary as JSON.

    Example: curate --workspace ws run examples/sample/curate.yaml
    """
    from curate import api

    res = api.run(_ws(ctx), config, force=force)
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
        counters = ", ".join(f"{k}={v}" for k, v in info.get("counters", {}).items() if not isinstance(v, (dict, list)))
        state = info["status"] + (" (out of date: an upstream stage ran since)" if info.get("out_of_date") else "")
        click.echo(f"{stage:8s} {state:10s} {counters}")
        if info.get("error"):
            click.echo(f"         error: {info['error'].splitlines()[0]}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def schemas(as_json):
    """List the known metadata layouts and their column mappings.

    Example: curate schemas --json
    """
    from curate.schemas import load_layouts

    lays = load_layouts()
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


def _make_stage_command(stage: str):
    def cmd(ctx, config, force, dry_run=False, **opts):
        from curate import api

        ws = _ws(ctx)
        cfg = api.workspace_config(ws, config)
        if stage == "flag" and opts.get("packs"):
            opts["packs"] = list(opts["packs"])
        elif stage == "flag":
            opts["packs"] = None
        schema = opts.pop("schema", None)
        if schema:
            cfg = api.with_schema(cfg, schema)
        cfg = api.with_overrides(cfg, stage, opts)
        if dry_run:
            from curate.stages.flag import hit_counts, load_packs

            w = api.open_workspace(ws, cfg)
            try:
                _print_json(hit_counts(w, load_packs(cfg)))
            finally:
                w.close()
            return
        _print_json(api.run_one(ws, stage, cfg, force=force))

    cmd.__doc__ = HELP[stage]
    params = [
        click.option("--config", "-c", type=click.Path(exists=True, dir_okay=False),
                     help="curate.yaml (default: the workspace's last config)."),
        click.option("--force", is_flag=True, help="Run even if up to date."),
    ]
    for opt, key, typ, hlp in STAGE_OPTIONS[stage]:
        if typ is None:
            params.append(click.option(opt, key, default=None, help=hlp))
        elif key == "packs":
            params.append(click.option(opt, key, multiple=True, type=typ, help=hlp))
        else:
            params.append(click.option(opt, key, type=typ, default=None, help=hlp))
    if stage == "flag":
        params.append(click.option("--dry-run", is_flag=True, help="Print per-rule hit counts; write nothing."))
    f = click.pass_context(cmd)
    for p in reversed(params):
        f = p(f)
    return main.command(name=stage)(f)


for _stage in STAGE_OPTIONS:
    _make_stage_command(_stage)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
