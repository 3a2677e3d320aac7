"""Mass spectra (MS/MS or EI) as a modality (annotated libraries are read by `acml_ray.data.spectra`).

Spectra are read with matchms (MGF, MSP, mzML, ...), binned on an m/z grid with square-root
intensity scaling by default, and encoded by the frozen `SpectrumCNN` of
`acml_ray.modalities.spectrum` (seeded random features unless pretrained weights are given).
"""

from __future__ import annotations

from typing import Any

from acml_ray.modalities.spectrum import (
    IntensityScale,
    Peaks,
    SpectrumModality,
    parse_peak_input,
    peaks_from_arrays,
)


class MassSpecModality(SpectrumModality):
    """Binned mass spectra: m/z ``lo..hi`` (default 0..1000) in ``bin_width`` (default 1.0)
    bins, intensities scaled (default sqrt) and max-normalised, no line broadening.

    Input: a matchms `Spectrum`, a ``(mz, intensities)`` tuple of arrays, ``(mz, intensity)``
    pairs, a mapping ``{"mz": ..., "intensities": ...}``, or a JSON string of those.
    Input column `ms`.
    """

    name = "ms"
    input_column = "ms"
    unit = "m/z"

    def __init__(
        self,
        lo: float = 0.0,
        hi: float = 1000.0,
        bin_width: float = 1.0,
        intensity_scale: IntensityScale = "sqrt",
        line_width: float = 0.0,
        **options: Any,
    ) -> None:
        super().__init__(
            lo=lo, hi=hi, bin_width=bin_width, intensity_scale=intensity_scale, line_width=line_width, **options
        )

    def parse(self, raw: Any) -> Peaks:
        peaks = getattr(raw, "peaks", None)  # a matchms Spectrum (duck-typed: no import needed)
        if peaks is not None and hasattr(peaks, "mz"):
            return peaks_from_arrays(peaks.mz, peaks.intensities)
        return parse_peak_input(raw)


__all__ = ["MassSpecModality"]
