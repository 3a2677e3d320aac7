"""Spectra as modalities: peak lists -> fixed bins -> a frozen 1-D CNN (13C NMR, 1H NMR; MS builds
on the same machinery in `acml_ray.modalities.ms`).

Binning follows the ACML reference: 13C over -50..350 ppm at 0.1 ppm (4,000 bins), 1H over
0..12 ppm (here at 0.01 ppm, 1,200 bins), max-normalised; bins are centred on the grid
points. Peaks can be broadened with a Lorentzian or Gaussian line of a given full width at
half maximum (FWHM); each line is integrated over every bin, so a width of 0 is exactly "one
peak, one bin" and a wider line spreads intensity without moving its largest bin.

**Encoders** (option `encoder`):

- ``"pretrained"``: a `SpectrumCNN` pretrained in this project, self-supervised on simulated
  spectra (`acml_ray.modalities.spectrum_pretrain`), shipped in `acml_ray/modalities/pretrained/`
  for 13C and 1H; or the user's own weights given as `weights_path` (a local file or an
  ``s3://`` URI, e.g. the output of ``acml pretrain-spectrum``).
- ``"random"``: a *fixed random-feature* CNN (same architecture, initialised from a
  `torch.Generator` seeded with `seed`): identical in every process, a fair baseline.
- ``"binned"``: no encoder, the binned spectrum itself is the vector (``dim = n_bins``).

Every encoder is frozen. Weights saved by `acml pretrain-spectrum` carry their architecture and
preprocessing, and are refused with a clear error when the modality is configured differently.

**Real-world input.** Peak lists without intensities count 1 per peak; a list with some
intensities missing is an error (ambiguous). `reference_offset` (ppm) is added to every position
(re-referencing, e.g. a spectrum referenced to a solvent line instead of TMS); `solvent` removes
the residual solvent lines of one NMR solvent (Fulmer et al., Organometallics 2010, 29, 2176) within
`solvent_window` ppm, counting them in `solvent_peaks_removed`; peaks outside the range are
dropped and counted in `peaks_out_of_range`.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from acml_ray.chem.errors import InvalidInputError
from acml_ray.modalities.base import Modality

LineShape = Literal["lorentzian", "gaussian"]
IntensityScale = Literal["none", "sqrt", "log1p"]
EncoderKind = Literal["pretrained", "random", "binned"]

# Weights pretrained in this project (`acml pretrain-spectrum`), one `<modality>.pt` each, with
# a `<modality>.json` stating their training config and data provenance.
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
CNN_DEFAULTS: dict[str, Any] = {"channels": [16, 32, 64, 64], "kernel_size": 9, "pool_positions": 32, "dim": 256}

# Residual solvent lines, ppm from TMS (Fulmer et al. 2010, Table 1/2): the lines a real
# spectrum carries that belong to no atom of the sample. Water lines included for 1H.
SOLVENT_LINES: dict[str, dict[str, tuple[float, ...]]] = {
    "cdcl3": {"13C": (77.16,), "1H": (7.26, 1.56)},
    "dmso-d6": {"13C": (39.52,), "1H": (2.50, 3.33)},
    "cd3od": {"13C": (49.00,), "1H": (3.31, 4.87)},
    "d2o": {"13C": (), "1H": (4.79,)},
    "acetone-d6": {"13C": (29.84, 206.26), "1H": (2.05, 2.84)},
    "c6d6": {"13C": (128.06,), "1H": (7.16, 0.40)},
    "cd3cn": {"13C": (1.32, 118.26), "1H": (1.94, 2.13)},
}


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
        body = ";".join(f"{p:.4f}:{i:.6g}" for p, i in zip(self.positions[order], self.intensities[order]))
        return ("profile|" if self.continuous else "peaks|") + body


def peaks_from_arrays(positions: Any, intensities: Any | None, continuous: bool = False) -> Peaks:
    """Validate arrays into `Peaks` (intensity 1 per peak when none are given).

    Raises `InvalidInputError` for empty, ragged, non-finite or negative input.
    """
    try:
        pos = np.asarray(positions, dtype=np.float64)
        inten = np.ones_like(pos) if intensities is None else np.asarray(intensities, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"peaks are not numeric: {exc}") from None
    if pos.ndim != 1 or inten.shape != pos.shape:
        raise InvalidInputError(f"wrong shape: positions {pos.shape} and intensities {inten.shape} must be equal 1-D")
    if pos.size == 0:
        raise InvalidInputError("empty spectrum")
    if intensities is not None and not continuous and np.isnan(inten).any() and not np.isnan(inten).all():
        raise InvalidInputError(
            f"{int(np.isnan(inten).sum())} of {inten.size} peak intensities missing: give all or none"
        )
    if intensities is not None and np.isnan(inten).all():
        inten = np.ones_like(pos)  # a table column of intensities that are all missing = none given
    if not (np.isfinite(pos).all() and np.isfinite(inten).all()):
        raise InvalidInputError("non-finite peak position or intensity")
    if continuous:
        inten = np.clip(inten, 0.0, None)  # baseline noise in measured profiles dips below 0
    elif (inten < 0).any():
        raise InvalidInputError("negative peak intensity")
    if not (inten > 0).any():
        raise InvalidInputError("empty spectrum")
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
            raise InvalidInputError("expected a peak list or a JSON string of one")
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"unparsable JSON peak list: {exc.msg}") from None
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        raise InvalidInputError("missing spectrum")
    if isinstance(raw, dict):
        pos_key = next((k for k in ("shifts", "positions", "ppm", "mz") if k in raw), None)
        if pos_key is None:
            raise InvalidInputError(f"spectrum mapping has no positions; keys: {sorted(raw)}")
        inten_key = next((k for k in ("intensities", "intensity") if k in raw), None)
        return peaks_from_arrays(raw[pos_key], raw[inten_key] if inten_key else None)
    if isinstance(raw, tuple) and len(raw) == 2 and all(isinstance(v, (list, tuple, np.ndarray)) for v in raw):
        return peaks_from_arrays(raw[0], raw[1])
    if not isinstance(raw, (list, tuple, np.ndarray)):
        raise InvalidInputError(f"unsupported spectrum input: {type(raw).__name__}")
    if len(raw) == 0:
        raise InvalidInputError("empty spectrum")
    items = list(raw)
    if isinstance(raw, np.ndarray) and raw.dtype != object:
        arr = raw
    elif all(isinstance(v, (list, tuple, np.ndarray)) for v in items):  # pairs (Parquet list<list>)
        try:
            arr = np.array([np.asarray(v, dtype=np.float64) for v in items])
        except ValueError:
            raise InvalidInputError("wrong shape: peaks must all be (position, intensity)") from None
    else:
        try:
            arr = np.asarray(items)
        except ValueError:  # ragged: numbers mixed with pairs
            raise InvalidInputError("wrong shape: mixed positions and pairs") from None
    if arr.ndim == 1:
        return peaks_from_arrays(arr, None)
    if arr.ndim == 2 and arr.shape[1] == 2:
        return peaks_from_arrays(arr[:, 0], arr[:, 1])
    raise InvalidInputError(
        f"wrong shape: expected positions [n] or (position, intensity) pairs [n, 2], got {arr.shape}"
    )


_PAIR = re.compile(r"([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*,\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)")


def read_jcamp(path: str | os.PathLike) -> Peaks:
    """Read a 1-D NMR spectrum from a JCAMP-DX file with nmrglue.

    XYDATA profiles (ppm, or Hz converted with ``.OBSERVE FREQUENCY``) become a continuous
    `Peaks`; ``##PEAK TABLE=(XY..XY)`` sections (which nmrglue does not parse) a peak list.
    """
    import nmrglue as ng

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"missing file: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nmrglue warns for every optional key it lacks
            dic, data = ng.jcampdx.read(str(path))
    except Exception as exc:  # nmrglue raises bare Exceptions on malformed files
        raise InvalidInputError(f"unreadable JCAMP-DX file: {type(exc).__name__}: {exc}") from None
    if data is None:
        for key, sections in dic.items():
            for section in sections if key.startswith("_datatype_") else []:
                if "PEAKTABLE" in section:
                    pairs = _PAIR.findall(section["PEAKTABLE"][0].split("\n", 1)[-1])
                    if not pairs:
                        raise InvalidInputError("empty spectrum")
                    xy = np.array(pairs, dtype=np.float64)
                    scale_x = float(section.get("XFACTOR", ["1"])[0])
                    scale_y = float(section.get("YFACTOR", ["1"])[0])
                    units = section.get("XUNITS", ["PPM"])[0].upper()
                    freq = section.get(".OBSERVEFREQUENCY", [None])[0]
                    positions = _to_ppm(xy[:, 0] * scale_x, units, freq)
                    return peaks_from_arrays(positions, xy[:, 1] * scale_y)
        raise InvalidInputError("JCAMP-DX file has no XYDATA or PEAK TABLE")
    if isinstance(data, list):  # [real, imaginary]
        data = data[0]
    try:
        first, last = float(dic["FIRSTX"][0]), float(dic["LASTX"][0])
    except (KeyError, ValueError):
        raise InvalidInputError("JCAMP-DX XYDATA without FIRSTX/LASTX") from None
    units = dic.get("XUNITS", ["PPM"])[0].upper()
    freq = dic.get(".OBSERVEFREQUENCY", [None])[0]
    axis = _to_ppm(np.linspace(first, last, len(data)), units, freq)
    return peaks_from_arrays(axis, data, continuous=True)


def read_nmr_folder(path: str | os.PathLike, line_broadening_hz: float = 1.0) -> Peaks:
    """Read a 1-D spectrum from a Bruker or Varian/Agilent data folder with nmrglue.

    - Bruker processed data (``pdata/<n>/1r`` + ``procs``, or the experiment folder, whose
      ``pdata/1`` is taken): the real spectrum on the ppm axis of ``OFFSET``, ``SW_p``, ``SF``.
    - A Bruker FID (``fid`` + ``acqus``) or a Varian FID (``fid`` + ``procpar``): digital filter
      removed (Bruker), exponential apodisation of `line_broadening_hz`, zero fill to twice the
      next power of two, Fourier transform, automatic phasing (nmrglue's ACME), real part; ppm
      axis from the carrier and the 0 ppm frequency (Bruker ``O1`` / ``BF1``, Varian ``sfrq`` /
      ``reffrq``).

    Returns a continuous `Peaks` (a profile; negative baseline clipped at 0).
    """
    import nmrglue as ng

    path = Path(path)
    if not path.is_dir():
        raise InvalidInputError(f"missing folder: {path}")
    if (path / "1r").is_file() and (path / "procs").is_file():
        return _bruker_processed(path)
    if (path / "acqus").is_file() and (path / "pdata" / "1" / "1r").is_file():
        return _bruker_processed(path / "pdata" / "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nmrglue warns about every parameter it cannot guess
        try:
            if (path / "acqus").is_file() and (path / "fid").is_file():
                dic, fid = ng.bruker.read(str(path))
                acqus = dic["acqus"]
                fid = ng.bruker.remove_digital_filter(dic, fid)
                sw, zero_mhz = float(acqus["SW_h"]), float(acqus["BF1"])
                carrier_hz = float(acqus["O1"])
            elif (path / "procpar").is_file() and (path / "fid").is_file():
                dic, fid = ng.varian.read(str(path))
                par = dic["procpar"]
                sw, sfrq = float(par["sw"]["values"][0]), float(par["sfrq"]["values"][0])
                if "reffrq" not in par:
                    raise InvalidInputError("Varian procpar has no reffrq: the ppm axis is unknown")
                zero_mhz = float(par["reffrq"]["values"][0])
                carrier_hz = (sfrq - zero_mhz) * 1e6
            else:
                raise InvalidInputError(f"{path} is no Bruker (acqus) or Varian (procpar) data folder")
        except InvalidInputError:
            raise
        except (KeyError, ValueError, OSError, IndexError) as exc:
            raise InvalidInputError(f"unreadable NMR data in {path}: {type(exc).__name__}: {exc}") from None
        fid = np.asarray(fid)
        if fid.ndim != 1 or fid.size < 8:
            raise InvalidInputError(f"expected a 1-D FID, got shape {fid.shape}")
        fid = ng.proc_base.em(fid, lb=line_broadening_hz / sw)
        fid = ng.proc_base.zf_size(fid, 2 ** int(math.ceil(math.log2(fid.size)) + 1))
        spectrum = ng.proc_autophase.autops(ng.proc_base.fft(fid), "acme", disp=False)
    axis = ng.fileiobase.unit_conversion(spectrum.size, True, sw, zero_mhz, carrier_hz).ppm_scale()
    return peaks_from_arrays(axis, spectrum.real, continuous=True)


def _bruker_processed(pdata: Path) -> Peaks:
    import nmrglue as ng

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            dic, data = ng.bruker.read_pdata(str(pdata), read_acqus=False, scale_data=True)
            procs = dic["procs"]
            offset, sw_p, sf = float(procs["OFFSET"]), float(procs["SW_p"]), float(procs["SF"])
        except (KeyError, ValueError, OSError) as exc:
            raise InvalidInputError(f"unreadable Bruker pdata in {pdata}: {type(exc).__name__}: {exc}") from None
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 1:
        raise InvalidInputError(f"expected a 1-D processed spectrum, got shape {data.shape}")
    # Bruker's convention: OFFSET is the ppm of the first (leftmost, highest) point.
    axis = offset - np.arange(data.size) * (sw_p / sf) / data.size
    return peaks_from_arrays(axis, data, continuous=True)


def _to_ppm(x: np.ndarray, units: str, freq_mhz: str | None) -> np.ndarray:
    if units == "PPM":
        return x
    if units == "HZ" and freq_mhz:
        return x / float(freq_mhz)
    raise InvalidInputError(f"JCAMP-DX x units {units!r} cannot be converted to ppm")


def bin_peaks(
    peaks: Peaks, lo: float, hi: float, bin_width: float, line_shape: LineShape = "lorentzian", line_width: float = 0.0
) -> tuple[np.ndarray, int]:
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

    def __init__(
        self,
        channels: Sequence[int] = (16, 32, 64, 64),
        kernel_size: int = 9,
        pool_positions: int = 32,
        dim: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = 1
        for c_out in channels:
            blocks += [nn.Conv1d(c_in, c_out, kernel_size, stride=2, padding=kernel_size // 2), nn.ReLU()]
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool1d(pool_positions)
        self.readout = nn.Linear(c_in * pool_positions, dim)
        generator = torch.Generator().manual_seed(seed)
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Linear)):
                nn.init.kaiming_uniform_(module.weight, nonlinearity="relu", generator=generator)
                if module.bias is not None:  # always here: every layer above is built with a bias
                    nn.init.zeros_(module.bias)

    def forward(self, spectra: torch.Tensor) -> torch.Tensor:
        x = self.features(spectra.unsqueeze(1))
        return self.readout(torch.flatten(self.pool(x), 1))


def read_encoder_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load a weights file: ``{"state_dict", "encoder", "preprocess", ...}`` as
    `acml pretrain-spectrum` writes it, or a bare state dict (architecture then unknown)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        return state
    return {"state_dict": state}


class SpectrumModality(Modality):
    """Shared machinery of binned-spectrum modalities (NMR, MS): parse -> re-reference ->
    remove solvent lines -> scale -> bin -> broaden -> max-normalise -> frozen encoder.

    Peaks outside the range are dropped and counted in `peaks_out_of_range`, solvent lines in
    `solvent_peaks_removed` (per instance); a spectrum with no peak left in range is rejected.
    """

    input_column = "spectrum"
    unit = ""
    nucleus: str | None = None  # "13C" / "1H": which solvent lines apply
    default_encoder: EncoderKind = "random"

    def __init__(
        self,
        lo: float,
        hi: float,
        bin_width: float,
        line_shape: LineShape = "lorentzian",
        line_width: float = 0.0,
        intensity_scale: IntensityScale = "none",
        normalise: bool = True,
        channels: Sequence[int] | None = None,
        kernel_size: int | None = None,
        pool_positions: int | None = None,
        dim: int | None = None,
        seed: int = 0,
        weights_path: str | None = None,
        cache_dir: str | None = None,
        input_column: str | None = None,
        encoder: EncoderKind | None = None,
        reference_offset: float = 0.0,
        solvent: str | None = None,
        solvent_window: float | None = None,
    ) -> None:
        super().__init__()
        if not hi > lo or bin_width <= 0:
            raise ValueError(f"need lo < hi and bin_width > 0, got {lo}, {hi}, {bin_width}")
        if line_shape not in ("lorentzian", "gaussian"):
            raise ValueError(f"line_shape must be lorentzian or gaussian, got {line_shape!r}")
        if intensity_scale not in ("none", "sqrt", "log1p"):
            raise ValueError(f"intensity_scale must be none, sqrt or log1p, got {intensity_scale!r}")
        if line_width < 0:
            raise ValueError(f"line_width must be >= 0, got {line_width}")
        encoder = encoder or ("pretrained" if weights_path is not None else self.default_encoder)
        if encoder not in ("pretrained", "random", "binned"):
            raise ValueError(f"encoder must be pretrained, random or binned, got {encoder!r}")
        if encoder == "binned" and weights_path is not None:
            raise ValueError("encoder 'binned' has no weights: drop weights_path or pick 'pretrained'")
        if solvent is not None:
            if self.nucleus is None:
                raise ValueError(f"{self.name}: solvent lines apply to NMR only")
            if solvent.lower() not in SOLVENT_LINES:
                raise ValueError(f"unknown solvent {solvent!r}; known: {sorted(SOLVENT_LINES)}")
        self.lo, self.hi, self.bin_width = float(lo), float(hi), float(bin_width)
        self.n_bins = int(round((self.hi - self.lo) / self.bin_width))
        self.line_shape, self.line_width = line_shape, float(line_width)
        self.intensity_scale, self.normalise = intensity_scale, bool(normalise)
        # Architecture options left unset take the shipped weights' values (encoder "pretrained")
        # or SpectrumCNN's defaults; set ones must match the weights.
        given = {
            "channels": None if channels is None else [int(c) for c in channels],
            "kernel_size": kernel_size,
            "pool_positions": pool_positions,
            "dim": dim,
        }
        self._arch_given = {k: v for k, v in given.items() if v is not None}
        arch = {**CNN_DEFAULTS, **self._arch_given}
        self.channels, self.kernel_size = tuple(arch["channels"]), int(arch["kernel_size"])
        self.pool_positions, self._dim, self.seed = int(arch["pool_positions"]), int(arch["dim"]), int(seed)
        self.weights_path, self.cache_dir = weights_path, cache_dir
        self.encoder_kind: EncoderKind = encoder
        self.reference_offset = float(reference_offset)
        self.solvent = solvent.lower() if solvent else None
        # Residual solvent multiplets span ~0.3 ppm (13C triplet of CDCl3) / ~0.02 ppm (1H).
        self.solvent_window = float(
            solvent_window if solvent_window is not None else (0.5 if self.nucleus == "13C" else 0.03)
        )
        if input_column is not None:
            self.input_column = input_column
        self.peaks_out_of_range = 0
        self.solvent_peaks_removed = 0
        self.shipped: dict[str, Any] | None = None
        if encoder == "pretrained" and weights_path is None:
            self._use_shipped()

    def _use_shipped(self) -> None:
        """Adopt the architecture of this modality's shipped weights; refuse other preprocessing."""
        card_path = PRETRAINED_DIR / f"{self.name}.json"
        if not card_path.is_file():
            raise ValueError(
                f"{self.name}: no pretrained weights ship with acml-ray; use encoder "
                f"'random' or 'binned', or give weights_path"
            )
        card = json.loads(card_path.read_text())
        self.shipped = card
        differ = {k: v for k, v in self._arch_given.items() if card["encoder"][k] != v}
        if differ:
            raise ValueError(
                f"{self.name}: the shipped weights are SpectrumCNN{card['encoder']}, "
                f"configured {differ}; use encoder 'random' for another "
                f"architecture, or give weights_path"
            )
        arch = card["encoder"]
        self.channels, self.kernel_size = tuple(arch["channels"]), int(arch["kernel_size"])
        self.pool_positions, self._dim = int(arch["pool_positions"]), int(arch["dim"])
        self._check_preprocess(card["preprocess"], f"the shipped {self.name} weights")

    def _check_preprocess(self, trained: dict[str, Any], what: str) -> None:
        ours = self.preprocess_config()
        # The grid must match: the CNN learned what each position means. Line width and
        # intensity treatment may differ (pretraining drew random line widths and intensities).
        keys = ("lo", "hi", "bin_width")
        differ = {k: (trained.get(k), ours[k]) for k in keys if trained.get(k) != ours[k]}
        if differ:
            raise ValueError(
                f"{self.name}: {what} were trained on other preprocessing "
                f"(option: trained, configured) {differ}; match those options or use "
                f"encoder 'random'/'binned'"
            )

    @property
    def dim(self) -> int:
        return self.n_bins if self.encoder_kind == "binned" else self._dim

    def preprocess_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "lo": self.lo,
            "hi": self.hi,
            "bin_width": self.bin_width,
            "n_bins": self.n_bins,
            "line_shape": self.line_shape if self.line_width > 0 else None,
            "line_width": self.line_width,
            "intensity_scale": self.intensity_scale,
            "normalise": "max" if self.normalise else None,
            "binning": "centred-integrated-v1",
        }
        # Only when set, so fingerprints (and caches) of plain spectra stay what they were.
        if self.reference_offset:
            config["reference_offset"] = self.reference_offset
        if self.solvent:
            config["solvent"] = [self.solvent, self.solvent_window]
        return config

    def parse(self, raw: Any) -> Peaks:
        """Raw input -> `Peaks` (subclasses add file formats)."""
        return parse_peak_input(raw)

    def canonical_input(self, raw: Any) -> str:
        return self.parse(raw).canonical()

    def clean(self, peaks: Peaks) -> Peaks:
        """Re-reference and drop solvent lines (the documented normalisation of real spectra)."""
        positions, intensities = peaks.positions + self.reference_offset, peaks.intensities
        if self.solvent:
            assert self.nucleus is not None  # __init__ refuses a solvent for a modality without a nucleus
            lines = np.asarray(SOLVENT_LINES[self.solvent][self.nucleus], dtype=np.float64)
            near = (
                (np.abs(positions[:, None] - lines[None, :]) <= self.solvent_window).any(axis=1)
                if lines.size
                else np.zeros(positions.shape, dtype=bool)
            )
            if peaks.continuous:  # a profile keeps its grid: the solvent region is zeroed
                intensities = np.where(near, 0.0, intensities)
            else:
                positions, intensities = positions[~near], intensities[~near]
            self.solvent_peaks_removed += int(near.sum()) if not peaks.continuous else int(near.any())
            if positions.size == 0 or not (intensities > 0).any():
                raise InvalidInputError(f"only {self.solvent} solvent lines in the spectrum")
        return Peaks(positions, scale_intensities(intensities, self.intensity_scale), peaks.continuous)

    def binned(self, raw: Any) -> np.ndarray:
        """The preprocessed spectrum as float32 [n_bins]."""
        return self.vector(self.clean(self.parse(raw)))

    def vector(self, peaks: Peaks) -> np.ndarray:
        """Bin, broaden and normalise cleaned `peaks` (float32 [n_bins])."""
        vector, dropped = bin_peaks(peaks, self.lo, self.hi, self.bin_width, self.line_shape, self.line_width)
        self.peaks_out_of_range += dropped
        top = vector.max()
        if not top > 0:
            raise InvalidInputError(f"no peaks within {self.lo:g}..{self.hi:g} {self.unit}".strip())
        if self.normalise:
            vector = vector / top
        return vector.astype(np.float32)

    def preprocess_one(self, raw: Any) -> torch.Tensor:
        return torch.from_numpy(self.binned(raw))

    def architecture(self) -> dict[str, Any]:
        """The `SpectrumCNN` arguments of this modality (what a weights file must match)."""
        return {
            "channels": list(self.channels),
            "kernel_size": self.kernel_size,
            "pool_positions": self.pool_positions,
            "dim": self._dim,
        }

    def _build_encoder(self) -> nn.Module:
        if self.encoder_kind == "binned":
            return nn.Identity()
        cnn = SpectrumCNN(self.channels, self.kernel_size, self.pool_positions, self._dim, self.seed)
        if self.encoder_kind == "random":
            return cnn
        if self.weights_path is None:
            location, what = PRETRAINED_DIR / f"{self.name}.pt", f"the shipped {self.name} weights"
        else:
            from acml_ray.modalities.weights import local_copy

            location, what = local_copy(self.weights_path, self.cache_dir), f"weights {self.weights_path}"
        saved = read_encoder_file(location)
        if "encoder" in saved and dict(saved["encoder"]) != self.architecture():
            raise ValueError(
                f"{self.name}: {what} do not fit SpectrumCNN{self.architecture()}: "
                f"they were saved for {dict(saved['encoder'])}; set those options"
            )
        if "preprocess" in saved:
            self._check_preprocess(dict(saved["preprocess"]), what)
        try:
            cnn.load_state_dict(saved["state_dict"])
        except RuntimeError as exc:
            raise ValueError(
                f"{self.name}: {what} do not fit SpectrumCNN(channels="
                f"{self.channels}, kernel_size={self.kernel_size}, pool_positions="
                f"{self.pool_positions}, dim={self._dim}): {exc}"
            ) from exc
        return cnn


