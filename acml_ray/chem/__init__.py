"""Chemistry: SMILES -> categorical molecular graphs (`GraphFeaturizer`, `MolGraph`).

The feature vocabularies live in `acml_ray.chem.features`; `GraphFeaturizer` applies the
reference ACML molecule filter and gives every graph its canonical SMILES and InChIKey.
"""

from acml_ray.chem.featurizer import (
    FeaturizationError,
    GraphFeaturizer,
    MolGraph,
    Rejected,
    canonical_identity,
    row_arrow_schema,
)

__all__ = [
    "FeaturizationError",
    "GraphFeaturizer",
    "MolGraph",
    "Rejected",
    "canonical_identity",
    "row_arrow_schema",
]
