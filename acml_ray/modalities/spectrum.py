"""Spectra as modalities: peak lists -> fixed bins -> a frozen 1-D CNN (13C NMR, 1H NMR; MS builds
on the same machinery in `acml_ray.modalities.ms`).

Binning follows the ACML reference: 13C over -50..350 ppm at 0.1 ppm (4,000 bins), 1H over
0..12 ppm (here at 0.01 ppm, 1,200 bins), max-normalised; bins are centred on the grid
points. Peaks can be broadened with a Lorentzian or Gaussian line of a given full width at
half maximum (FWHM); each line is integrated over every bin, so a width of 0 is exactly "one
peak, one bin" and a wider line spreads intensity without moving its largest bin.

**Encoders.** No pretrained NMR or MS encoder ships offline (the reference's CReSS weights are
not on PyPI), so by default the encoder is a *fixed random-feature* CNN: strided convolutions
with ReLU, position-keeping average pooling and a linear read-out, initialised from a
`torch.Generator` seeded with `seed`. It is frozen like any pretrained encoder, identical in
every process (same seed => same weights => same fingerprint), and preserves where peaks are
(unlike a global pool). It is a legitimate frozen feature extractor for contrastive training
of the graph side, but a pretrained spectrum encoder will do better: pass its state dict as
`weights_path` (a local file or an ``s3://`` URI) with matching `channels` / `kernel_size` /
`pool_positions` / `dim`.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import nn

from acml_ray.modalities.base import Modality, ModalityInputError

LineShape = Literal["lorentzian", "gaussian"]
IntensityScale = Literal["none", "sqrt", "log1p"]


@dataclass(frozen=True)
class Peaks:
    """A spectrum as positions (ppm or m/z) with intensities.

    `continuous` marks a sampled profile (e.g. a JCAMP-DX XYDATA spectrum) rather than a
    peak list: its points are max-pooled into bins instead of summed, and never broadened.
    """

    positions: np.ndarray
    intensities: np.ndarray
    continuous: bool = False

    def canonical(self) -> str:
        """Sorted, rounded text form: equal spectra give equal strings whatever their order."""
        order = np.lexsort((self.intensities, self.positions))
        body = ";".join(f"{p:.4f}:{i:.6g}"
                        for p, i in zip(self.positions[order], self.intensities[order]))
        return ("profile|" if self.continuous else "peaks|") + body


def peaks_from_arrays(positions: Any, intensities: Any | None, continuous: bool = False) -> Peaks:
    """Validate arrays into `Peaks` (intensity 1 per peak when none are given).

    Raises `ModalityInputError` for empty, ragged, non-finite or negative input.
    """
    try:
        pos = np.asarray(positions, dtype=np.float64)
        inten = (np.ones_like(pos) if intensities is None
                 else np.asarray(intensities, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise ModalityInputError(f"peaks are not numeric: {exc}") from None
    if pos.ndim != 1 or inten.shape != pos.shape:
        raise ModalityInputError(
            f"wrong shape: positions {pos.shape} and intensities {inten.shape} must be equal 1-D")
    if pos.size == 0:
        raise ModalityInputError("empty spectrum")
    if not (np.isfinite(pos).all() and np.isfinite(inten).all()):
        raise ModalityInputError("non-finite peak position or intensity")
    if continuous:
        inten = np.clip(inten, 0.0, None)  # baseline noise in measured profiles dips below 0
    elif (inten < 0).any():
        raise ModalityInputError("negative peak intensity")
    if not (inten > 0).any():
        raise ModalityInputError("empty spectrum")
    return Peaks(pos, inten, continuous)


def parse_peak_input(raw: Any) -> Peaks:
    """Peaks from the in-memory forms a table column can hold.

    - a 1-D sequence of positions (intensity 1 each: equivalent atoms stack up);
    - a sequence of ``(position, intensity)`` pairs, or an array of shape ``[n, 2]``;
    - a 2-tuple ``(positions, intensities)`` of sequences;
    - a mapping with ``shifts``/``positions``/``ppm``/``mz`` and optional
      ``intensities``/``intensity``;
    - a JSON string of any of the above (as stored in CSV/Parquet string columns).
    """
    if isinstance(raw, str):
        text = raw.strip()
        if not text.startswith(("[", "{")):
            raise ModalityInputError("expected a peak list or a JSON string of one")
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModalityInputError(f"unparsable JSON peak list: {exc.msg}") from None
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        raise ModalityInputError("missing spectrum")
    if isinstance(raw, dict):
        pos_key = next((k for k in ("shifts", "positions", "ppm", "mz") if k in raw), None)
        if pos_key is None:
            raise ModalityInputError(f"spectrum mapping has no positions; keys: {sorted(raw)}")
        inten_key = next((k for k in ("intensities", "intensity") if k in raw), None)
        return peaks_from_arrays(raw[pos_key], raw[inten_key] if inten_key else None)
    if isinstance(raw, tuple) and len(raw) == 2 and all(
            isinstance(v, (list, tuple, np.ndarray)) for v in raw):
        return peaks_from_arrays(raw[0], raw[1])
    if not isinstance(raw, (list, tuple, np.ndarray)):
        raise ModalityInputError(f"unsupported spectrum input: {type(raw).__name__}")
    if len(raw) == 0:
        raise ModalityInputError("empty spectrum")
    items = list(raw)
    if isinstance(raw, np.ndarray) and raw.dtype != object:
        arr = raw
    elif all(isinstance(v, (list, tuple, np.ndarray)) for v in items):  # pairs (Parquet list<list>)
        try:
            arr = np.array([np.asarray(v, dtype=np.float64) for v in items])
        except ValueError:
            raise ModalityInputError("wrong shape: peaks must all be (position, intensity)") from None
    else:
        try:
            arr = np.asarray(items)
        except ValueError:  # ragged: numbers mixed with pairs
            raise ModalityInputError("wrong shape: mixed positions and pairs") from None
    if arr.ndim == 1:
        return peaks_from_arrays(arr, None)
    if arr.ndim == 2 and arr.shape[1] == 2:
        return peaks_from_arrays(arr[:, 0], arr[:, 1])
    raise ModalityInputError(
        f"wrong shape: expected positions [n] or (position, intensity) pairs [n, 2], got {arr.shape}")


_PAIR = re.compile(r"([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*,\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)")


def read_jcamp(path: str | os.PathLike) -> Peaks:
    """Read a 1-D NMR spectrum from a JCAMP-DX file with nmrglue.

    XYDATA profiles (ppm, or Hz converted with ``.OBSERVE FREQUENCY``) become a continuous
    `Peaks`; ``##PEAK TABLE=(XY..XY)`` sections (which nmrglue does not parse) a peak list.
    """
    import nmrglue as ng

    path = Path(path)
    if not path.is_file():
        raise ModalityInputError(f"missing file: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nmrglue warns for every optional key it lacks
            dic, data = ng.jcampdx.read(str(path))
    except Exception as exc:  # nmrglue raises bare Exceptions on malformed files
        raise ModalityInputError(f"unreadable JCAMP-DX file: {type(exc).__name__}: {exc}") from None
    if data is None:
        for key, sections in dic.items():
            for section in sections if key.startswith("_datatype_") else []:
                if "PEAKTABLE" in section:
                    pairs = _PAIR.findall(section["PEAKTABLE"][0].split("\n", 1)[-1])
                    if not pairs:
                        raise ModalityInputError("empty spectrum")
                    xy = np.array(pairs, dtype=np.float64)
                    scale_x = float(section.get("XFACTOR", ["1"])[0])
                    scale_y = float(section.get("YFACTOR", ["1"])[0])
                    units = section.get("XUNITS", ["PPM"])[0].upper()
                    freq = section.get(".OBSERVEFREQUENCY", [None])[0]
                    positions = _to_ppm(xy[:, 0] * scale_x, units, freq)
                    return peaks_from_arrays(positions, xy[:, 1] * scale_y)
        raise ModalityInputError("JCAMP-DX file has no XYDATA or PEAK TABLE")
    if isinstance(data, list):  # [real, imaginary]
        data = data[0]
    try:
        first, last = float(dic["FIRSTX"][0]), float(dic["LASTX"][0])
    except (KeyError, ValueError):
        raise ModalityInputError("JCAMP-DX XYDATA without FIRSTX/LASTX") from None
    units = dic.get("XUNITS", ["PPM"])[0].upper()
    freq = dic.get(".OBSERVEFREQUENCY", [None])[0]
    axis = _to_ppm(np.linspace(first, last, len(data)), units, freq)
    return peaks_from_arrays(axis, data, continuous=True)


def _to_ppm(x: np.ndarray, units: str, freq_mhz: str | None) -> np.ndarray:
    if units == "PPM":
        return x
    if units == "HZ" and freq_mhz:
        return x / float(freq_mhz)
    raise ModalityInputError(f"JCAMP-DX x units {units!r} cannot be converted to ppm")


def bin_peaks(peaks: Peaks, lo: float, hi: float, bin_width: float,
              line_shape: LineShape = "lorentzian", line_width: float = 0.0) -> tuple[np.ndarray, int]:
    """Bin a spectrum over ``[lo, hi)`` -> (float64 vector, number of peaks out of range).

    Bin ``i`` is centred on the grid point ``lo + i*w`` (covers half a width either side), so a
    shift on the grid, such as 77.0 ppm at 0.1 ppm, sits in the middle of its bin rather than
    on an edge shared by two; the few peaks in the last half-bin below ``hi`` go to the last
    bin. With ``line_width > 0`` (FWHM, same units) each peak's line is integrated over every
    bin edge to edge (arctan for Lorentzian, erf for Gaussian): intensity is spread, not lost,
    and the largest share stays in the peak's own bin.
    """
    n_bins = int(round((hi - lo) / bin_width))
    inside = (peaks.positions >= lo) & (peaks.positions < hi)
    dropped = int((~inside).sum())
    pos, inten = peaks.positions[inside], peaks.intensities[inside]
    out = np.zeros(n_bins, dtype=np.float64)
    if pos.size == 0:
        return out, dropped
    if line_width <= 0 or peaks.continuous:
        idx = np.clip(np.floor((pos - lo) / bin_width + 0.5).astype(np.int64), 0, n_bins - 1)
        (np.maximum if peaks.continuous else np.add).at(out, idx, inten)
        return out, dropped
    edges = lo + (np.arange(n_bins + 1) - 0.5) * bin_width
    offset = edges[None, :] - pos[:, None]  # [peaks, edges]
    if line_shape == "lorentzian":
        cdf = np.arctan(offset / (line_width / 2.0)) / np.pi
    elif line_shape == "gaussian":
        from scipy.special import erf

        sigma = line_width / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        cdf = 0.5 * erf(offset / (sigma * math.sqrt(2.0)))
    else:
        raise ValueError(f"unknown line shape {line_shape!r}")
    out = inten @ np.diff(cdf, axis=1)
    return out, dropped


def scale_intensities(values: np.ndarray, scale: IntensityScale) -> np.ndarray:
    """Compress the dynamic range of intensities (MS convention: square root)."""
    if scale == "none":
        return values
    if scale == "sqrt":
        return np.sqrt(values)
    if scale == "log1p":
        return np.log1p(values)
    raise ValueError(f"unknown intensity scale {scale!r}")


class SpectrumCNN(nn.Module):
    """1-D CNN over a binned spectrum: strided conv + ReLU blocks, average pooling to a fixed
    number of positions (so peak location survives), linear read-out to `dim`.

    Weights are drawn from a generator seeded with `seed`, never from torch's global RNG, so
    the same arguments give bit-identical weights in every process.
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 64, 64), kernel_size: int = 9,
                 pool_positions: int = 32, dim: int = 256, seed: int = 0) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = 1
        for c_out in channels:
            blocks += [nn.Conv1d(c_in, c_out, kernel_size, stride=2, padding=kernel_size // 2),
                       nn.ReLU()]
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool1d(pool_positions)
        self.readout = nn.Linear(c_in * pool_positions, dim)
        generator = torch.Generator().manual_seed(seed)
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Linear)):
                nn.init.kaiming_uniform_(module.weight, nonlinearity="relu", generator=generator)
                nn.init.zeros_(module.bias)

    def forward(self, spectra: torch.Tensor) -> torch.Tensor:
        x = self.features(spectra.unsqueeze(1))
        return self.readout(torch.flatten(self.pool(x), 1))


