"""Downstream GIN trainings (fine-tune and from-scratch): the old way vs the new default, side by side.

The same five property tasks (B3DB classification, B3DB logBB, FreeSolv, Huuskonen solubility and
a user-style CSV from B3DB with a binary and a continuous label, which the new loader splits into
two tasks: 5 files, 6 tasks), the same scaffold splits and seeds, run in one process, one way
after the other:

1. old: every (task, method, seed) training one after the other in this process on torch's
   default intra-op threads, every epoch run (``patience: None``), as `acml evaluate` did before
   (the old loop also collated the validation batches every epoch; this one does it once, so the
   old way measured here is, if anything, a little faster than it was);
2. serial1: the same, on one thread per training (what every fit now runs on): isolates how much
   the threads alone cost on a small GIN;
3. new: the shipped defaults: early stopping on the validation loss (``patience: 3``) and the
   trainings spread over the free CPUs (`FitRunner`: local processes, or Ray tasks when Ray is
   initialised), one thread each.

These trainings were nearly all of the downstream section's time (the linear and forest
baselines take seconds). The encoder being fine-tuned is `--model`'s, or a seeded random GIN of
the default shape (timing does not depend on what the weights learned). Printed: wall time of
each way, the mean test metric of each (early stopping must not cost accuracy), the ratios and
last ``ratio: X.XX`` (the first way's wall time over new's; old/new with the default --ways).

    nice -n 19 python benchmarks/evaluate_downstream.py [--limit 1000] [--seeds 3] [--epochs 10]
        [--ways old,serial1,new] [--model RUN]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from acml_ray.chem import GraphFeaturizer, Rejected  # noqa: E402
from acml_ray.config import DownstreamConfig, GraphEncoderConfig, TaskConfig  # noqa: E402
from acml_ray.data.sources import load_source  # noqa: E402
from acml_ray.evaluate.downstream import (  # noqa: E402
    FitInputs,
    FitRunner,
    load_tasks,
    scaffold_split,
    score,
    train_graph_model,
)
from acml_ray.model.gin import GraphEncoder  # noqa: E402

METHODS = ("finetune", "scratch")


def user_file(folder: Path) -> str:
    """A user-style file: B3DB molecules with `bbb` (0/1) and `logBB` (continuous, partly missing)."""
    frame = load_source("b3db_classification")
    path = folder / "bbb_user.csv"
    pd.DataFrame(
        {
            "smiles": frame["smiles"],
            "bbb": (frame["BBB+/BBB-"] == "BBB+").astype(float),
            "logBB": pd.to_numeric(frame["logBB"], errors="coerce"),
        }
    ).to_csv(path, index=False)
    return str(path)


def prepare(
    limit: int | None, folder: Path, encoder_cfg: GraphEncoderConfig, pretrained: GraphEncoder, cfg: DownstreamConfig
) -> list[tuple[str, FitInputs]]:
    """(task name, fit inputs) for every task: featurised graphs, labels, scaffold split."""
    specs = [
        TaskConfig(name=n, limit=limit) for n in ("b3db_classification", "b3db_regression", "freesolv", "solubility")
    ]
    specs.append(TaskConfig(name="bbb_user", path=user_file(folder), limit=limit))
    prepared = []
    for spec in specs:
        for data in load_tasks(spec, seed=0, say=lambda _: None):
            results = GraphFeaturizer().featurize_batch(data.smiles)
            keep = [
                i for i, r in enumerate(results) if not isinstance(r, Rejected) and np.isfinite(data.labels[i]).any()
            ]
            graphs = [results[i].to_pyg() for i in keep]
            train, valid, test, _ = scaffold_split([data.smiles[i] for i in keep], cfg.fractions)
            prepared.append(
                (
                    data.name,
                    FitInputs(
                        data.kind,
                        data.labels[keep],
                        train,
                        valid,
                        test,
                        cfg,
                        encoder_cfg,
                        graphs=graphs,
                        pretrained=pretrained,
                    ),
                )
            )
    return prepared


def run_serial(tasks: list[tuple[str, FitInputs]], seeds: list[int], threads: int | None) -> tuple[float, dict]:
    """Serial, every epoch: the evaluation as it was (`threads` None: torch's default)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    metrics: dict = {}
    try:
        for name, inputs in tasks:
            cfg = inputs.cfg.model_copy(update={"patience": None})
            for method in METHODS:
                for seed in seeds:
                    torch.manual_seed(seed)
                    encoder = (
                        GraphEncoder.from_config(inputs.encoder_cfg)
                        if method == "scratch"
                        else copy.deepcopy(inputs.pretrained)
                    )
                    pred, _ = train_graph_model(
                        encoder,
                        inputs.kind,
                        inputs.graphs,
                        inputs.labels,
                        inputs.train,
                        inputs.valid,
                        inputs.test,
                        cfg,
                        seed,
                    )
                    metrics.setdefault((name, method), []).append(score(inputs.kind, inputs.labels[inputs.test], pred))
    finally:
        torch.set_num_threads(before)
    return time.perf_counter() - start, metrics


def run_new(tasks: list[tuple[str, FitInputs]], seeds: list[int], workers: int | None) -> tuple[float, dict, str]:
    """The shipped defaults: early stopping, fits spread over the free CPUs."""
    start = time.perf_counter()
    runner = FitRunner(workers)
    jobs = [(inputs, method, seed) for _, inputs in tasks for method in METHODS for seed in seeds]
    names = [name for name, _ in tasks for _ in METHODS for _ in seeds]
    metrics: dict = {}
    epochs = []
    try:
        for k, pred, info in runner.run(jobs):
            inputs, method, _ = jobs[k]
            metrics.setdefault((names[k], method), []).append(score(inputs.kind, inputs.labels[inputs.test], pred))
            epochs.append(info["epochs"])
    finally:
        runner.close()
    return time.perf_counter() - start, metrics, f"{runner.describe()}; mean epochs run {np.mean(epochs):.1f}"


def headline(metrics: dict) -> dict[str, float]:
    """Mean over seeds of ROC-AUC (classification) or RMSE (regression) per (task, method)."""
    out = {}
    for (name, method), values in sorted(metrics.items()):
        key = "roc_auc" if "roc_auc" in values[0] else "rmse"
        out[f"{name}/{method} {key}"] = float(np.mean([v[key] for v in values]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=1000, help="rows per task (the old default sample)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--workers", type=int, default=None, help="new way's parallel fits (default: free CPUs)")
    parser.add_argument("--model", help="a run or model folder whose graph encoder is fine-tuned")
    parser.add_argument("--ways", default="old,serial1,new", help="comma list of old, serial1, new (in order)")
    args = parser.parse_args()
    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    if not ways or set(ways) - {"old", "serial1", "new"}:
        parser.error(f"--ways: choose from old, serial1, new; got {args.ways!r}")

    cfg = DownstreamConfig(epochs=args.epochs)
    if args.model:
        from acml_ray.model.serialization import load_model, resolve_model

        with tempfile.TemporaryDirectory() as tmp:
            model, run_cfg, _ = load_model(resolve_model(args.model, tmp)[0])
        encoder_cfg, pretrained = run_cfg.graph_encoder, model.graph_encoder
    else:
        torch.manual_seed(12345)  # not a seed of the scratch trainings: the stand-in differs from them
        encoder_cfg = GraphEncoderConfig()
        pretrained = GraphEncoder.from_config(encoder_cfg)
    seeds = list(range(args.seeds))
    with tempfile.TemporaryDirectory() as tmp:
        tasks = prepare(args.limit, Path(tmp), encoder_cfg, pretrained, cfg)
    print(
        "tasks: "
        + ", ".join(f"{n} ({i.kind}, train/valid/test {len(i.train)}/{len(i.valid)}/{len(i.test)})" for n, i in tasks)
    )
    print(
        f"trainings per way: {len(tasks) * len(METHODS) * len(seeds)} (methods {METHODS}, seeds {seeds}, "
        f"at most {args.epochs} epochs)",
        flush=True,
    )
    walls: dict[str, float] = {}
    results: dict[str, dict] = {}
    for way in ways:
        if way == "old":
            label = f"old (serial, torch default {torch.get_num_threads()} threads, every epoch)"
            walls[way], results[way] = run_serial(tasks, seeds, None)
        elif way == "serial1":
            label = "serial1 (serial, 1 thread, every epoch)"
            walls[way], results[way] = run_serial(tasks, seeds, 1)
        else:
            walls[way], results[way], how = run_new(tasks, seeds, args.workers)
            label = f"new (patience {cfg.patience}, {how})"
        print(f"{label}: {walls[way]:.1f} s", flush=True)
    heads = {way: headline(m) for way, m in results.items()}
    for key in heads[ways[0]]:
        print(f"  {key}: " + "  ".join(f"{way} {heads[way][key]:.3f}" for way in ways))
    for way in ways[1:]:
        print(f"{ways[0]} / {way}: {walls[ways[0]] / walls[way]:.2f}")
    if os.name == "posix":
        print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"ratio: {walls[ways[0]] / walls[ways[-1]]:.2f}")


if __name__ == "__main__":
    main()
