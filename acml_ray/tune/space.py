"""Declarative search spaces: a YAML file mapping ACMLConfig dotted paths to distributions,
turned into a HyperOpt space and validated against the configuration before any trial runs.

Format (``tune_spaces/acml.yaml``)::

    description: optional free text
    parameters:
      graph_encoder.num_layers: {quniform: [2, 8, 1]}     # low, high, q (ints need an integer q)
      graph_encoder.pooling: {choice: [sum, mean, max]}
      projection.dims: {choice: [[256], [256, 256]]}       # options may be lists
      loss.temperature: {loguniform: [0.03, 1.0]}          # low, high
      optimizer.weight_decay: {uniform: [0.0, 0.01]}
      optimizer.lr: {qloguniform: [1.0e-4, 1.0e-2, 1.0e-4]}

Every parameter must name a leaf of `ACMLConfig` (e.g. ``loss.kind``), and every value a
trial could draw (each choice, each end of a range) must be accepted by that field, so a bad
space fails here with the parameter named instead of as a crashed trial later.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from acml_ray.config import ACMLConfig, apply_overrides, read_yaml

Kind = Literal["choice", "uniform", "loguniform", "quniform", "qloguniform"]
_RANGE_ARITY = {"uniform": 2, "loguniform": 2, "quniform": 3, "qloguniform": 3}
_SCALAR = (str, int, float, bool, type(None))
# Paths the study itself owns: tuning them would break the study's bookkeeping.
_RESERVED = {
    "tune": "the study's own settings",
    "tracking": "set by the study (trials are nested MLflow runs)",
    "output_dir": "set by the study",
    "cache_dir": "not a hyperparameter",
    "train.storage_path": "set by the study",
    "train.train_table": "not a hyperparameter",
    "train.val_table": "not a hyperparameter",
    "train.epochs": "ASHA decides how long a trial trains: set tune.max_t",
    "train.early_stopping_metric": "trials rank their best epoch by tune.metric",
    "train.early_stopping_mode": "trials rank their best epoch by tune.mode",
}


def _strip_optional(annotation: Any) -> Any:
    """``int | None`` -> ``int`` (other unions are returned unchanged)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def field_annotation(path: str) -> Any:
    """The type annotation of the ACMLConfig leaf at dotted `path`; ValueError if there is none."""
    model: type[BaseModel] = ACMLConfig
    parts = path.split(".")
    for depth, part in enumerate(parts):
        fields = model.model_fields
        where = ".".join(parts[:depth]) or "the config"
        if part not in fields:
            raise ValueError(f"unknown parameter {path!r}: not a config path ({where} has: {', '.join(fields)})")
        annotation = _strip_optional(fields[part].annotation)
        last = depth == len(parts) - 1
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if last:
                raise ValueError(
                    f"unknown parameter {path!r}: {path} is a config section, name one "
                    f"of its fields ({', '.join(annotation.model_fields)})"
                )
            model = annotation
        elif not last:
            raise ValueError(
                f"unknown parameter {path!r}: {'.'.join(parts[: depth + 1])} is not a "
                "section (lists such as modalities cannot be tuned)"
            )
    return annotation


def with_overrides(cfg: ACMLConfig, overrides: dict[str, Any]) -> ACMLConfig:
    """A validated copy of `cfg` with dotted-path overrides applied (pydantic errors propagate)."""
    return ACMLConfig.model_validate(apply_overrides(cfg.model_dump(mode="json"), overrides))


def _label(option: Any) -> Any:
    """How a choice option appears to HyperOpt/Tune: scalars as they are, lists as YAML text
    (HyperOpt can only map `points_to_evaluate` onto literal options)."""
    return option if isinstance(option, _SCALAR) else yaml.safe_dump(option, default_flow_style=True).strip()


