"""MLflow "model from code" file for structure search: a loaded model runs only the shipped
acml_ray code, never unpickles arbitrary objects."""

import mlflow.models

from acml_ray.search.pyfunc import StructureSearcher

mlflow.models.set_model(StructureSearcher())
