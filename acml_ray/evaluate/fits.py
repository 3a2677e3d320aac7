"""One (method, seed) fit of a downstream task, and `FitRunner`, which spreads many of them over
this process, local worker processes or Ray tasks (the same seed gives the same numbers either way)."""

from __future__ import annotations

import copy
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch_geometric.data import Data

from acml_ray.config import DownstreamConfig, GraphEncoderConfig
from acml_ray.evaluate.baselines import fit_sklearn
from acml_ray.evaluate.finetune import train_graph_model
from acml_ray.model.gin import GraphEncoder

# Methods whose fit does not depend on the seed (lbfgs logistic regression, closed-form ridge
# on a fixed split): fitted once and reported as one run.
DETERMINISTIC = frozenset({"linear_probe", "ecfp_linear"})
GRAPH_METHODS = frozenset({"finetune", "scratch"})


@dataclass
class FitInputs:
    """What one (method, seed) fit needs, picklable so it can run in another process or a Ray
    task: labels, split, and the method's features (graphs, frozen embeddings or fingerprints)."""

    kind: str
    labels: np.ndarray
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    cfg: DownstreamConfig
    encoder_cfg: GraphEncoderConfig
    graphs: list[Data] | None = None
    features: np.ndarray | None = None
    pretrained: nn.Module | None = None  # the trained graph encoder (finetune)


def fit_predict(inputs: FitInputs, method: str, seed: int) -> tuple[np.ndarray, dict]:
    """Fit `method` with `seed` on the training rows -> (test predictions, ``{"seconds", ...}``).

    Runs on one intra-op thread wherever it runs (this process, a worker process, a Ray task):
    the same seed then gives the same numbers whichever way the fits were spread, and for this
    small GIN a second thread buys little next to a second fit in parallel.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    info: dict = {}
    try:
        if method in GRAPH_METHODS:
            if inputs.graphs is None or (method == "finetune" and inputs.pretrained is None):
                raise ValueError(f"{method} needs the graphs (and, to fine-tune, the pretrained encoder)")
            torch.manual_seed(seed)
            encoder = (
                copy.deepcopy(inputs.pretrained)
                if method == "finetune" and inputs.pretrained is not None
                else GraphEncoder.from_config(inputs.encoder_cfg)
            )
            pred, info = train_graph_model(
                encoder,
                inputs.kind,
                inputs.graphs,
                inputs.labels,
                inputs.train,
                inputs.valid,
                inputs.test,
                inputs.cfg,
                seed,
            )
        else:
            x = inputs.features
            if x is None:
                raise ValueError(f"{method} needs features (frozen embeddings or fingerprints)")
            pred = fit_sklearn(
                inputs.kind,
                "rf" if method == "ecfp_rf" else "linear",
                x[inputs.train],
                inputs.labels[inputs.train],
                x[inputs.test],
                seed,
                inputs.cfg.rf_trees,
            )
    finally:
        torch.set_num_threads(threads)
    return pred, {**info, "seconds": time.perf_counter() - start}


class FitRunner:
    """Runs (method, seed) fits: as Ray tasks when Ray is initialised (or this is a Ray job),
    else in local worker processes, else (one free CPU, or ``workers: 1``) in this process.

    Why processes and not threads: a GIN training holds the GIL for most of its Python-level
    work (collation, autograd bookkeeping). Why not always Ray: starting a local Ray for an
    evaluation costs seconds and a dashboard; the standard library's process pool does the job
    on one machine, and on a cluster Ray spreads the fits over its nodes.
    """

    def __init__(
        self, workers: int | None = None, backend: Literal["auto", "ray", "processes", "serial"] = "auto"
    ) -> None:
        mode: str | None = "serial" if backend == "serial" else None
        self.workers = 1
        ray_known = "ray" in sys.modules or os.environ.get("RAY_ADDRESS")  # never import Ray just to look
        if backend == "ray" or (backend == "auto" and ray_known):
            import ray

            if backend == "ray" or ray.is_initialized() or os.environ.get("RAY_ADDRESS"):
                if not ray.is_initialized():
                    ray.init(address="auto")  # a `ray job submit` job: use its cluster
                self.workers = workers or max(1, int(ray.available_resources().get("CPU", 0)))
                mode = "ray" if self.workers > 1 else "serial"
        if mode is None:
            # The CPUs this process may run on (its affinity), not the machine's count.
            usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            self.workers = workers or usable
            mode = "processes" if self.workers > 1 else "serial"
        self.mode: str = mode
        self._pool: ProcessPoolExecutor | None = None

    def describe(self) -> str:
        return {
            "serial": "in this process",
            "processes": f"in {self.workers} local processes",
            "ray": f"as Ray tasks on {self.workers} free CPUs",
        }[self.mode]

    def run(self, jobs: Sequence[tuple[FitInputs, str, int]]) -> Iterator[tuple[int, np.ndarray, dict]]:
        """Yield ``(job index, predictions, info)`` as each fit finishes (any order)."""
        if self.mode == "serial" or len(jobs) == 1:
            for k, (inputs, method, seed) in enumerate(jobs):
                yield (k, *fit_predict(inputs, method, seed))
        elif self.mode == "processes":
            if self._pool is None:
                # forkserver: a child forked from this process would inherit torch's thread pools
                # and locks mid-state; the fork server imports this module once (seconds of torch,
                # RDKit and PyG imports) and forks every worker from that clean state.
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload([__name__])
                self._pool = ProcessPoolExecutor(self.workers, mp_context=context)
            futures = {self._pool.submit(fit_predict, *job): k for k, job in enumerate(jobs)}
            for future in as_completed(futures):
                yield (futures[future], *future.result())
        else:
            import ray

            remote = ray.remote(num_cpus=1)(fit_predict)
            refs: dict = {}
            shared: dict[int, ray.ObjectRef[FitInputs]] = {}
            for k, (inputs, method, seed) in enumerate(jobs):
                if id(inputs) not in shared:  # each input set shipped once (methods share them)
                    shared[id(inputs)] = ray.put(inputs)
                refs[remote.remote(shared[id(inputs)], method, seed)] = k
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield (refs[done[0]], *ray.get(done[0]))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
