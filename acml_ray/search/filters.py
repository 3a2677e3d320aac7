"""Candidate filters by molecular formula and monoisotopic mass, resolved to FAISS id sets.

A filter restricts the candidates *before* ranking: the ids of the library rows that pass are
handed to FAISS as an ``IDSelector``, so the top-K are the K best among the passing rows (a
filter applied after an unfiltered top-K would return fewer, or none, for a rare formula).

`LibraryFilter` sorts the library's formula codes and masses once; each query then finds its
rows with binary searches (O(log n) plus the size of the answer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_ELEMENT = re.compile(r"([A-Z][a-z]?)(\d*)")
_CHARGE = re.compile(r"([+-])(\d*)$")


def normalise_formula(text: str) -> str:
    """A molecular formula in RDKit's Hill notation (``CalcMolFormula``): C, then H, then the
    other elements alphabetically (all alphabetically without carbon); a trailing charge kept.

    ``"H8C9O4"`` and ``"C9 H8 O4"`` -> ``"C9H8O4"``. Raises ValueError for anything else.
    """
    body = "".join(text.split())
    charge = ""
    match = _CHARGE.search(body)
    if match:
        charge = match.group(1) + (match.group(2) if match.group(2) not in ("", "1") else "")
        body = body[: match.start()]
    counts: dict[str, int] = {}
    position = 0
    for m in _ELEMENT.finditer(body):
        if m.start() != position:
            break
        counts[m.group(1)] = counts.get(m.group(1), 0) + int(m.group(2) or 1)
        position = m.end()
    if not body or position != len(body):
        raise ValueError(f"not a molecular formula: {text!r} (expected e.g. C9H8O4)")
    if "C" in counts:
        order = ["C", *(["H"] if "H" in counts else []), *sorted(e for e in counts if e not in ("C", "H"))]
    else:
        order = sorted(counts)
    return "".join(e + (str(counts[e]) if counts[e] != 1 else "") for e in order if counts[e]) + charge


@dataclass(frozen=True)
class CandidateFilter:
    """Which library rows a query may match: a formula, a mass window, or both (AND)."""

    formula: str | None = None
    mass: float | None = None
    tol: float = 0.01  # Da either side of `mass`

    def __post_init__(self) -> None:
        if self.formula is not None:
            object.__setattr__(self, "formula", normalise_formula(self.formula))
        if self.mass is not None and not (np.isfinite(self.mass) and self.mass > 0):
            raise ValueError(f"mass must be a positive number, got {self.mass}")
        if not (np.isfinite(self.tol) and self.tol >= 0):
            raise ValueError(f"mass tolerance must be >= 0, got {self.tol}")

    @property
    def active(self) -> bool:
        return self.formula is not None or self.mass is not None

    def describe(self) -> str:
        parts = []
        if self.formula is not None:
            parts.append(f"formula {self.formula}")
        if self.mass is not None:
            parts.append(f"mass {self.mass:g} +- {self.tol:g}")
        return " and ".join(parts) or "none"


class LibraryFilter:
    """Sorted formula and mass columns of an index, answering `CandidateFilter`s with ids."""

    def __init__(self, formula: pa.ChunkedArray | pa.Array, mass: pa.ChunkedArray | pa.Array) -> None:
        encoded = (
            pc.dictionary_encode(formula).combine_chunks()
            if isinstance(formula, pa.ChunkedArray)
            else pc.dictionary_encode(formula)
        )
        self._codes_of = {v: i for i, v in enumerate(encoded.dictionary.to_pylist())}
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        self._by_formula = np.argsort(codes, kind="stable")
        self._codes_sorted = codes[self._by_formula]
        masses = np.asarray(
            mass.to_numpy() if isinstance(mass, pa.Array) else mass.combine_chunks().to_numpy(zero_copy_only=False),
            dtype=np.float64,
        )
        self._by_mass = np.argsort(masses, kind="stable")
        self._mass_sorted = masses[self._by_mass]

    def ids(self, flt: CandidateFilter) -> np.ndarray | None:
        """Sorted int64 ids passing `flt` (possibly empty), or None when `flt` filters nothing."""
        if not flt.active:
            return None
        result: np.ndarray | None = None
        if flt.formula is not None:
            code = self._codes_of.get(flt.formula)
            if code is None:
                return np.zeros(0, dtype=np.int64)
            lo, hi = np.searchsorted(self._codes_sorted, [code, code + 1])
            result = np.sort(self._by_formula[lo:hi])
        if flt.mass is not None:
            lo = np.searchsorted(self._mass_sorted, flt.mass - flt.tol, side="left")
            hi = np.searchsorted(self._mass_sorted, flt.mass + flt.tol, side="right")
            in_window = np.sort(self._by_mass[lo:hi])
            result = in_window if result is None else np.intersect1d(result, in_window, assume_unique=True)
        assert result is not None  # `active`: a formula or a mass was given
        return result.astype(np.int64, copy=False)
