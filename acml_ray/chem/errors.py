"""The one error for input that acml-ray cannot process (a row to quarantine, not a bug)."""

from __future__ import annotations

__all__ = ["InvalidInputError"]


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
