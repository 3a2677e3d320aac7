"""Chemistry: SMILES -> categorical molecular graphs (`GraphFeaturizer`, `MolGraph`).

The feature vocabularies live in `acml_ray.chem.features`; `GraphFeaturizer` applies the
reference ACML molecule filter and gives every graph its canonical SMILES and InChIKey.
`acml_ray.chem.guard.parse_smiles` is the one bounded way to parse untrusted SMILES, and
`InvalidInputError` (`acml_ray.chem.errors`) the one error for input that cannot be processed.
"""

# The errors, featuriser and guard modules' public names are this package's.
from acml_ray.chem import errors as _errors
from acml_ray.chem import featurizer as _featurizer
from acml_ray.chem import guard as _guard
from acml_ray.chem.errors import *  # noqa: F403
from acml_ray.chem.featurizer import *  # noqa: F403
from acml_ray.chem.guard import *  # noqa: F403

__all__ = sorted(set(_errors.__all__) | set(_featurizer.__all__) | set(_guard.__all__))
