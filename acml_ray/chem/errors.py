"""The one error for input that acml-ray cannot process (a row to quarantine, not a bug)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

__all__ = ["InvalidInputError", "reason_counts", "reason_kind"]


class InvalidInputError(ValueError):
    """One input cannot be processed: a SMILES the guard or the featuriser rejects, or a raw
    input (spectrum, picture, text) a modality cannot preprocess.

    `reason` says why in plain words and starts with a fixed phrase (``too long``, ``unparsable
    SMILES``, ``empty spectrum``, ...), so pipelines quarantine the row with it and count rows by
    kind. A `ValueError`, so code that catches bad values in general catches this too.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# A reason's detail starts at the first ": ", " (", quoted value or InChIKey.
_DETAIL = re.compile(r":| \(| '| [A-Z]{14}-[A-Z]{10}-[A-Z]")


def reason_kind(reason: str) -> str:
    """What a quarantine reason counts as: its fixed phrase, before any detail, e.g.
    ``duplicate InChIKey BSYNRYMUTXBXSQ-UHFFFAOYSA-N (row 3)`` -> ``duplicate InChIKey``,
    ``too many heavy atoms: 63 > 50`` -> ``too many heavy atoms``."""
    return _DETAIL.split(reason, maxsplit=1)[0]


def reason_counts(reasons: Iterable[str]) -> dict[str, int]:
    """Rows per reason kind (`reason_kind`), most frequent first: what every report prints."""
    return dict(Counter(reason_kind(r) for r in reasons).most_common())
