"""Training throughput: our Ray Train + DeepSpeed loop against what a user would write by hand,
a plain PyTorch loop over PyG's `DataLoader` of in-memory `Data` objects, same model and batch.

Data: real ChEMBL approved drugs (featurised once here) paired with a cached stand-in modality
vector (RDKit Morgan count fingerprints, `--dim` wide), written as the training table that
`acml train` reads. The reference holds every molecule as a PyG `Data` (the vector attached)
and trains the same `ACMLModel` (AdamW, the configured loss) over a shuffling
`DataLoader(batch_size, drop_last=True)`, which collates each batch in the training thread with
`Batch.from_data_list`. Ours streams the table through Ray Data and collates columnar batches
in background threads (`acml_ray.train.loop`). fp32 on CPU (`--gpu`: bf16 on CUDA).

What is timed: graphs/s over the training steps only (batch wait, collate, forward, backward,
optimiser step, reading the loss), epochs after the first (warm-up). Ours reports that rate from
inside the worker (`train/graphs_per_s`, validation/checkpoints excluded), so Ray start-up is
not counted; the plain loop runs in this process with the same thread count a Ray worker gets
(`OMP_NUM_THREADS` = its CPUs).

    python benchmarks/train_throughput.py [--n 2000] [--source chembl_approved_drugs] [--epochs 3]
        [--batch 128] [--hidden 64] [--gpu]

Plain and ours (1 worker) run alternately `--pairs` times in one Ray session (the plain loop in
this process while Ray idles); each pair's ratio is printed, then 2 workers (global batch = 2 x
batch, negatives gathered) and 2 workers / 1 worker, then `ratio: X.XX` = the median over the
pairs of ours at one worker / plain. Gradient clipping (`--clip`) is off on both sides by
default, as in a hand-written loop.
Works from a fresh shell: importing `acml_ray` first sets the loopback/auth defaults before Ray
is imported.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

import acml_ray  # noqa: E402,F401  (first: sets the process defaults before Ray is imported)
from acml_ray.chem import GraphFeaturizer, MolGraph  # noqa: E402
from acml_ray.config import ACMLConfig, load_config  # noqa: E402
from acml_ray.data.paired import build_table  # noqa: E402
from acml_ray.data.sources import load_source  # noqa: E402
from acml_ray.model.acml import ACMLModel  # noqa: E402

MODALITY = "morgan"


def make_tables(
    out: Path, n: int, dim: int, source: str = "chembl_approved_drugs"
) -> tuple[str, str, list[MolGraph], np.ndarray]:
    """Train/val Parquet tables of up to `n` real molecules of a shipped `source` with Morgan
    count vectors; also the training graphs and vectors themselves (for the reference loop)."""
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator

    smiles = load_source(source, limit=int(n * 1.2) + 64)["smiles"].dropna().astype(str).tolist()
    graphs = [g for g in GraphFeaturizer().featurize_batch(smiles) if isinstance(g, MolGraph)][:n]
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=dim)
    vectors = np.log1p(
        np.stack([gen.GetCountFingerprintAsNumPy(Chem.MolFromSmiles(g.smiles)) for g in graphs]).astype(np.float32)
    )
    table = build_table(graphs, {MODALITY: (vectors, np.ones(len(graphs), bool))})
    n_val = max(64, len(graphs) // 10)
    pq.write_table(table.slice(n_val), out / "train.parquet")
    pq.write_table(table.slice(0, n_val), out / "val.parquet")
    return str(out / "train.parquet"), str(out / "val.parquet"), graphs[n_val:], vectors[n_val:]


def plain_loop(cfg: ACMLConfig, graphs: list[MolGraph], vectors: np.ndarray, threads: int) -> float:
    """Graphs/s of a single-process PyTorch loop over PyG's DataLoader, epochs after the first."""
    from torch_geometric.loader import DataLoader

    torch.set_num_threads(threads)
    device = torch.device("cuda" if cfg.train.use_gpu else "cpu")
    dtype = torch.bfloat16 if cfg.train.resolved_precision() == "bf16" else torch.float32
    data = []
    for g, v in zip(graphs, vectors):
        d = g.to_pyg()
        d.emb = torch.from_numpy(v)[None, :]  # [1, dim]: DataLoader stacks it to [B, dim]
        data.append(d)
    torch.manual_seed(cfg.train.seed)
    loader = DataLoader(data, batch_size=cfg.train.batch_size, shuffle=True, drop_last=cfg.train.drop_last)
    model = ACMLModel.from_config(cfg, {MODALITY: vectors.shape[1]}).to(device, dtype).train()
    optimizer = torch.optim.AdamW(
        model.trainable_parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay
    )
    rates = []
    for _ in range(cfg.train.epochs):
        seen, started = 0, time.perf_counter()
        for batch in loader:
            batch = batch.to(device)
            inputs = {MODALITY: batch.emb.to(device, dtype)}
            loss = model(batch, inputs)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optimizer.grad_clip_norm > 0:  # what DeepSpeed's `gradient_clipping` does
                torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), cfg.optimizer.grad_clip_norm)
            optimizer.step()
            float(loss.detach())
            seen += batch.num_graphs
        if cfg.train.use_gpu:
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - started))
    return float(np.mean(rates[1:] or rates))


