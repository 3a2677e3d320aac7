"""`acml embed`: molecule shards (path or s3://) -> training-table shards, on Ray Data."""

from __future__ import annotations

import argparse

from acml_ray.cli.common import add_config_arguments, config_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("embed", help="featurise molecules and embed every modality (cached) with Ray Data")
    add_config_arguments(parser)
    parser.add_argument("--input", help="Parquet/CSV file or folder, path or s3:// URI (embed.input)")
    parser.add_argument("--out", help="output_dir (default from the config)")
    parser.add_argument("--output", help="where the tables go, path or s3:// URI (embed.output)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from acml_ray.pipelines.embed import run_embed_pipeline
    from acml_ray.storage import StorageError
    from acml_ray.train import init_ray

    cfg = config_from_args(args, extra={"embed.input": args.input, "embed.output": args.output})
    use_gpu = cfg.embed.num_gpus_per_actor > 0
    try:
        if not cfg.embed.input:  # before Ray starts (seconds): the pipeline checks the rest early
            raise ValueError("embed.input is required: --input or embed.input in the config")
        init_ray(num_cpus=None, use_gpu=use_gpu)
        result = run_embed_pipeline(cfg)
    except StorageError as exc:  # names the location, never the credentials
        raise PermissionError(str(exc)) from None
    print(
        f"train: {result.train_path}\nval: {result.val_path}\nquarantine: {result.quarantine_path}\n"
        f"report: {result.report_path}"
    )
    return 0
