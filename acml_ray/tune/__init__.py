"""Hyperparameter search: declarative YAML spaces (HyperOpt) and a Ray Tune study (ASHA) over
distributed ACML training, tracked in MLflow."""

from acml_ray.tune.space import Parameter, SearchSpace, load_space, parse_space, with_overrides
from acml_ray.tune.study import StudyPlan, StudyResult, TrialSummary, run_study

__all__ = [
    "Parameter",
    "SearchSpace",
    "StudyPlan",
    "StudyResult",
    "TrialSummary",
    "load_space",
    "parse_space",
    "run_study",
    "with_overrides",
]
