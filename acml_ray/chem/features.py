"""Categorical atom and bond feature vocabularies.

Every feature is an integer index into a fixed vocabulary whose last slot means "other", so the
graph encoder embeds each column with its own `nn.Embedding` (Hu et al. 2020 style). The
vocabularies are part of a trained model's contract: change them and old checkpoints no longer
load, so they live in one place.
"""

from __future__ import annotations

from rdkit import Chem

ChiralType = Chem.rdchem.ChiralType
HybridizationType = Chem.rdchem.HybridizationType
BondType = Chem.rdchem.BondType
BondStereo = Chem.rdchem.BondStereo

ATOMIC_NUMBERS: list[int] = list(range(1, 119))
CHIRAL_TAGS: list[ChiralType] = [
    ChiralType.CHI_UNSPECIFIED,
    ChiralType.CHI_TETRAHEDRAL_CW,
    ChiralType.CHI_TETRAHEDRAL_CCW,
    ChiralType.CHI_OTHER,
]
DEGREES: list[int] = list(range(0, 11))
FORMAL_CHARGES: list[int] = list(range(-5, 6))
TOTAL_HS: list[int] = list(range(0, 9))
HYBRIDIZATIONS: list[HybridizationType] = [
    HybridizationType.S,
    HybridizationType.SP,
    HybridizationType.SP2,
    HybridizationType.SP3,
    HybridizationType.SP3D,
    HybridizationType.SP3D2,
    HybridizationType.UNSPECIFIED,
]
AROMATIC: list[bool] = [False, True]

BOND_TYPES: list[BondType] = [BondType.SINGLE, BondType.DOUBLE, BondType.TRIPLE, BondType.AROMATIC]
BOND_STEREOS: list[BondStereo] = [
    BondStereo.STEREONONE,
    BondStereo.STEREOANY,
    BondStereo.STEREOZ,
    BondStereo.STEREOE,
    BondStereo.STEREOCIS,
    BondStereo.STEREOTRANS,
]
CONJUGATED: list[bool] = [False, True]
IN_RING: list[bool] = [False, True]

ATOM_VOCABS: dict[str, list] = {
    "atomic_num": ATOMIC_NUMBERS,
    "chiral_tag": CHIRAL_TAGS,
    "degree": DEGREES,
    "formal_charge": FORMAL_CHARGES,
    "total_hs": TOTAL_HS,
    "hybridization": HYBRIDIZATIONS,
    "aromatic": AROMATIC,
}
BOND_VOCABS: dict[str, list] = {
    "bond_type": BOND_TYPES,
    "stereo": BOND_STEREOS,
    "conjugated": CONJUGATED,
    "in_ring": IN_RING,
}

# +1 per column for the "other" slot.
ATOM_FEATURE_DIMS: list[int] = [len(v) + 1 for v in ATOM_VOCABS.values()]
BOND_FEATURE_DIMS: list[int] = [len(v) + 1 for v in BOND_VOCABS.values()]
# Self-loops (added inside the GIN layer, as in Hu et al.) get their own bond-type index.
SELF_LOOP_BOND_TYPE: int = len(BOND_TYPES) + 1
BOND_FEATURE_DIMS[0] += 1

NUM_ATOM_FEATURES: int = len(ATOM_VOCABS)
NUM_BOND_FEATURES: int = len(BOND_VOCABS)