class SpectrumModality(Modality):
    """Shared machinery of binned-spectrum modalities (NMR, MS): parse -> scale -> bin ->
    broaden -> max-normalise -> frozen `SpectrumCNN`.

    Peaks outside the range are dropped and counted in `peaks_out_of_range` (per instance);
    a spectrum with no peak left in range is rejected.
    """

    input_column = "spectrum"
    unit = ""

    def __init__(self, lo: float, hi: float, bin_width: float, line_shape: LineShape = "lorentzian",
                 line_width: float = 0.0, intensity_scale: IntensityScale = "none",
                 normalise: bool = True, channels: Sequence[int] = (16, 32, 64, 64),
                 kernel_size: int = 9, pool_positions: int = 32, dim: int = 256, seed: int = 0,
                 weights_path: str | None = None, cache_dir: str | None = None,
                 input_column: str | None = None) -> None:
        super().__init__()
        if not hi > lo or bin_width <= 0:
            raise ValueError(f"need lo < hi and bin_width > 0, got {lo}, {hi}, {bin_width}")
        if line_shape not in ("lorentzian", "gaussian"):
            raise ValueError(f"line_shape must be lorentzian or gaussian, got {line_shape!r}")
        if intensity_scale not in ("none", "sqrt", "log1p"):
            raise ValueError(f"intensity_scale must be none, sqrt or log1p, got {intensity_scale!r}")
        if line_width < 0:
            raise ValueError(f"line_width must be >= 0, got {line_width}")
        self.lo, self.hi, self.bin_width = float(lo), float(hi), float(bin_width)
        self.n_bins = int(round((self.hi - self.lo) / self.bin_width))
        self.line_shape, self.line_width = line_shape, float(line_width)
        self.intensity_scale, self.normalise = intensity_scale, bool(normalise)
        self.channels, self.kernel_size = tuple(int(c) for c in channels), int(kernel_size)
        self.pool_positions, self._dim, self.seed = int(pool_positions), int(dim), int(seed)
        self.weights_path, self.cache_dir = weights_path, cache_dir
        if input_column is not None:
            self.input_column = input_column
        self.peaks_out_of_range = 0

    @property
    def dim(self) -> int:
        return self._dim

    def preprocess_config(self) -> dict[str, Any]:
        return {"lo": self.lo, "hi": self.hi, "bin_width": self.bin_width, "n_bins": self.n_bins,
                "line_shape": self.line_shape if self.line_width > 0 else None,
                "line_width": self.line_width, "intensity_scale": self.intensity_scale,
                "normalise": "max" if self.normalise else None, "binning": "centred-integrated-v1"}

    def parse(self, raw: Any) -> Peaks:
        """Raw input -> `Peaks` (subclasses add file formats)."""
        return parse_peak_input(raw)

    def canonical_input(self, raw: Any) -> str:
        return self.parse(raw).canonical()

    def binned(self, raw: Any) -> np.ndarray:
        """The preprocessed spectrum as float32 [n_bins]."""
        peaks = self.parse(raw)
        peaks = Peaks(peaks.positions, scale_intensities(peaks.intensities, self.intensity_scale),
                      peaks.continuous)
        vector, dropped = bin_peaks(peaks, self.lo, self.hi, self.bin_width, self.line_shape,
                                    self.line_width)
        self.peaks_out_of_range += dropped
        top = vector.max()
        if not top > 0:
            raise ModalityInputError(f"no peaks within {self.lo:g}..{self.hi:g} {self.unit}".strip())
        if self.normalise:
            vector = vector / top
        return vector.astype(np.float32)

    def preprocess_one(self, raw: Any) -> torch.Tensor:
        return torch.from_numpy(self.binned(raw))

    def _build_encoder(self) -> nn.Module:
        cnn = SpectrumCNN(self.channels, self.kernel_size, self.pool_positions, self._dim, self.seed)
        if self.weights_path is not None:
            from acml_ray.modalities.weights import local_copy

            state = torch.load(local_copy(self.weights_path, self.cache_dir), map_location="cpu",
                               weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            try:
                cnn.load_state_dict(state)
            except RuntimeError as exc:
                raise ValueError(
                    f"{self.name}: weights {self.weights_path} do not fit SpectrumCNN(channels="
                    f"{self.channels}, kernel_size={self.kernel_size}, pool_positions="
                    f"{self.pool_positions}, dim={self._dim}): {exc}") from exc
        return cnn


class NmrModality(SpectrumModality):
    """NMR spectra from peak lists (shift in ppm, optional intensity) or JCAMP-DX files."""

    unit = "ppm"

    def parse(self, raw: Any) -> Peaks:
        if isinstance(raw, os.PathLike):
            return read_jcamp(raw)
        if isinstance(raw, str) and not raw.lstrip().startswith(("[", "{")):
            return read_jcamp(raw.strip())  # anything that is not JSON is taken as a file path
        return parse_peak_input(raw)


class Nmr13CModality(NmrModality):
    """13C NMR as in the reference: -50..350 ppm at 0.1 ppm (4,000 bins), max-normalised.

    Default line width 0 (each peak in one bin, the reference's binned peak list); set
    `line_width` (FWHM, ppm) to broaden. Input column `nmr13c`.
    """

    name = "nmr13c"
    input_column = "nmr13c"

    def __init__(self, lo: float = -50.0, hi: float = 350.0, bin_width: float = 0.1,
                 line_width: float = 0.0, **options: Any) -> None:
        super().__init__(lo=lo, hi=hi, bin_width=bin_width, line_width=line_width, **options)


class Nmr1HModality(NmrModality):
    """1H NMR over 0..12 ppm (the reference range) at 0.01 ppm (1,200 bins), max-normalised.

    0.01 ppm is finer than typical multiplet spacing at 400 MHz (~0.02 ppm) yet keeps the
    vector small. Default line width 0.02 ppm Lorentzian FWHM: real 1H lines have width, and it
    makes simulated shifts a little forgiving of prediction error. Input column `nmr1h`.
    """

    name = "nmr1h"
    input_column = "nmr1h"

    def __init__(self, lo: float = 0.0, hi: float = 12.0, bin_width: float = 0.01,
                 line_width: float = 0.02, **options: Any) -> None:
        super().__init__(lo=lo, hi=hi, bin_width=bin_width, line_width=line_width, **options)
