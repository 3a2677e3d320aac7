"""MLflow "model from code" file: logging this path instead of a pickled object means a loaded
model runs only the shipped acml_ray code, never unpickles arbitrary objects."""

import mlflow.models

from acml_ray.registry.pyfunc import ACMLEmbedder

mlflow.models.set_model(ACMLEmbedder())
