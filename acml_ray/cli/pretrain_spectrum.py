"""`acml pretrain-spectrum`: pretrain the 13C or 1H NMR encoder on a table of spectra.

The weights it writes load with ``--set 'modalities=[{name: nmr13c, options: {weights_path: ...}}]'``
(or `options.weights_path` in a config), from a local path or an s3:// copy of the file.
"""

from __future__ import annotations

import argparse
import json

NUCLEI = {"13c": "nmr13c", "1h": "nmr1h"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "pretrain-spectrum",
        help="self-supervised pretraining of the 13C / 1H NMR spectrum encoder",
        description="Contrast between augmented views of each spectrum (shift jitter, referencing "
        "offset, peak dropout, spurious peaks, intensity noise, line width); writes "
        "weights (.pt) and a JSON card with the config and data provenance.",
    )
    parser.add_argument("--nucleus", required=True, choices=sorted(NUCLEI), help="13c or 1h")
    parser.add_argument(
        "--spectra",
        required=True,
        help="table of spectra (Parquet/CSV path or s3:// URI) or a shipped set "
        "name (nmr_spectra); one peak list (or JSON / JCAMP-DX path) per row",
    )
    parser.add_argument("--column", help="column holding the spectra (default nmr13c / nmr1h)")
    parser.add_argument("--out", required=True, help="weights file to write (a JSON card goes beside it)")
    parser.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.2,
        help="with an `inchikey` column: leave out the molecules of the validation "
        "split (acml's seeded InChIKey hash split; 0 uses every row)",
    )
    parser.add_argument("--split-seed", type=int, default=4, help="seed of that split (data.split_seed)")
    parser.add_argument("--limit", type=int, help="use at most this many spectra (seeded sample)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, help="stop after the epoch that crosses this")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        default=[],
        help="modality option (binning, architecture), e.g. --option line_width=0.5",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import hashlib

    from acml_ray.cli.common import parse_overrides
    from acml_ray.data.paired import validation_mask
    from acml_ray.data.sources import SHIPPED_SOURCES, load_source, read_table
    from acml_ray.modalities import build_modality
    from acml_ray.modalities.spectrum import SpectrumModality
    from acml_ray.modalities.spectrum_pretrain import PretrainConfig, pretrain_spectrum_encoder, save_encoder

    name = NUCLEI[args.nucleus]
    options = parse_overrides(args.option)
    if "encoder" in options or "weights_path" in options:
        raise ValueError(
            "--option encoder / weights_path: pretraining always starts from the seeded random initialisation"
        )
    if not 0.0 <= args.holdout_fraction < 1.0:
        raise ValueError(f"--holdout-fraction must be in [0, 1), got {args.holdout_fraction}")
    modality = build_modality(name, {**options, "encoder": "random"})
    if not isinstance(modality, SpectrumModality):  # `register_modality` may map the name to another class
        raise ValueError(
            f"modality {name!r} is a {type(modality).__name__}, not a SpectrumModality: nothing to pretrain"
        )
    column = args.column or modality.input_column
    frame = load_source(args.spectra) if args.spectra in SHIPPED_SOURCES else read_table(args.spectra)
    if column not in frame.columns:
        raise ValueError(f"{args.spectra}: no column {column!r}; columns {list(frame.columns)}")
    rows_read, held_out = len(frame), 0
    if args.holdout_fraction > 0 and "inchikey" in frame.columns:
        # The same rule that splits `acml embed` tables: pretraining never sees a molecule that
        # retrieval is measured on.
        held = validation_mask(frame["inchikey"].tolist(), args.holdout_fraction, args.split_seed)
        held_out, frame = int(held.sum()), frame[~held]
    if args.limit is not None and args.limit < len(frame):
        frame = frame.sample(n=args.limit, random_state=args.seed)
    frame = frame.sort_values("inchikey") if "inchikey" in frame.columns else frame
    cfg = PretrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        temperature=args.temperature,
        seed=args.seed,
        max_minutes=args.max_minutes,
        threads=args.threads,
    )
    result = pretrain_spectrum_encoder(frame[column].tolist(), modality, cfg)
    keys = frame["inchikey"].tolist() if "inchikey" in frame.columns else []
    provenance = {
        "spectra": args.spectra,
        "column": column,
        "rows_read": rows_read,
        "held_out": {
            "rows": held_out,
            "fraction": args.holdout_fraction,
            "split_seed": args.split_seed,
            "rule": "acml_ray.data.paired.validation_mask(inchikey)",
        }
        if held_out
        else None,
        "rows_used": len(frame),
        "limit": args.limit,
        "inchikeys_sha256": hashlib.sha256("\n".join(keys).encode()).hexdigest() if keys else None,
    }
    if args.spectra in SHIPPED_SOURCES:
        provenance["set_file"] = SHIPPED_SOURCES[args.spectra].relpath
    card = save_encoder(args.out, result, modality, provenance)
    last = result.history[-1]
    print(
        json.dumps(
            {
                "weights": str(args.out),
                "bytes": card["bytes"],
                "spectra_used": result.spectra_used,
                "epochs_run": len(result.history),
                "final_loss": round(last["loss"], 4),
                "first_loss": round(result.history[0]["loss"], 4),
                "view_top1": round(last["view_top1"], 3),
                "seconds": round(result.seconds, 1),
            }
        )
    )
    return 0
