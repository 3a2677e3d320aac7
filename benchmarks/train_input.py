"""Training input path: columnar collation speed, and a training worker's memory against the
table size.

(a) Collation, side by side on the same real rows: `acml_ray.data.columnar.collate` (Arrow
    columns of the training table, as `acml embed` writes them -> PyG `Batch` + modality inputs)
    against `Batch.from_data_list` over in-memory PyG `Data` objects plus the vector gather
    (what the old `PairedExamples.batch` did), at batch 128 and 1024. Graphs/s on CPU time
    (`time.process_time`, one thread; robust on a shared machine), wall time beside it.
(b) Peak RSS of the one training worker of `acml_ray.train.fit` (its ``ru_maxrss``, reported as
    ``sys/peak_rss_mib/rank0``) after one epoch over N and 10N rows: real molecules (MOSES
    sample shipped with acml-ray) with their ECFP counts as the modality vector, replicated to
    the row count.
(c) Time to the first training step at 10N rows, from the worker's start (``sys/first_step_s``).

    python benchmarks/train_input.py [--n 8000] [--dim 1024] [--skip-memory]

Ends with ``collate ratio: X.XX`` (the smaller of the two batch sizes' ratios) and
``memory ratio: X.XX`` (RSS(10N) / RSS(N); goal <= 1.3).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from torch_geometric.data import Batch  # noqa: E402

import acml_ray  # noqa: E402,F401  (first: sets the process defaults before Ray is imported)
from acml_ray.chem import GraphFeaturizer, MolGraph  # noqa: E402
from acml_ray.chem.featurizer import row_arrow_schema  # noqa: E402
from acml_ray.data.columnar import collate  # noqa: E402
from acml_ray.data.paired import emb_column, mask_column  # noqa: E402
from acml_ray.data.sources import load_source  # noqa: E402

MODALITY = "ecfp"


def real_rows(n: int, dim: int) -> tuple[list[MolGraph], pa.Table]:
    """Up to `n` featurised MOSES molecules and their training-table rows (the embed layout:
    int8/int32 lists) with ECFP count vectors of width `dim`."""
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator

    smiles = load_source("moses_sample")["smiles"].astype(str).tolist()[: int(n * 1.05) + 16]
    graphs = [g for g in GraphFeaturizer().featurize_batch(smiles) if isinstance(g, MolGraph)][:n]
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=dim)  # the `ecfp` modality's counts
    vectors = np.stack([gen.GetCountFingerprintAsNumPy(Chem.MolFromSmiles(g.smiles)) for g in graphs])
    vectors = np.log1p(np.asarray(vectors, dtype=np.float32))
    table = pa.Table.from_pylist([g.to_row() for g in graphs], schema=row_arrow_schema())
    table = table.append_column(
        emb_column(MODALITY), pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
    ).append_column(mask_column(MODALITY), pa.array(np.ones(len(graphs), bool)))
    return graphs, table


def bench_collate(graphs: list[MolGraph], table: pa.Table, batch_size: int, repeats: int) -> dict[str, float]:
    """Graphs/s (CPU and wall) of both collations over the same consecutive batches."""
    data = [g.to_pyg() for g in graphs]
    vectors = torch.from_numpy(
        np.array(table.column(emb_column(MODALITY)).combine_chunks().values, dtype=np.float32).reshape(len(graphs), -1)
    )
    masks = torch.ones(len(graphs), dtype=torch.bool)
    starts = list(range(0, len(graphs) - batch_size + 1, batch_size))
    slices = [table.slice(s, batch_size) for s in starts]

    def ours() -> None:
        for part in slices:
            collate(part, [MODALITY])

    def reference() -> None:
        for s in starts:
            idx = torch.arange(s, s + batch_size)
            Batch.from_data_list(data[s : s + batch_size])
            _ = {MODALITY: vectors[idx], f"{MODALITY}__mask": masks[idx]}

    # Same graphs out of both (checked once, outside the timing).
    mine, ref = collate(slices[0], [MODALITY])[0], Batch.from_data_list(data[:batch_size])
    assert all(torch.equal(getattr(mine, k), getattr(ref, k)) for k in ("x", "edge_index", "edge_attr", "batch", "ptr"))
    out: dict[str, float] = {}
    for name, fn in (("ours", ours), ("reference", reference)):
        fn()  # warm-up
        cpu, wall = [], []
        for _ in range(repeats):  # interleaving is not needed: CPU time is what is compared
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        graphs_done = len(starts) * batch_size
        out[f"{name}_cpu"] = graphs_done / float(np.median(cpu))
        out[f"{name}_wall"] = graphs_done / float(np.median(wall))
    return out


def write_tables(table: pa.Table, rows: int, out: Path, n_val: int) -> tuple[str, str]:
    """`rows` training rows (the real rows repeated) and `n_val` validation rows, as Parquet
    folders of several files (as `acml embed` writes them)."""
    val = table.slice(0, n_val)
    base = table.slice(n_val)
    copies = -(-rows // len(base))
    train = pa.concat_tables([base] * copies).slice(0, rows)
    (out / "train").mkdir(parents=True)
    (out / "val").mkdir(parents=True)
    for i, start in enumerate(range(0, rows, 4096)):
        pq.write_table(train.slice(start, 4096), out / "train" / f"part-{i:05d}.parquet")
    pq.write_table(val, out / "val" / "part-00000.parquet")
    return str(out / "train"), str(out / "val")


def train_once(train: str, val: str, out: Path, dim: int, shuffle_rows: int) -> dict[str, float]:
    """One epoch of `acml_ray.train.fit` (1 worker); the worker's figures and the wall time."""
    from acml_ray.config import load_config
    from acml_ray.train import fit

    cfg = load_config(
        overrides={
            "modalities": [{"name": MODALITY}],
            "graph_encoder.hidden_dim": 32,
            "graph_encoder.num_layers": 2,
            "projection.dims": [64],
            "loss.kind": "infonce",
            "loss.temperature": 0.07,
            "train.epochs": 1,
            "train.batch_size": 256,
            "train.cpus_per_worker": 1,
            "tracking.enabled": False,
            "train.object_store_table_mib": 0,  # both sizes stream from the files (what large tables do)
            # The buffer must be smaller than N: one that N rows do not fill would grow with the
            # table between N and 10N and the ratio would measure the buffer filling.
            "train.shuffle_buffer_rows": shuffle_rows,
            "eval.pool_size": 64,
            "output_dir": str(out),
        }
    )
    started = time.perf_counter()
    result = fit(cfg, train, val, {MODALITY: dim}, run_name=f"input-{time.strftime('%H%M%S')}")
    last = result.history[-1]
    return {
        "rss_mib": last["sys/peak_rss_mib/rank0"],
        "private_mib": last["sys/peak_private_mib/rank0"],
        "first_step_s": last["sys/first_step_s"],
        "graphs_per_s": last["train/graphs_per_s"],
        "wall_s": time.perf_counter() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8000, help="N: training rows of the small run (10N: the large)")
    parser.add_argument("--dim", type=int, default=1024, help="ECFP width (the modality vector)")
    parser.add_argument("--molecules", type=int, default=4096, help="distinct real molecules")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-memory", action="store_true", help="only (a)")
    parser.add_argument(
        "--shuffle-rows", type=int, default=2048, help="the worker's local shuffle buffer (rows; below N)"
    )
    parser.add_argument(
        "--object-store-mib",
        type=int,
        default=None,
        help="cap Ray's object store (default: Ray's, 30%% of RAM); worker RSS counts the store pages it reads",
    )
    args = parser.parse_args()

    graphs, table = real_rows(args.molecules, args.dim)
    print(f"data: {len(graphs)} real MOSES molecules, {MODALITY} dim {args.dim}", flush=True)
    ratios = []
    for batch_size in (128, 1024):
        r = bench_collate(graphs, table, batch_size, args.repeats)
        ratio = r["ours_cpu"] / r["reference_cpu"]
        ratios.append(ratio)
        print(
            f"collate batch {batch_size}: columnar {r['ours_cpu']:.0f} graphs/s, Batch.from_data_list "
            f"{r['reference_cpu']:.0f} graphs/s (CPU time): {ratio:.2f}x; wall {r['ours_wall']:.0f} vs "
            f"{r['reference_wall']:.0f}: {r['ours_wall'] / r['reference_wall']:.2f}x",
            flush=True,
        )
    memory_ratio = None
    if not args.skip_memory:
        from acml_ray.train import init_ray

        init_ray(num_cpus=3, object_store_mib=args.object_store_mib)  # the worker's CPU + Ray Data's reads
        with tempfile.TemporaryDirectory() as tmp:
            runs = {}
            for rows in (args.n, 10 * args.n):
                out = Path(tmp, f"rows{rows}")
                train, val = write_tables(table, rows, out / "data", n_val=512)
                runs[rows] = train_once(train, val, out, args.dim, args.shuffle_rows)
                r = runs[rows]
                print(
                    f"{rows} training rows: worker peak RSS {r['rss_mib']:.0f} MiB (private {r['private_mib']:.0f} "
                    f"MiB, the rest Ray object-store pages it read), first step after "
                    f"{r['first_step_s']:.1f} s, {r['graphs_per_s']:.0f} graphs/s, fit {r['wall_s']:.0f} s",
                    flush=True,
                )
            small, large = runs[args.n], runs[10 * args.n]
            memory_ratio = large["rss_mib"] / small["rss_mib"]
            print(f"private memory ratio (10N / N): {large['private_mib'] / small['private_mib']:.2f}")
            print(
                f"time to first step at {10 * args.n} rows: {large['first_step_s']:.1f} s (worker start to the "
                f"end of step 1)"
            )
    print(f"collate ratio: {min(ratios):.2f}")
    if memory_ratio is not None:
        print(f"memory ratio: {memory_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