def ours(cfg: ACMLConfig, train_path: str, val_path: str, workers: int) -> float:
    """Graphs/s reported from inside our Ray Train + DeepSpeed loop, epochs after the first."""
    from acml_ray.train import fit

    train = cfg.train.model_copy(update={"num_workers": workers})
    result = fit(
        cfg.model_copy(update={"train": train}),
        train_path,
        val_path,
        run_name=f"bench-{workers}w-{time.strftime('%H%M%S')}",
    )
    rates = [h["train/graphs_per_s"] for h in result.history]
    return float(np.mean(rates[1:] or rates))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="molecules")
    parser.add_argument(
        "--source",
        default="chembl_approved_drugs",
        help="shipped molecule set (moses_sample: 10,000, moses: 1.58 M), so that epochs are long enough "
        "for the per-epoch start of Ray Data's streaming to be amortised as in real training",
    )
    parser.add_argument("--epochs", type=int, default=3, help="first one is warm-up")
    parser.add_argument("--batch", type=int, default=128, help="per-worker batch")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--dim", type=int, default=1024, help="cached modality vector width")
    parser.add_argument("--cpus-per-worker", type=int, default=1)
    parser.add_argument("--gpu", action="store_true", help="CUDA workers, bf16")
    parser.add_argument(
        "--clip", type=float, default=0.0, help="gradient-norm clipping on both sides (0: none, as a plain loop)"
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=3,
        help="plain and ours run alternately this many times; the ratio is the median of the pairs "
        "(a shared 2-core VM moves single runs by +-15%%)",
    )
    args = parser.parse_args()

    from acml_ray.train import init_ray

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        train_path, val_path, train_graphs, train_vectors = make_tables(out, args.n, args.dim, args.source)
        cfg = load_config(
            overrides={
                "modalities": [{"name": MODALITY}],
                "graph_encoder.hidden_dim": args.hidden,
                "projection.dims": [256],
                "loss.kind": "infonce",
                "loss.temperature": 0.07,
                "optimizer.grad_clip_norm": args.clip,
                "train.epochs": args.epochs,
                "train.batch_size": args.batch,
                "train.use_gpu": args.gpu,
                "train.cpus_per_worker": args.cpus_per_worker,
                "tracking.enabled": False,
                "eval.pool_size": 64,
                "output_dir": str(out),
            }
        )
        n_train = pq.read_metadata(train_path).num_rows
        print(
            f"data: {n_train} training molecules ({args.source}), {MODALITY} dim {args.dim}; hidden {args.hidden}, "
            f"batch {args.batch}, {args.epochs} epochs (first = warm-up), "
            f"{'GPU bf16' if args.gpu else f'CPU fp32, {args.cpus_per_worker} thread(s) per worker'}",
            flush=True,
        )
        # One logical CPU more than the workers take, for Ray Data's read tasks.
        init_ray(num_cpus=None if args.gpu else 2 * args.cpus_per_worker + 1, use_gpu=args.gpu)
        ratios, ones = [], []
        for pair in range(args.pairs):
            plain = plain_loop(cfg, train_graphs, train_vectors, args.cpus_per_worker)
            one = ours(cfg, train_path, val_path, 1)
            ratios.append(one / plain)
            ones.append(one)
            print(
                f"pair {pair + 1}: plain PyTorch loop over PyG DataLoader (1 process) {plain:.0f} graphs/s, "
                f"ours 1 worker {one:.0f} graphs/s: {one / plain:.2f}",
                flush=True,
            )
        one = float(np.median(ones))
        two = ours(cfg, train_path, val_path, 2)
        print(
            f"ours, 2 workers (global batch {2 * args.batch}): {two:.0f} graphs/s; "
            f"2 workers / 1 worker (median): {two / one:.2f}",
            flush=True,
        )
        print(f"pair ratios: {', '.join(f'{r:.2f}' for r in ratios)}")
        print(f"ratio: {float(np.median(ratios)):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
