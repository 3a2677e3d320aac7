"""acml-ray: Asymmetric Contrastive Multimodal Learning of molecular graph encoders on Ray."""

from acml_ray.environment import apply_defaults as _apply_defaults

# Before anything below imports Ray: Ray fixes several settings (auth mode, loopback cluster,
# progress bars) when it is imported, so every entry point (CLI, jobs, benchmarks, a notebook)
# gets the same environment. Values the caller set always win; nothing loopback-only is set
# when RAY_ADDRESS names a cluster.
_apply_defaults()

__version__ = "0.1.0"
