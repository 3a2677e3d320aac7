"""Structure search: index a molecule library with a trained encoder, then search it by
spectrum, picture or SMILES (`acml index`, `acml search`, `search`, an MLflow pyfunc).

Layering: above `model` and `registry` (it loads trained and registered models), below
`pipelines` and `cli`.
"""

from acml_ray.search.build import IndexBuildResult, build_index
from acml_ray.search.filters import CandidateFilter, normalise_formula
from acml_ray.search.inputs import Query, QueryError
from acml_ray.search.layout import IndexNotFoundError, ModelMismatchError
from acml_ray.search.query import SearchResult, StructureIndex, search

__all__ = [
    "CandidateFilter",
    "IndexBuildResult",
    "IndexNotFoundError",
    "ModelMismatchError",
    "Query",
    "QueryError",
    "SearchResult",
    "StructureIndex",
    "build_index",
    "normalise_formula",
    "search",
]
