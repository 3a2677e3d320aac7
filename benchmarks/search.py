"""Structure search at library scale: index build rate, query latency, ANN recall, size, memory,
and identification of held-out structures (one run).

    python benchmarks/search.py --model runs/search-model --index runs/moses-index [--size N]
                                [--queries 200] [--identify]

1. Build (resumable: re-running continues an interrupted build) an index of the MOSES training
   set (1.58 M structures, read from the molsets package; ``--size N`` takes its first N rows).
   Build rate = indexed molecules / wall time of the chunks, per core used by the encoder actors.
2. Queries: held-out molecules of the model's validation split embedded by the model's smiles
   modality (or the first query modality it has). Per query, one at a time: FAISS search only
   (p50/p99 ms) of the ANN index at the index's nprobe and of exact search (every list), and
   recall@10 of ANN against exact; nprobe swept; a formula-filtered search.
3. Index size on disk; peak RSS of a fresh process that opens the index and runs the queries.
4. ``--identify``: the model's held-out molecules are added to the library index (incrementally),
   then searched by each of the model's query modalities (nmr13c spectra from the shipped set,
   SMILES text): rank of the true structure, top-1/10 with and without the formula filter.

Ends with ``ratio: X.XX`` = exact p50 / ANN p50 (how much the IVF index buys per query).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from acml_ray.search.calibrate import held_out_rows, recall_at_k


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _moses_library(size: int | None, workdir: Path) -> str:
    """The MOSES training set (all of it, or its first `size` rows) as a library file."""
    from acml_ray.data.sources import SHIPPED_SOURCES

    full = SHIPPED_SOURCES["moses"].path()
    if size is None:
        return str(full)
    import pandas as pd

    target = workdir / f"moses-{size}.csv"
    if not target.is_file():
        pd.read_csv(full, nrows=size)[["SMILES"]].to_csv(target, index=False)
    return str(target)


def _held_out(model_dir: Path, limit: int, seed: int = 0):
    """The model's validation molecules (never trained on), seeded sample of `limit`."""
    import pyarrow.parquet as pq

    val = model_dir.parent / "data" / "val.parquet"
    table = pq.read_table(val, columns=["smiles", "inchikey"]).to_pandas()
    if len(table) > limit:
        table = table.sample(n=limit, random_state=seed)
    return table.reset_index(drop=True)


def _query_modality(index) -> str:
    return "smiles" if "smiles" in index.modalities else index.modalities[0]


def query_inputs(modality: str, held, limit: int) -> tuple[list[str], list]:
    """(InChIKeys, raw inputs) of held-out molecules for `modality`: csp5-simulated spectra from
    the shipped ChEMBL NMR set for nmr13c/nmr1h (molecules without one are left out), RDKit
    depictions for image, the SMILES text for smiles."""
    if modality in ("nmr13c", "nmr1h"):
        from acml_ray.data.sources import load_source

        spectra = load_source("chembl_nmr").set_index("inchikey")
        rows = held[held.inchikey.isin(spectra.index)].head(limit)
        return rows.inchikey.tolist(), [spectra.loc[k, modality].tolist() for k in rows.inchikey]
    rows = held.head(limit)
    if modality == "image":
        from PIL import Image

        from acml_ray.modalities import build_modality

        depict = build_modality("image")
        return rows.inchikey.tolist(), [Image.fromarray(depict.render(s)) for s in rows.smiles]
    return rows.inchikey.tolist(), rows.smiles.tolist()


def _latencies(fn, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per-query ms, scores [n, k]): one query at a time, as a user's search runs."""
    times, found = [], []
    for v in vectors:
        t = time.perf_counter()
        found.append(fn(v[None]))
        times.append((time.perf_counter() - t) * 1000)
    return np.array(times), np.concatenate(found)


