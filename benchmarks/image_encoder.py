"""The frozen image encoder (EfficientNet-Lite0) on CPU: whole batches vs small chunks, fp32 vs bf16.

The same N real molecules (ChEMBL approved drugs, RDKit depictions rendered once, untimed) go
through the encoder in batches of `--batch-size` (the embedding pipeline's
`embed.encoder_batch_size`), alternating rounds of the two contenders:

1. whole: each batch in one forward pass (`cpu_chunk = 0`);
2. chunked: each batch in chunks of `--chunk` images (the shipped default, 4);
3. bf16: chunked, under bfloat16 autocast (the image modality's `precision: bf16`, which the
   study uses).

whole and chunked must return the same vectors; bf16 vectors must keep cosine >= 0.99 to fp32.
Timings are wall and CPU time of this process.

    python benchmarks/image_encoder.py [--n 128] [--batch-size 32] [--chunk 4] [--rounds 2]

The last lines are `bf16 ratio: X.XX` (chunked fp32 wall time over bf16) and `ratio: X.XX`
(whole wall time over chunked wall time).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import torch  # noqa: E402

from acml_ray.modalities import build_modality  # noqa: E402
from benchmarks.embed_cache import load_smiles  # noqa: E402


def encode(
    encoder: torch.nn.Module, images: torch.Tensor, batch_size: int, chunk: int, precision: str = "fp32"
) -> torch.Tensor:
    """All `images` through `encoder` in batches of `batch_size`, each in chunks of `chunk` (0: whole)."""
    previous = encoder.cpu_chunk, encoder.precision
    encoder.cpu_chunk, encoder.precision = chunk, precision
    try:
        with torch.inference_mode():
            return torch.cat([encoder(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    finally:
        encoder.cpu_chunk, encoder.precision = previous


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=128, help="molecules")
    parser.add_argument("--batch-size", type=int, default=32, help="encoder batch size")
    parser.add_argument("--chunk", type=int, default=4, help="images per forward pass inside a batch")
    parser.add_argument("--rounds", type=int, default=2, help="alternating timed rounds per contender")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    smiles = load_smiles(args.n, args.seed)
    modality = build_modality("image")
    images = torch.stack([modality.preprocess_one(s) for s in smiles])
    encoder = modality.encoder
    print(
        f"{len(smiles)} molecules, batch {args.batch_size}, chunk {args.chunk}, "
        f"{torch.get_num_threads()} torch threads",
        flush=True,
    )
    contenders = (("whole", 0, "fp32"), ("chunked", args.chunk, "fp32"), ("bf16", args.chunk, "bf16"))
    for _, chunk, precision in contenders:  # warm up every path
        encode(encoder, images[: args.batch_size], args.batch_size, chunk, precision)

    wall = {name: 0.0 for name, _, _ in contenders}
    cpu = dict(wall)
    vectors: dict[str, torch.Tensor] = {}
    for _ in range(args.rounds):
        for name, chunk, precision in contenders:
            c, w = time.process_time(), time.perf_counter()
            vectors[name] = encode(encoder, images, args.batch_size, chunk, precision)
            cpu[name] += time.process_time() - c
            wall[name] += time.perf_counter() - w
    torch.testing.assert_close(vectors["chunked"], vectors["whole"], rtol=1e-5, atol=1e-5)
    cosine = torch.nn.functional.cosine_similarity(vectors["bf16"], vectors["chunked"]).min().item()
    assert cosine >= 0.99, f"bf16 features drifted from fp32: min cosine {cosine:.4f}"
    done = len(smiles) * args.rounds
    for name in wall:
        print(f"{name:8s} {done / wall[name]:7.1f} images/s  ({wall[name]:.2f} s wall, {cpu[name]:.2f} s CPU)")
    print(f"same vectors (max abs difference {(vectors['chunked'] - vectors['whole']).abs().max().item():.1e})")
    print(f"bf16 vs fp32: min cosine {cosine:.4f}")
    print(f"bf16 ratio: {wall['chunked'] / wall['bf16']:.2f}")
    print(f"cpu ratio: {cpu['whole'] / cpu['chunked']:.2f}")
    print(f"ratio: {wall['whole'] / wall['chunked']:.2f}")


if __name__ == "__main__":
    main()
