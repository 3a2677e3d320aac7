"""Bounded SMILES parsing: the one way acml-ray turns untrusted text into an RDKit `Mol`.

RDKit's cost on hostile input is unbounded: a 100k-atom ring segfaults in ring perception or
grows to tens of GB during sanitisation, `"c" * 100000` takes minutes to fail kekulisation, and
100,000 dummy atoms pass a heavy-atom filter only to fail at InChI. `parse_smiles` therefore
checks, cheapest first, before any sanitisation, ring perception, InChI or 3D work:

1. type and text: a `str`; whitespace, byte-order marks and zero-width characters are stripped
   from both ends (RDKit drops them silently; here the rule is written down); a control
   character anywhere (a NUL, typically UTF-16 read as UTF-8) or a non-ASCII character inside
   the SMILES token (before the first blank; a name may follow it) rejects the input;
2. length: at most `max_chars` characters (checked on the raw string, before anything else);
3. size: the *unsanitised* parse (linear time) may hold at most `max_atoms` heavy atoms, dummy
   atoms (``*``) included (explicit hydrogens do not count: sanitisation merges them away);
4. only then sanitisation, exactly as `Chem.MolFromSmiles` does it (explicit hydrogens merged,
   stereochemistry assigned; `tests/test_guard.py` checks the graphs are identical).

Every rejection raises `InvalidInputError` with a short reason that starts with a fixed phrase
(``too long``, ``too many heavy atoms``, ``invalid text encoding``, ...), so rows
can be counted by kind. Parsing 2,000 characters without sanitisation takes about a millisecond.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass

from rdkit import Chem

from acml_ray.chem.errors import InvalidInputError

__all__ = ["DEFAULT_LIMITS", "SmilesLimits", "parse_smiles"]

# Invisible characters that editors, spreadsheets and web pages leave at the ends of a field.
# (Every character `str.isspace` accepts, then the byte-order mark and the zero-width ones.)
_STRIP = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff\u200b\u200c\u200d\u2060"
)


@dataclass(frozen=True)
class SmilesLimits:
    """Bounds on the work one input may cause.

    `max_chars`: longest accepted input, in characters. `max_atoms`: most heavy atoms (dummy
    atoms included) in the unsanitised parse; sanitisation never changes the heavy atoms, so
    the featuriser's heavy-atom filter is exactly this check, run before the costly steps.
    """

    max_chars: int = 2000
    max_atoms: int = 500


# Bounds for callers without a featuriser config (modality preprocessing, spectrum libraries):
# generous for chemistry, yet every accepted input is depicted or fingerprinted in milliseconds.
DEFAULT_LIMITS = SmilesLimits()


def _describe(char: str) -> str:
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X}" + (f" ({name.lower()})" if name else "")


def _check_text(text: str) -> None:
    """Control characters anywhere, non-ASCII ones in the SMILES token -> InvalidInputError."""
    if text.isascii() and text.isprintable():  # the fast path: one C-level scan each
        return
    token_end = next((i for i, c in enumerate(text) if c.isspace()), len(text))
    for i, char in enumerate(text):
        if unicodedata.category(char) == "Cc" and char not in "\t":
            raise InvalidInputError(f"invalid text encoding: control character {_describe(char)} at position {i}")
        if i < token_end and not char.isascii():
            raise InvalidInputError(f"not SMILES: non-ASCII character {_describe(char)} at position {i}")


def parse_smiles(smiles: object, limits: SmilesLimits = DEFAULT_LIMITS) -> tuple[str, Chem.Mol]:
    """(stripped text, sanitised molecule) of one untrusted input, or InvalidInputError.

    Runs the checks of the module docstring in order; the caller should hold an RDKit
    `BlockLogs` (a rejected input is a reason, not log spam).
    """
    if not isinstance(smiles, str):
        if isinstance(smiles, float) and math.isnan(smiles):
            raise InvalidInputError("not a string: float (NaN, a missing value)")
        raise InvalidInputError(f"not a string: {type(smiles).__name__}")
    if len(smiles) > limits.max_chars:
        raise InvalidInputError(f"too long: {len(smiles)} characters > {limits.max_chars}")
    text = smiles.strip(_STRIP)  # RDKit reads a space as "name follows": leading blanks would fail
    if not text:
        raise InvalidInputError("empty input")
    _check_text(text)
    mol = Chem.MolFromSmiles(text, sanitize=False)
    if mol is None:
        raise InvalidInputError("unparsable SMILES")
    atoms = mol.GetNumAtoms()
    if atoms > limits.max_atoms:  # all atoms fit: nothing to count (the usual case)
        # Counted in C++ (a Python loop over 100k atoms takes half a second). "Heavy" as in
        # GetNumHeavyAtoms (atomic number > 1), which sanitisation leaves unchanged; dummy atoms
        # count too (they would fail only at InChI, after all the costly work): no more of them
        # than "*" in the text, nor than the atoms that are not heavy.
        heavy = mol.GetNumHeavyAtoms()
        dummies = min(text.count("*"), atoms - heavy)
        if heavy + dummies > limits.max_atoms:
            extra = f" ({dummies} dummy atoms * included)" if dummies else ""
            raise InvalidInputError(f"too many heavy atoms: {heavy + dummies} > {limits.max_atoms}{extra}")
    if "|" in text:
        # CXSMILES extensions (e.g. "|c:1|" double-bond stereo) are applied by the sanitising
        # parse only: parse again the standard way (the size is known to be bounded by now).
        mol = Chem.MolFromSmiles(text)
        if mol is None:
            raise InvalidInputError("unparsable SMILES")
        return text, mol
    # What MolFromSmiles(text) does after parsing, in the same order and with the same flags
    # (explicit hydrogens merged and sanitised, then RDKit's default legacy stereo perception);
    # tests/test_guard.py proves identical graphs and identities on real data sets.
    try:
        mol = Chem.RemoveHs(mol, implicitOnly=False, updateExplicitCount=True, sanitize=True)
    except Exception:  # noqa: BLE001 - valence, kekulisation, ...: RDKit's MolFromSmiles gives None
        raise InvalidInputError("unparsable SMILES") from None
    Chem.AssignStereochemistry(mol, cleanIt=True, force=True, flagPossibleStereoCenters=True)
    return text, mol