class NmrModality(SpectrumModality):
    """NMR spectra from peak lists (shift in ppm, optional intensity), JCAMP-DX files, or
    Bruker / Varian data folders (read with nmrglue)."""

    unit = "ppm"
    # The encoders pretrained in this project (see docs/modalities.md for the measurement).
    default_encoder: EncoderKind = "pretrained"

    def parse(self, raw: Any) -> Peaks:
        if isinstance(raw, (str, os.PathLike)) and not str(raw).lstrip().startswith(("[", "{")):
            # Anything that is not JSON is a path: a Bruker/Varian folder or a JCAMP-DX file.
            path = Path(str(raw).strip())
            return read_nmr_folder(path) if path.is_dir() else read_jcamp(path)
        return parse_peak_input(raw)


class Nmr13CModality(NmrModality):
    """13C NMR as in the reference: -50..350 ppm at 0.1 ppm (4,000 bins), max-normalised.

    Default line width 0 (each peak in one bin, the reference's binned peak list); set
    `line_width` (FWHM, ppm) to broaden. Input column `nmr13c`.
    """

    name = "nmr13c"
    input_column = "nmr13c"
    nucleus = "13C"

    def __init__(
        self, lo: float = -50.0, hi: float = 350.0, bin_width: float = 0.1, line_width: float = 0.0, **options: Any
    ) -> None:
        super().__init__(lo=lo, hi=hi, bin_width=bin_width, line_width=line_width, **options)


class Nmr1HModality(NmrModality):
    """1H NMR over 0..12 ppm (the reference range) at 0.01 ppm (1,200 bins), max-normalised.

    0.01 ppm is finer than typical multiplet spacing at 400 MHz (~0.02 ppm) yet keeps the
    vector small. Default line width 0.02 ppm Lorentzian FWHM: real 1H lines have width, and it
    makes simulated shifts a little forgiving of prediction error. Input column `nmr1h`.
    """

    name = "nmr1h"
    input_column = "nmr1h"
    nucleus = "1H"

    def __init__(
        self, lo: float = 0.0, hi: float = 12.0, bin_width: float = 0.01, line_width: float = 0.02, **options: Any
    ) -> None:
        super().__init__(lo=lo, hi=hi, bin_width=bin_width, line_width=line_width, **options)
