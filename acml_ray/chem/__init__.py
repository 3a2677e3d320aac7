"""Chemistry: SMILES -> categorical molecular graphs (`GraphFeaturizer`, `MolGraph`).

The feature vocabularies live in `acml_ray.chem.features`; `GraphFeaturizer` applies the
reference ACML molecule filter and gives every graph its canonical SMILES and InChIKey.
"""

# The featuriser module's public names are this package's; its __all__ is the one list of them.
from acml_ray.chem.featurizer import *  # noqa: F403
from acml_ray.chem.featurizer import __all__  # noqa: F401
