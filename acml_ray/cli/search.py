"""`acml search`: rank an index's structures against spectra, pictures or SMILES."""

from __future__ import annotations

import argparse
import sys
import textwrap


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "search",
        help="search a structure index by spectrum, picture or SMILES",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Each --query is a file, a folder of files, a table (CSV/TSV/Parquet with a column named after "
            "the modality's input, or 'query', and optional query_id, formula, mass, tol columns) or a "
            "literal SMILES / JSON peak list. --formula and --mass restrict the candidates inside the index "
            "before ranking. A query that cannot be read gets one error line on stderr and the others run "
            "(exit status 1 when any failed). Guide: docs/search.md",
            95,
        ),
        epilog="examples:\n"
        "  acml search --index runs/library-index --modality smiles --query 'CC(=O)Oc1ccccc1C(=O)O'\n"
        "  acml search --index s3://bucket/indexes/zinc --modality nmr13c --query spectra/ --formula C9H8O4\n"
        "  acml search --index runs/library-index --modality image --query figure.png --mass 180.042 "
        "--tol 0.01 --json hits.json",
    )
    parser.add_argument("--index", required=True, help="index folder, path or s3:// URI")
    parser.add_argument("--modality", required=True, help="nmr13c, nmr1h, image, smiles, ms (a modality of the model)")
    parser.add_argument(
        "--query", action="append", required=True, metavar="FILE|DIR|TABLE|SMILES", help="query input (repeatable)"
    )
    parser.add_argument("--top", type=int, default=10, metavar="K", help="candidates per query (default 10)")
    parser.add_argument("--formula", help="only structures of this molecular formula, e.g. C9H8O4")
    parser.add_argument("--mass", type=float, help="only structures of this monoisotopic mass (Da) ...")
    parser.add_argument("--tol", type=float, default=0.01, help="... within this tolerance (Da, default 0.01)")
    parser.add_argument("--model", help="the model the index must have been built with (error otherwise)")
    parser.add_argument("--tracking-uri", help="MLflow URI for a models:/ --model (default $MLFLOW_TRACKING_URI)")
    parser.add_argument("--exact", action="store_true", help="exhaustive search even on an IVF (ANN) index")
    parser.add_argument("--nprobe", type=int, help="IVF lists scanned per query (default: the index's setting)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON ('-' for stdout, no table)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    from acml_ray.search.filters import CandidateFilter

    CandidateFilter(formula=args.formula, mass=args.mass, tol=args.tol)  # bad filters: one line, before loading
    from acml_ray.search.query import StructureIndex

    index = StructureIndex(args.index, model=args.model, tracking_uri=args.tracking_uri)
    result = index.search(
        args.modality,
        args.query,
        top_k=args.top,
        formula=args.formula,
        mass=args.mass,
        tol=args.tol,
        exact=args.exact,
        nprobe=args.nprobe,
    )
    for error in result.errors:
        print(f"acml search: query {error.query_id}: {error.error}", file=sys.stderr)
    if args.json == "-":
        print(result.to_json())
    else:
        print(result.to_table())
        if args.json:
            Path(args.json).write_text(result.to_json())
            print(f"json: {Path(args.json).resolve()}")
    ran = len(result.filters)
    print(
        f"{ran} queries searched, {len(result.errors)} failed; index {index.rows} structures "
        f"({index.manifest.ann[args.modality].kind})",
        file=sys.stderr,
    )
    if ran == 0:
        return 2
    return 1 if result.errors else 0
