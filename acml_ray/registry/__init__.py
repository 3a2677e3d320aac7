"""The MLflow model registry face of acml-ray: the pyfunc downstream teams load, and
`register_run`, which logs a trained run as a new version and points an alias at it."""

from acml_ray.registry.pyfunc import ACMLEmbedder, embed_smiles, model_signature, output_columns
from acml_ray.registry.register import RegisteredModel, register_run

__all__ = ["ACMLEmbedder", "RegisteredModel", "embed_smiles", "model_signature", "output_columns", "register_run"]
