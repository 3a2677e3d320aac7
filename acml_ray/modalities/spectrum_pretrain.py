"""Self-supervised pretraining of the 1-D spectrum encoder (`SpectrumCNN`) of an NMR modality.

No pretrained NMR encoder can be had offline, so the project pretrains its own: SimCLR-style
contrast between two augmented views of one spectrum (NT-Xent over the batch). The views are
drawn from the *peak list*, before binning, with what separates two real recordings of one
compound: per-peak shift jitter, a global referencing offset, dropped peaks (overlap, weak
quaternary carbons), spurious peaks (impurities, solvent), intensity noise, and a random line
width. The encoder thus learns which differences between spectra are noise and which are
chemistry, and ACML then aligns its frozen output with the graph encoder.

`pretrain_spectrum_encoder` trains; `save_encoder` writes the weights file that
`SpectrumModality(weights_path=...)` loads (state dict + architecture + preprocessing +
training record), with a JSON card beside it. `acml pretrain-spectrum` is the command.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from acml_ray.chem.errors import InvalidInputError
from acml_ray.modalities.base import hash_module_weights
from acml_ray.modalities.spectrum import Peaks, SpectrumCNN, SpectrumModality, bin_peaks


@dataclass(frozen=True)
class Augmentation:
    """How two views of one spectrum differ (shifts and widths in the modality's unit, ppm)."""

    shift_sd: float  # per-peak jitter (prediction / solvent / temperature effects)
    offset_sd: float  # one referencing offset per view
    peak_dropout: float = 0.1  # fraction of peaks removed
    extra_peaks: float = 0.05  # spurious peaks added, as a fraction of the peak count
    intensity_noise: float = 0.25  # log-normal sd of per-peak intensity factors
    max_line_width: float = 0.0  # FWHM drawn uniformly in [0, max] for half of the views


# Scales from typical errors: 13C shift predictors are off by ~1-2 ppm, 1H by ~0.1-0.2 ppm.
AUGMENTATIONS: dict[str, Augmentation] = {
    "nmr13c": Augmentation(shift_sd=0.5, offset_sd=0.3, max_line_width=1.0),
    "nmr1h": Augmentation(shift_sd=0.03, offset_sd=0.02, max_line_width=0.04),
}


@dataclass
class PretrainConfig:
    """Training settings of `pretrain_spectrum_encoder` (recorded in the weights file)."""

    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.1
    head_dim: int = 128
    seed: int = 0
    max_minutes: float | None = None  # stop after the epoch that crosses this budget
    threads: int | None = None  # torch threads; None keeps torch's setting
    augmentation: Augmentation | None = None  # None: AUGMENTATIONS[modality.name]


@dataclass
class PretrainResult:
    """The trained encoder and what happened while training it."""

    encoder: SpectrumCNN
    history: list[dict[str, float]]
    spectra_used: int
    rejected: dict[str, int]
    seconds: float
    config: PretrainConfig
    augmentation: Augmentation


def augmented_view(peaks: Peaks, modality: SpectrumModality, aug: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """One random view of a peak list, binned and normalised as `modality` bins (float32)."""
    pos, inten = peaks.positions, peaks.intensities
    keep = rng.random(pos.size) >= aug.peak_dropout
    if not keep.any():
        keep[rng.integers(pos.size)] = True
    pos, inten = pos[keep], inten[keep]
    pos = pos + rng.normal(0.0, aug.shift_sd, pos.size) + rng.normal(0.0, aug.offset_sd)
    inten = inten * np.exp(rng.normal(0.0, aug.intensity_noise, pos.size))
    n_extra = rng.binomial(pos.size, aug.extra_peaks)
    if n_extra:
        pos = np.concatenate([pos, rng.uniform(pos.min(), pos.max(), n_extra)])
        inten = np.concatenate([inten, rng.uniform(0.2, 1.0, n_extra) * inten.mean()])
    width = rng.uniform(0.0, aug.max_line_width) if rng.random() < 0.5 else 0.0
    vector, _ = bin_peaks(
        Peaks(pos, inten),
        modality.lo,
        modality.hi,
        modality.bin_width,
        modality.line_shape,
        width or modality.line_width,
    )
    top = vector.max()
    return (vector / top if top > 0 and modality.normalise else vector).astype(np.float32)


def _profile_view(
    binned: np.ndarray, modality: SpectrumModality, aug: Augmentation, rng: np.random.Generator
) -> np.ndarray:
    """A view of a sampled profile (JCAMP-DX XYDATA): shifted grid and multiplicative noise."""
    steps = int(round(rng.normal(0.0, aug.offset_sd) / modality.bin_width))
    view = np.roll(binned, steps) * np.exp(rng.normal(0.0, aug.intensity_noise / 2, binned.size))
    top = view.max()
    return (view / top if top > 0 else view).astype(np.float32)


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each view must pick its partner among the 2N-1 other views of the batch."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    n = a.shape[0]
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(logits, targets)


def pretrain_spectrum_encoder(
    spectra: Sequence[Any],
    modality: SpectrumModality,
    cfg: PretrainConfig | None = None,
    log: Callable[[str], None] = print,
) -> PretrainResult:
    """Pretrain a `SpectrumCNN` with `modality`'s architecture and binning on `spectra`.

    `spectra` are raw inputs the modality parses (peak lists, JSON, files). Inputs it rejects
    are skipped and counted by reason; fewer than two usable spectra is an error. Training
    starts from the modality's seeded random initialisation, so a run is reproducible.
    """
    cfg = cfg or PretrainConfig()
    aug = cfg.augmentation or AUGMENTATIONS.get(modality.name)
    if aug is None:
        raise ValueError(f"no default augmentation for modality {modality.name!r}: pass one")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    start = time.time()
    parsed: list[Peaks] = []
    rejected: dict[str, int] = {}
    for raw in spectra:
        try:
            peaks = modality.clean(modality.parse(raw))
            modality.vector(peaks)  # the same checks as embedding: range, emptiness
        except InvalidInputError as exc:
            rejected[exc.reason] = rejected.get(exc.reason, 0) + 1
            continue
        inside = (peaks.positions >= modality.lo) & (peaks.positions < modality.hi)
        parsed.append(Peaks(peaks.positions[inside], peaks.intensities[inside], peaks.continuous))
    if len(parsed) < 2:
        raise ValueError(f"need at least 2 usable spectra to pretrain, got {len(parsed)} (rejected: {rejected})")
    batch = min(cfg.batch_size, len(parsed))
    log(
        f"pretraining {modality.name} encoder on {len(parsed)} spectra "
        f"({sum(rejected.values())} rejected), batch {batch}, up to {cfg.epochs} epochs"
    )
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    encoder = SpectrumCNN(
        modality.channels, modality.kernel_size, modality.pool_positions, modality._dim, modality.seed
    )
    head = nn.Sequential(nn.Linear(modality._dim, modality._dim), nn.ReLU(), nn.Linear(modality._dim, cfg.head_dim))
    params = [*encoder.parameters(), *head.parameters()]
    optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(parsed) // batch
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    profiles = {i: modality.vector(p) for i, p in enumerate(parsed) if p.continuous}
    history: list[dict[str, float]] = []
    encoder.train()
    for epoch in range(cfg.epochs):
        order = rng.permutation(len(parsed))
        total, correct, seen = 0.0, 0, 0
        for step in range(steps_per_epoch):
            idx = order[step * batch : (step + 1) * batch]
            views = [
                [
                    _profile_view(profiles[i], modality, aug, rng)
                    if i in profiles
                    else augmented_view(parsed[i], modality, aug, rng)
                    for i in idx
                ]
                for _ in range(2)
            ]
            a, b = (head(encoder(torch.from_numpy(np.stack(v)))) for v in views)
            loss = nt_xent(a, b, cfg.temperature)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            with torch.no_grad():  # view-to-partner top-1 within the batch, a readable progress figure
                sim = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
                correct += int((sim.argmax(1) == torch.arange(len(idx))).sum())
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        elapsed = time.time() - start
        history.append(
            {"epoch": epoch + 1, "loss": total / seen, "view_top1": correct / seen, "seconds": round(elapsed, 1)}
        )
        log(f"  epoch {epoch + 1}: loss {total / seen:.4f}, view top-1 {correct / seen:.3f}, {elapsed:.0f} s")
        if cfg.max_minutes is not None and elapsed > 60 * cfg.max_minutes and epoch + 1 < cfg.epochs:
            log(f"  stopping: {cfg.max_minutes} min budget spent")
            break
    encoder.eval()
    return PretrainResult(encoder, history, len(parsed), rejected, time.time() - start, cfg, aug)


def save_encoder(
    path: str | Path, result: PretrainResult, modality: SpectrumModality, provenance: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write the weights file (`torch.save`, loadable with ``weights_only=True``) and a JSON card
    (``<path>.json``: architecture, preprocessing, training config and history, provenance).
    Returns the card."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in result.encoder.state_dict().items()}
    card: dict[str, Any] = {
        "modality": modality.name,
        "encoder": modality.architecture(),
        "preprocess": modality.preprocess_config(),
        "training": {
            **{k: v for k, v in asdict(result.config).items() if k != "augmentation"},
            "objective": "NT-Xent between two augmented views (SimCLR)",
            "augmentation": asdict(result.augmentation),
            "spectra_used": result.spectra_used,
            "rejected": result.rejected,
            "epochs_run": len(result.history),
            "seconds": round(result.seconds, 1),
            "history": result.history,
            "torch": torch.__version__,
        },
        "weights_sha256": hash_module_weights(result.encoder),
        "provenance": provenance or {},
    }
    torch.save({"state_dict": state, "encoder": card["encoder"], "preprocess": card["preprocess"]}, path)
    card["bytes"] = path.stat().st_size
    path.with_suffix(".json").write_text(json.dumps(card, indent=2, sort_keys=True, default=str) + "\n")
    return card
