"""acml-ray: Asymmetric Contrastive Multimodal Learning of molecular graph encoders on Ray."""

__version__ = "0.1.0"
