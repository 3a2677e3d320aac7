"""NMR -> structure retrieval with the three spectrum encoders, and all modalities in one model.

Runs the stages of `acml embed`, `acml train` and `acml evaluate --sections retrieval` through
their public functions, in one process with one Ray, on the shipped csp5 set (`nmr_spectra`)
and prints one table. Every model: 5-layer GIN hidden 64, one
256-wide projection cell, InfoNCE tau 0.07, batch 128 (the demo config), the InChIKey-hash
80/20 split with seed 4 that the shipped pretrained encoders were kept away from.

    nice -n 10 python benchmarks/nmr_retrieval.py --work runs/nmr --epochs 10
    nice -n 10 python benchmarks/nmr_retrieval.py --work runs/nmr --joint --encoder pretrained

Parts: ``--encoders random,binned,pretrained`` (13C and 1H single-pair models for each), then
``--joint``: image + SMILES + 13C + 1H in one graph encoder beside a single-pair model of each
(on the molecules with spectra; `--encoder` picks the NMR encoder). Results go to
``WORK/results.json`` (merged across invocations) and are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
NUCLEI = ("nmr13c", "nmr1h")


def base_config(work: Path, epochs: int) -> dict[str, Any]:
    return {
        "data": {"val_fraction": 0.2, "split_seed": 4},
        "graph_encoder": {"hidden_dim": 64},
        "projection": {"dims": [256]},
        "loss": {"kind": "infonce", "temperature": 0.07},
        "train": {"epochs": epochs, "batch_size": 128, "num_workers": 1, "cpus_per_worker": 1, "zero_stage": 0},
        # Two encoder actors would hold both cores and starve featurisation: half a CPU each (the
        # joint run's four are fitted by the pipeline), two threads each for the slow image encoder.
        "embed": {"num_cpus_per_actor": 0.5, "threads_per_actor": 2},
        "eval": {"pool_size": 128, "pool_repeats": 20, "top_k": [1, 5, 10]},
        "output_dir": str(work),
    }


def with_overrides(cfg: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`cfg` with dotted ``--set`` keys applied (``graph_encoder.hidden_dim=300``)."""
    out = json.loads(json.dumps(cfg))
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    """Each stage's config is written out, so any one run can be repeated with the CLI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def molecules(work: Path, spectra: str) -> Path:
    """The molecule table `acml embed` reads: SMILES, InChIKey and both shift lists."""
    from acml_ray.data.sources import SHIPPED_SOURCES, load_source, read_table

    frame = load_source(spectra) if spectra in SHIPPED_SOURCES else read_table(spectra)
    path = work / "molecules.parquet"
    frame[["smiles", "inchikey", *NUCLEI]].to_parquet(path, index=False)
    return path


def embed(work: Path, name: str, cfg: dict[str, Any], table: Path) -> Path:
    """`acml embed --config configs/<name>.yaml --input molecules.parquet --out <name>`."""
    from acml_ray.config import load_config
    from acml_ray.pipelines.embed import run_embed_pipeline

    out = work / name
    if (out / "embedded" / "report.json").is_file() and (out / "embedded" / "train").is_dir():
        return out / "embedded"  # embedded once per variant: a rerun skips it
    config = write_config(work / "configs" / f"{name}.yaml", cfg)
    start = time.time()
    result = run_embed_pipeline(load_config(str(config), {"embed.input": str(table), "output_dir": str(out)}))
    print(f"  embed {name}: {time.time() - start:.0f} s -> {result.train_path}", flush=True)
    return out / "embedded"


def train_and_evaluate(work: Path, name: str, cfg: dict[str, Any], tables: Path) -> dict[str, Any]:
    """`acml train` then `acml evaluate --sections retrieval` on the validation table."""
    from acml_ray.config import load_config
    from acml_ray.pipelines.study import train_and_score

    config = write_config(work / "configs" / f"{name}.yaml", cfg)
    run_cfg = load_config(str(config), {"output_dir": str(work / "runs" / name)})
    result = train_and_score(run_cfg, str(tables / "train"), str(tables / "val"), name)
    figures = {}
    for direction, pools in result["retrieval"].items():
        for pool, metrics in pools.items():
            figures[f"{direction} {pool}"] = {
                "top1": metrics["top1"],
                "top10": metrics["top10"],
                "n_pool": metrics["n_pool"],
            }
    print(
        f"  {name}: trained {result['train_s']:.0f} s (best epoch {result['best_epoch']}), "
        + ", ".join(f"{k} top-10 {v['top10']:.3f}" for k, v in figures.items() if "->graph" in k),
        flush=True,
    )
    return {
        "figures": figures,
        "train_seconds": result["train_s"],
        "best_epoch": result["best_epoch"],
        "best_model": result["model_dir"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "nmr")
    parser.add_argument("--spectra", default="nmr_spectra", help="shipped set name or table path")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--encoders", default="random,binned,pretrained")
    parser.add_argument("--nuclei", default=",".join(NUCLEI))
    parser.add_argument("--joint", action="store_true", help="image + SMILES + 13C + 1H together")
    parser.add_argument("--encoder", default="pretrained", help="NMR encoder of the joint run")
    parser.add_argument(
        "--models",
        default="joint,image,smiles,nmr13c,nmr1h",
        help="with --joint: which of the joint model and the single-pair models to train",
    )
    parser.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="MODALITY=W",
        help="with --joint: a modality's loss weight in the joint model (default 1 each)",
    )
    parser.add_argument(
        "--image-precision",
        default="fp32",
        choices=("fp32", "bf16"),
        help="with --joint: the image encoder's precision (bf16 embeds about twice as fast on CPU)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="training config overrides (not embedding)"
    )
    parser.add_argument("--tag", default="", help="suffix of the result names (runs with --set)")
    args = parser.parse_args(argv)
    from acml_ray.cli.common import parse_overrides

    overrides = parse_overrides(args.set)
    suffix = f"-{args.tag}" if args.tag else ""
    work = args.work.resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    results_path = work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    table = molecules(work, args.spectra)
    from acml_ray.environment import init_ray

    for attempt in range(3):  # one Ray for every stage (each `acml` command would start its own)
        try:
            init_ray()
            break
        except Exception as exc:  # Ray gives a raylet 30 s to register: a loaded machine misses it
            if "timed out during startup" not in str(exc) or attempt == 2:
                raise
            print(f"  Ray start timed out ({exc.__class__.__name__}); retrying", flush=True)
    nuclei = [n for n in args.nuclei.split(",") if n]

    def record(name: str, result: dict[str, Any]) -> None:
        results[name] = {**result, "epochs": args.epochs, "overrides": overrides}
        results_path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")

    if not args.joint:
        for encoder in [e for e in args.encoders.split(",") if e]:
            cfg = base_config(work, args.epochs)
            cfg["modalities"] = [{"name": n, "options": {"encoder": encoder}} for n in nuclei]
            tables = embed(work, f"embed-{encoder}", cfg, table)
            for nucleus in nuclei:
                single = {**cfg, "modalities": [{"name": nucleus, "options": {"encoder": encoder}}]}
                name = f"{nucleus}-{encoder}{suffix}"
                record(name, train_and_evaluate(work, name, with_overrides(single, overrides), tables))
    else:
        cfg = base_config(work, args.epochs)
        image: dict[str, Any] = {"name": "image"}
        if args.image_precision != "fp32":
            image["options"] = {"precision": args.image_precision}
            # bf16 halves the image encoder's cost: two one-thread actors then keep both cores busy
            cfg["embed"] = {"num_cpus_per_actor": 0.5, "threads_per_actor": 1, "concurrency": 2}
        everything = [
            image,
            {"name": "smiles"},
            *({"name": n, "options": {"encoder": args.encoder}} for n in NUCLEI),
        ]
        cfg["modalities"] = everything
        precision = "" if args.image_precision == "fp32" else f"-{args.image_precision}"
        tables = embed(work, f"embed-joint-{args.encoder}{precision}", cfg, table)
        wanted = {m for m in args.models.split(",") if m}
        if "joint" in wanted:
            weights = {k: float(v) for k, v in (w.split("=", 1) for w in args.weight)}
            joint = {**cfg, "modalities": [{**m, "weight": weights.get(m["name"], 1.0)} for m in everything]}
            name = f"joint-{args.encoder}{suffix}"
            result = train_and_evaluate(work, name, with_overrides(joint, overrides), tables)
            record(name, {**result, "weights": weights})
        for modality in [m for m in everything if m["name"] in wanted]:
            name = f"single-{modality['name']}-{args.encoder}{suffix}"
            single = with_overrides({**cfg, "modalities": [modality]}, overrides)
            record(name, train_and_evaluate(work, name, single, tables))

    print("\n| model | direction | pool | top-1 | top-10 | train s |\n|---|---|---|---|---|---|")
    for name, result in sorted(results.items()):
        for key, m in sorted(result["figures"].items()):
            if key.split(" ")[0].endswith("->graph"):
                print(
                    f"| {name} | {key.split(' ')[0]} | {m['n_pool']} | {m['top1']:.3f} | "
                    f"{m['top10']:.3f} | {result['train_seconds']:.0f} |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