@dataclass(frozen=True)
class Parameter:
    """One searched config field: a choice among options or a (log/quantised) numeric range."""

    path: str
    kind: Kind
    options: tuple[Any, ...] = ()  # choice: the config values
    low: float = 0.0
    high: float = 0.0
    q: float | None = None
    integer: bool = False  # the config field is an int: samples are rounded to ints

    def hyperopt(self) -> Any:
        """The HyperOpt expression for this parameter (labelled by its path)."""
        from hyperopt import hp

        if self.kind == "choice":
            return hp.choice(self.path, [_label(o) for o in self.options])
        if self.kind in ("loguniform", "qloguniform"):
            bounds = (math.log(self.low), math.log(self.high))
            return hp.loguniform(self.path, *bounds) if self.q is None else hp.qloguniform(self.path, *bounds, self.q)
        return (
            hp.uniform(self.path, self.low, self.high)
            if self.q is None
            else hp.quniform(self.path, self.low, self.high, self.q)
        )

    def decode(self, sampled: Any) -> Any:
        """A value HyperOpt drew -> the config value."""
        if self.kind == "choice":
            labels = [_label(o) for o in self.options]
            if sampled not in labels:
                raise ValueError(f"{self.path}: {sampled!r} is not one of the choices {labels}")
            return self.options[labels.index(sampled)]
        return int(round(sampled)) if self.integer else float(sampled)

    def project(self, value: Any) -> tuple[Any, bool]:
        """A config value -> the nearest value this parameter can draw (HyperOpt's
        representation) and whether it had to change."""
        if self.kind == "choice":
            if value in self.options:
                return _label(value), False
            return _label(self.options[0]), True
        x = min(max(float(value), self.low), self.high)
        if self.q is not None:
            x = round(x / self.q) * self.q
        if self.integer:
            x = int(round(x))
        return x, not math.isclose(x, float(value), rel_tol=1e-9)

    def extremes(self) -> list[Any]:
        """Every choice, or the smallest and largest value the range can produce."""
        if self.kind == "choice":
            return list(self.options)
        ends = [self.low, self.high]
        if self.q is not None:  # HyperOpt rounds to multiples of q, possibly past the bounds
            ends = [round(e / self.q) * self.q for e in ends]
        return [int(round(e)) if self.integer else float(e) for e in ends]


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space; `source` names where it came from (for messages and MLflow)."""

    parameters: dict[str, Parameter]
    source: str = "<space>"
    description: str = ""

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """``{dotted path: parameter fields}``, for YAML (MLflow artifact, resume check)."""
        return {path: asdict(p) for path, p in self.parameters.items()}

    def hyperopt_space(self) -> dict[str, Any]:
        """Flat ``{dotted path: hyperopt expression}`` for `HyperOptSearch`."""
        return {path: p.hyperopt() for path, p in self.parameters.items()}

    def overrides(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """A trial's sampled values (Tune's flat config) -> dotted config overrides."""
        missing = set(self.parameters) - set(sampled)
        if missing:
            raise ValueError(f"sampled config lacks {sorted(missing)}")
        return {path: p.decode(sampled[path]) for path, p in self.parameters.items()}

    def start_point(self, cfg: ACMLConfig) -> tuple[dict[str, Any], list[str]]:
        """`cfg`'s values as a point of this space (for ``points_to_evaluate``), and the
        parameters whose base value lies outside the space and was moved into it."""
        data = cfg.model_dump(mode="json")
        point, moved = {}, []
        for path, p in self.parameters.items():
            value: Any = data
            for key in path.split("."):
                value = value[key]
            point[path], changed = p.project(value)
            if changed:
                moved.append(f"{path}: {value!r} -> {p.decode(point[path])!r}")
        return point, moved


def _number(path: str, kind: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"parameter {path!r}: {kind} {name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"parameter {path!r}: {kind} {name} must be finite, got {value!r}")
    return float(value)


def _parameter(path: str, spec: Any) -> Parameter:
    """Parse one ``{kind: args}`` entry (types and ranges only; config values are checked later)."""
    reason = _RESERVED.get(path) or _RESERVED.get(path.split(".")[0])
    if reason:
        raise ValueError(f"parameter {path!r} cannot be tuned ({reason})")
    annotation = field_annotation(path)
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ValueError(
            f"parameter {path!r}: expected one of {{choice: [...]}}, {{uniform: [low, high]}}, "
            f"{{loguniform: [low, high]}}, {{quniform: [low, high, q]}}, "
            f"{{qloguniform: [low, high, q]}}; got {spec!r}"
        )
    ((kind, args),) = spec.items()
    if kind == "choice":
        if not isinstance(args, list):
            raise ValueError(f"parameter {path!r}: choice needs a list of options, got {args!r}")
        if not args:
            raise ValueError(f"parameter {path!r}: empty choice (no options)")
        labels = [_label(o) for o in args]
        if len(set(map(repr, labels))) != len(labels):
            raise ValueError(f"parameter {path!r}: choice lists an option twice: {args}")
        return Parameter(path, "choice", options=tuple(args))
    if kind not in _RANGE_ARITY:
        raise ValueError(f"parameter {path!r}: unknown distribution {kind!r} (use choice, {', '.join(_RANGE_ARITY)})")
    arity = _RANGE_ARITY[kind]
    if not isinstance(args, list) or len(args) != arity:
        raise ValueError(
            f"parameter {path!r}: {kind} takes [{'low, high, q' if arity == 3 else 'low, high'}], got {args!r}"
        )
    low, high = _number(path, kind, "low", args[0]), _number(path, kind, "high", args[1])
    q = _number(path, kind, "q", args[2]) if arity == 3 else None
    if low >= high:
        raise ValueError(f"parameter {path!r}: empty range, low {args[0]} must be below high {args[1]}")
    if kind.endswith("loguniform") and low <= 0:
        raise ValueError(f"parameter {path!r}: {kind} needs low > 0, got {args[0]}")
    if q is not None and q <= 0:
        raise ValueError(f"parameter {path!r}: {kind} needs q > 0, got {args[2]}")
    if annotation is int:
        if q is None or q != int(q):
            raise ValueError(
                f"parameter {path!r} is an integer field: use quniform/qloguniform with an "
                f"integer q, or choice (got {kind} {args})"
            )
    elif annotation is not float:
        raise ValueError(
            f"parameter {path!r}: a numeric range needs a number field, but {path} is "
            f"{getattr(annotation, '__name__', annotation)}; use choice"
        )
    return Parameter(path, kind, low=low, high=high, q=q, integer=annotation is int)


def parse_space(data: Any, base: ACMLConfig | None = None, source: str = "<space>") -> SearchSpace:
    """Build and validate a `SearchSpace` from parsed YAML; every value a trial could draw is
    checked against `base` (default: the default config) so the config would accept it."""
    base = base or ACMLConfig()
    if not isinstance(data, dict) or not isinstance(data.get("parameters"), dict):
        raise ValueError(
            f"{source}: expected a mapping with a 'parameters' mapping (dotted config path -> distribution)"
        )
    unknown = set(data) - {"parameters", "description"}
    if unknown:
        raise ValueError(f"{source}: unknown top-level keys {sorted(unknown)} (allowed: parameters, description)")
    if not data["parameters"]:
        raise ValueError(f"{source}: no parameters to search")
    parameters: dict[str, Parameter] = {}
    for path, spec in data["parameters"].items():
        try:
            parameter = _parameter(str(path), spec)
            for value in parameter.extremes():
                try:
                    with_overrides(base, {parameter.path: value})
                except ValidationError as exc:
                    first = exc.errors()[0]
                    raise ValueError(
                        f"parameter {path!r}: value {value!r} is rejected by the config: {first['msg']}"
                    ) from None
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        parameters[parameter.path] = parameter
    return SearchSpace(parameters, source=source, description=str(data.get("description", "")))


def load_space(path: str | Path, base: ACMLConfig | None = None) -> SearchSpace:
    """Load and validate a search space YAML file (see the module docstring for the format)."""
    path = Path(path)
    return parse_space(read_yaml(path, "search space file"), base, source=str(path))
