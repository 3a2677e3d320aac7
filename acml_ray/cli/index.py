"""`acml index`: embed a molecule library with a trained model into a structure index (Ray Data)."""

from __future__ import annotations

import argparse
import textwrap


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "index",
        help="embed a molecule library into a structure index (FAISS) for `acml search`",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Featurises every library molecule with the model's featuriser, embeds it with the graph "
            "encoder and every modality's graph-side projection (Ray Data; GPU actors when the cluster has "
            "GPUs) and writes shards, a quarantine of bad rows with their reasons, and one FAISS index per "
            "modality (exact below index.ann_threshold rows, IVF above). Re-running with the same --out "
            "resumes an interrupted build; another --library adds to the index, embedding only molecules "
            "whose InChIKey is new. Options are the `index` section of --config and --set index.*=...; "
            "guide: docs/search.md",
            95,
        ),
        epilog="examples:\n"
        "  acml index --model runs/demo --library mols.csv --out runs/library-index\n"
        "  acml index --model models:/acml-encoder@champion --library s3://bucket/zinc/ \\\n"
        "      --out s3://bucket/indexes/zinc --register zinc-search",
    )
    parser.add_argument(
        "--model",
        help="run folder, model folder, s3:// run, or runs:/ / models:/NAME@alias URI "
        "(needed to create an index; an existing index must match it)",
    )
    parser.add_argument(
        "--library",
        help="CSV/TSV/Parquet/SMI file or folder of SMILES (+ optional id), path "
        "or s3://; leave out to only finish the FAISS step",
    )
    parser.add_argument("--out", required=True, help="index folder, path or s3:// URI")
    parser.add_argument("--smiles-column", help="default: smiles, SMILES or canonical_smiles")
    parser.add_argument("--id-column", help="default: id/ID/name when present, else the InChIKey")
    parser.add_argument(
        "--tracking-uri", help="MLflow URI for a models:/ reference and --register (default $MLFLOW_TRACKING_URI)"
    )
    parser.add_argument(
        "--register",
        metavar="NAME",
        help="also register the index as an MLflow search model NAME (pyfunc; see docs/search.md)",
    )
    parser.add_argument("--alias", default="champion", help="alias of the registered search model")
    parser.add_argument("--config", help="YAML whose `index:` section configures the build")
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override an index value, e.g. --set index.ann_threshold=50000 (repeatable)",
    )
    parser.set_defaults(func=run)


def _describe(modality: str, ann: dict) -> str:
    text = f"{modality} {ann['kind']} ({ann['rows']} rows"
    if ann["kind"] == "ivf":
        recall = f", recall@10 {ann['recall']:.3f}" if ann.get("recall") is not None else ", uncalibrated"
        text += f", nprobe {ann['nprobe']} of {ann['nlist']}{recall}"
    return text + ")"


def run(args: argparse.Namespace) -> int:
    import json
    import tempfile

    from acml_ray.cli.common import parse_overrides
    from acml_ray.config import load_config

    overrides = parse_overrides(args.set or [])
    outside = [k for k in overrides if not k.startswith("index.")]
    if outside:
        raise ValueError(f"acml index only takes index.* overrides, got {outside}")
    flags = {"index.smiles_column": args.smiles_column, "index.id_column": args.id_column}
    cfg = load_config(args.config, {**overrides, **{k: v for k, v in flags.items() if v is not None}}).index

    from acml_ray.search.build import build_index  # torch, RDKit, Ray: once arguments are valid
    from acml_ray.search.layout import IndexStore
    from acml_ray.storage import StorageError

    try:
        with tempfile.TemporaryDirectory() as tmp:
            if args.model is not None:
                from acml_ray.model.serialization import resolve_model

                # build_index finds the run's held-out table beside model_dir (resolve_model
                # copies it next to a remote model, too).
                model_dir, _ = resolve_model(args.model, tmp, args.tracking_uri)
            else:  # finish or extend an existing index with its own model
                store = IndexStore(args.out)
                if store.read_manifest() is None:
                    raise ValueError(f"no index at {args.out} yet: give --model to create it")
                model_dir = store.local_copy("model/model.pt", tmp).parent
            if args.library is not None:
                from acml_ray.environment import init_ray

                init_ray(num_cpus=None, use_gpu=bool(cfg.num_gpus_per_actor))
            result = build_index(
                model_dir,
                args.out,
                args.library,
                cfg,
                source=args.model or args.out,
                tracking_uri=args.tracking_uri,
            )
    except StorageError as exc:  # names the location, never the credentials
        raise PermissionError(str(exc)) from None
    print(f"index: {result.location}")
    print(
        f"rows: {result.rows} (added {result.added}, already indexed {result.already_indexed}, duplicates "
        f"{result.duplicates}, quarantined {result.quarantined}: {json.dumps(result.quarantined_by_reason)})"
    )
    print("faiss: " + ", ".join(_describe(m, a) for m, a in result.ann.items()))
    if result.added:
        print(f"embedded {result.molecules_per_second:.0f} molecules/s")
    if args.register:
        from acml_ray.search.pyfunc import register_search_model

        registered = register_search_model(args.out, args.register, alias=args.alias, tracking_uri=args.tracking_uri)
        print(
            f"registered: {registered.name} version {registered.version} (alias {registered.alias}); "
            f"serve with: mlflow models serve -m {registered.model_uri}"
        )
    return 0