def rss_probe(index_path: str, modality: str, vectors_path: str) -> None:
    """Child process: open the index, search every query vector, print peak RSS (MiB)."""
    from acml_ray.search import StructureIndex

    index = StructureIndex(index_path)
    vectors = np.load(vectors_path)
    index.metadata()
    for v in vectors:
        index.search_vectors(modality, v[None], k=10)
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def speed(index, vectors: np.ndarray, modality: str, index_path: str, workdir: Path) -> dict:
    entry = index.manifest.ann[modality]
    results: dict = {"rows": index.rows, "kind": entry.kind, "nlist": entry.nlist, "nprobe": entry.nprobe}
    exact_ms, exact = _latencies(lambda v: index.search_vectors(modality, v, 10, exact=True)[0], vectors)
    results["exact"] = {"p50_ms": float(np.percentile(exact_ms, 50)), "p99_ms": float(np.percentile(exact_ms, 99))}
    sweep = {}
    default_probe = min(int(entry.nprobe or 32), int(entry.nlist or 1))  # FAISS scans at most nlist lists
    for nprobe in sorted({16, 32, 64, 128, 256, 512, default_probe}):
        if entry.kind != "ivf" or nprobe > (entry.nlist or 0):
            continue
        ms, found = _latencies(lambda v, p=nprobe: index.search_vectors(modality, v, 10, nprobe=p)[0], vectors)
        sweep[nprobe] = {
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "recall@10": recall_at_k(found, exact, 10),  # by score: tied neighbours count as found
        }
    results["ann_sweep"] = sweep
    results["calibration"] = entry.calibration
    if entry.kind == "ivf":
        results["ann"] = sweep[default_probe]
        results["nprobe"] = default_probe
    meta = index.metadata()
    formulas = meta["formula"].sample(n=len(vectors), random_state=0, replace=True).tolist()
    from acml_ray.search import CandidateFilter

    ms = []
    for v, formula in zip(vectors, formulas):
        t = time.perf_counter()
        index.search_vectors(modality, v[None], 10, filters=[CandidateFilter(formula=formula)])
        ms.append((time.perf_counter() - t) * 1000)
    results["formula_filtered"] = {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}
    results["index_size_mib"] = _du(Path(index_path)) / 2**20
    results["faiss_file_mib"] = {
        m: (Path(index_path) / a.file).stat().st_size / 2**20 for m, a in index.manifest.ann.items()
    }
    np.save(workdir / "query_vectors.npy", vectors)
    probe = subprocess.run(
        [
            sys.executable,
            __file__,
            "--rss-probe",
            "--index",
            index_path,
            "--modality",
            modality,
            "--vectors",
            str(workdir / "query_vectors.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if probe.returncode == 0:
        results["peak_rss_searching_mib"] = json.loads(probe.stdout.strip().splitlines()[-1])["peak_rss_mib"]
    else:
        results["peak_rss_searching_mib"] = None
        print(probe.stderr[-2000:], file=sys.stderr)
    return results


def add_held_out(model_dir: Path, index_path: str, cfg, workdir: Path):
    """Insert the model's held-out molecules into the library index (incrementally)."""
    import pandas as pd

    from acml_ray.search import build_index

    held = _held_out(model_dir, 10**9)
    library = workdir / "held_out.csv"
    pd.DataFrame({"id": [f"held_out:{k}" for k in held.inchikey], "smiles": held.smiles}).to_csv(library, index=False)
    return build_index(model_dir, index_path, str(library), cfg)


def identify(index, model_dir: Path, added, limit: int) -> dict:
    """Rank of each held-out molecule's true structure among the library's, per query modality."""
    from acml_ray.search import Query

    held = _held_out(model_dir, 10**9)
    meta = index.metadata()
    row_of = dict(zip(meta["inchikey"], range(len(meta))))
    report = {"added_to_library": added.added, "already_in_library": added.already_indexed, "library_rows": index.rows}
    for modality in index.modalities:
        if modality not in ("nmr13c", "nmr1h", "image", "smiles"):
            continue
        keys, raws = query_inputs(modality, held, limit)
        queries = [Query(k, r) for k, r in zip(keys, raws)]
        vectors, kept, errors = index.encode(modality, queries)
        truth = np.array([row_of[queries[i].query_id] for i in kept])
        out = {"queries": len(kept), "failed": len(errors)}
        for name, with_formula in (("all", False), ("formula", True)):
            filters = None
            if with_formula:
                from acml_ray.search import CandidateFilter

                filters = [CandidateFilter(formula=meta["formula"].iloc[t]) for t in truth]
            _, ids = index.search_vectors(modality, vectors, k=100, filters=filters, exact=True)
            ranks = np.array(
                [int(np.flatnonzero(r == t)[0]) + 1 if (r == t).any() else 101 for r, t in zip(ids, truth)]
            )
            out[name] = {
                "top1": float(np.mean(ranks <= 1)),
                "top10": float(np.mean(ranks <= 10)),
                "top100": float(np.mean(ranks <= 100)),
                "median_rank": float(np.median(ranks)) if np.median(ranks) <= 100 else ">100",
            }
            if with_formula:
                sizes = meta["formula"].value_counts()
                out[name]["median_candidates"] = float(np.median([sizes[meta["formula"].iloc[t]] for t in truth]))
        report[modality] = out
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="trained run folder (with data/val.parquet) or model folder")
    parser.add_argument("--index", required=True, help="index folder (built or resumed here)")
    parser.add_argument("--size", type=int, help="first N MOSES rows (default: all 1.58 M)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--identify", action="store_true")
    parser.add_argument("--query-modality", help="modality of the speed/recall queries (default: smiles)")
    parser.add_argument(
        "--no-build",
        action="store_true",
        help="measure the index as it is (e.g. a copy of a build still running): no library "
        "chunks are embedded, the FAISS step runs over the committed shards, the build rate "
        "comes from their recorded timings",
    )
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="index.* overrides")
    parser.add_argument("--rss-probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--modality", help=argparse.SUPPRESS)
    parser.add_argument("--vectors", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_probe:
        rss_probe(args.index, args.modality, args.vectors)
        return {}

    from acml_ray.cli.common import parse_overrides
    from acml_ray.config import load_config
    from acml_ray.environment import apply_defaults, init_ray
    from acml_ray.model.serialization import resolve_model
    from acml_ray.search import Query, StructureIndex, build_index

    apply_defaults()
    cfg = load_config(None, parse_overrides(args.set or [])).index
    workdir = Path(args.index).resolve().parent / (Path(args.index).name + "-bench")
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir, _ = resolve_model(args.model, workdir)
    library = _moses_library(args.size, workdir)
    import ray

    started_ray = not ray.is_initialized()  # a caller's Ray (a test's) stays up
    init_ray(num_cpus=None)
    cores = int(ray.cluster_resources().get("CPU", 1))
    result = build_index(model_dir, args.index, None if args.no_build else library, cfg, source=args.model)
    added = add_held_out(model_dir, args.index, cfg, workdir) if args.identify else None
    if started_ray:
        ray.shutdown()  # searching needs no Ray; its workers' memory goes back to the machine
    index = StructureIndex(args.index)
    key = next(k for k, v in index.manifest.libraries.items() if v["location"] == library)
    complete = index.manifest.libraries[key]["complete"]
    shards = [s for s in index.manifest.shards if s.library == key]
    built_rows, built_s = sum(s.rows for s in shards), sum(s.seconds for s in shards)
    build = {
        "rows": built_rows,
        "seconds": built_s,
        "molecules_per_s": built_rows / max(built_s, 1e-9),
        "cores": cores,
        "molecules_per_s_per_core": built_rows / max(built_s, 1e-9) / cores,
        "ann_build_s": result.timings.get("ann_s"),
        "library_complete": complete,
        "quarantined": sum(s.quarantined for s in shards),
    }
    print(f"build: {json.dumps(build)}", flush=True)

    modality = args.query_modality or _query_modality(index)
    held = _held_out(model_dir, 10**9)
    # Recall is measured on held-out molecules the nprobe calibration did not use (when any remain).
    unseen = held.drop(index=held_out_rows(len(held), cfg.calibration_queries, cfg.calibration_seed))
    held = unseen.reset_index(drop=True) if len(unseen) else held
    t = time.perf_counter()
    keys, raws = query_inputs(modality, held, args.queries)
    vectors, _, errors = index.encode(modality, [Query(k, r) for k, r in zip(keys, raws)])
    encode_ms = (time.perf_counter() - t) * 1000 / max(1, len(vectors))
    results = speed(index, vectors, modality, args.index, workdir)
    results["query_encode_ms_per_query"] = encode_ms
    results["query_modality"] = modality
    results["queries_disjoint_from_calibration"] = bool(len(unseen))
    print(f"search: {json.dumps(results)}", flush=True)
    report = {"build": build, "search": results}
    if args.identify:
        report["identification"] = identify(index, model_dir, added, args.queries)
        print(f"identification: {json.dumps(report['identification'])}", flush=True)
    (workdir / "report.json").write_text(json.dumps(report, indent=2))
    print(
        f"build: {build['molecules_per_s']:.0f} molecules/s on {cores} cores "
        f"({build['molecules_per_s_per_core']:.0f} per core), {built_rows} rows"
    )
    print(
        f"index: {results['rows']} rows, {results['kind']}, {results['index_size_mib']:.0f} MiB on disk; "
        f"peak RSS searching {results['peak_rss_searching_mib']} MiB"
    )
    if "ann" in results:
        ann = results["ann"]
        print(
            f"ANN nprobe {results['nprobe']}: p50 {ann['p50_ms']:.2f} ms, p99 {ann['p99_ms']:.2f} ms, "
            f"recall@10 vs exact {ann['recall@10']:.4f}"
        )
    print(
        f"exact: p50 {results['exact']['p50_ms']:.2f} ms, p99 {results['exact']['p99_ms']:.2f} ms; formula-filtered "
        f"p50 {results['formula_filtered']['p50_ms']:.2f} ms"
    )
    print(f"report: {workdir / 'report.json'}")
    ann_p50 = results.get("ann", results["exact"])["p50_ms"]
    print(f"ratio: {results['exact']['p50_ms'] / ann_p50:.2f}")
    return report


if __name__ == "__main__":
    main()
