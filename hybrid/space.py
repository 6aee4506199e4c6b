"""Search spaces: typed parameters, validation with clear messages, unit-cube encoding.

A space is defined in YAML (``conf/space/*.yaml``)::

    params:
      matrix_lr: {type: float, low: 0.01, high: 0.1, log: true, default: 0.04}
      depth:     {type: int, low: 4, high: 12, step: 2, default: 8}
      window_pattern: {type: categorical, choices: [L, SL, SSSL], default: SSSL}

Every parameter has a ``default`` (the target's own default; the centre of the range when not
given) so that experiment 1, the baseline, is a full configuration like every other one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hybrid.errors import ConfigError, InvalidCandidateError

_FIELDS = {
    "float": {"type", "low", "high", "log", "default"},
    "int": {"type", "low", "high", "log", "step", "default"},
    "categorical": {"type", "choices", "default"},
}


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


@dataclass(frozen=True)
class FloatParam:
    name: str
    low: float
    high: float
    log: bool = False
    default: float | None = None

    def center(self) -> float:
        if self.log:
            return math.exp((math.log(self.low) + math.log(self.high)) / 2)
        return (self.low + self.high) / 2

    def validate(self, value: Any) -> float:
        if not _is_number(value):
            raise InvalidCandidateError(f"{self.name}: expected a float, got {value!r}")
        v = float(value)
        if not math.isfinite(v):
            raise InvalidCandidateError(f"{self.name}: {v} is not a finite number")
        if v < self.low or v > self.high:
            raise InvalidCandidateError(f"{self.name}: {v:g} is outside [{self.low:g}, {self.high:g}]")
        return v

    def encode(self, value: float) -> float:
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)

    def decode(self, u: float) -> float:
        u = min(max(float(u), 0.0), 1.0)
        if self.log:
            v = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            v = self.low + u * (self.high - self.low)
        return min(max(v, self.low), self.high)


@dataclass(frozen=True)
class IntParam:
    name: str
    low: int
    high: int
    log: bool = False
    step: int = 1
    default: int | None = None

    def values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))

    def center(self) -> int:
        mid = math.exp((math.log(self.low) + math.log(self.high)) / 2) if self.log else (self.low + self.high) / 2
        return self._snap(mid)

    def _snap(self, v: float) -> int:
        k = round((v - self.low) / self.step)
        k = min(max(k, 0), (self.high - self.low) // self.step)
        return int(self.low + k * self.step)

    def validate(self, value: Any) -> int:
        if not _is_number(value) or (isinstance(value, float) and not value.is_integer()):
            raise InvalidCandidateError(f"{self.name}: expected an integer, got {value!r}")
        v = int(value)
        if v < self.low or v > self.high:
            raise InvalidCandidateError(f"{self.name}: {v} is outside [{self.low}, {self.high}]")
        if (v - self.low) % self.step:
            raise InvalidCandidateError(f"{self.name}: {v} is not on the grid low={self.low} step={self.step}")
        return v

    def encode(self, value: int) -> float:
        # Linear scale: each integer sits at the centre of its own bin, so decode(encode(v)) == v.
        if self.log:  # log scale: position of log(value) between log(low) and log(high)
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        lo, hi = self.low - 0.5 * self.step, self.high + 0.5 * self.step
        return (value - lo) / (hi - lo)

    def decode(self, u: float) -> int:
        u = min(max(float(u), 0.0), 1.0)
        if self.log:
            return self._snap(math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low))))
        lo, hi = self.low - 0.5 * self.step, self.high + 0.5 * self.step
        return self._snap(lo + u * (hi - lo))


@dataclass(frozen=True)
class CategoricalParam:
    name: str
    choices: tuple[Any, ...]
    default: Any = None

    def center(self) -> Any:
        return self.choices[0]

    def index(self, value: Any) -> int:
        for i, c in enumerate(self.choices):
            # bool is an int in Python: keep True distinct from 1
            if c == value and type(c) is type(value):
                return i
            if _is_number(c) and _is_number(value) and float(c) == float(value):
                return i
        raise InvalidCandidateError(f"{self.name}: {value!r} is not one of {list(self.choices)}")

    def validate(self, value: Any) -> Any:
        return self.choices[self.index(value)]

    def encode(self, value: Any) -> float:
        k = len(self.choices)
        return (self.index(value) + 0.5) / k

    def decode(self, u: float) -> Any:
        k = len(self.choices)
        i = min(int(min(max(float(u), 0.0), 1.0) * k), k - 1)
        return self.choices[i]


Param = FloatParam | IntParam | CategoricalParam


def _param_from_config(name: str, spec: Mapping[str, Any]) -> Param:
    where = f"space.params.{name}"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a mapping like {{type: float, low: 0, high: 1}}, got {spec!r}")
    kind = spec.get("type")
    if kind not in _FIELDS:
        raise ConfigError(f"{where}.type: {kind!r} is not one of float, int, categorical")
    unknown = set(spec) - _FIELDS[kind]
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)} for type {kind}; allowed: {sorted(_FIELDS[kind])}")
    default = spec.get("default")
    if kind == "categorical":
        choices = spec.get("choices")
        if isinstance(choices, str) or not isinstance(choices, Sequence) or len(choices) == 0:
            raise ConfigError(f"{where}.choices: give a non-empty list, e.g. choices: [a, b]")
        if len({repr(c) for c in choices}) != len(choices):
            raise ConfigError(f"{where}.choices: duplicate values in {list(choices)}")
        p: Param = CategoricalParam(name, tuple(choices))
        if default is not None:
            try:
                default = p.validate(default)
            except InvalidCandidateError as e:
                raise ConfigError(f"{where}.default: {e}") from None
        return CategoricalParam(name, tuple(choices), default if default is not None else choices[0])

    for key in ("low", "high"):
        if key not in spec or spec[key] is None:
            raise ConfigError(f"{where}.{key}: required for type {kind}")
        if not _is_number(spec[key]):
            raise ConfigError(f"{where}.{key}: expected a number, got {spec[key]!r}")
        if not math.isfinite(spec[key]):  # inf/nan pass every comparison below, then overflow the encoding
            raise ConfigError(f"{where}.{key}: expected a finite number, got {spec[key]}")
    log = False if spec.get("log") is None else spec["log"]
    if not isinstance(log, bool):  # bool("maybe") is True: only the YAML booleans count
        raise ConfigError(f"{where}.log: expected true or false, got {log!r}")
    low, high = spec["low"], spec["high"]
    if low >= high:
        raise ConfigError(f"{where}: low ({low}) must be < high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{where}: log scale needs low > 0 (got low={low}); set log: false or raise low")
    if kind == "float":
        p = FloatParam(name, float(low), float(high), log)
    else:
        if not (float(low).is_integer() and float(high).is_integer()):
            raise ConfigError(f"{where}: an int param needs integer bounds, got low={low} high={high}")
        step = spec.get("step", 1)
        if not _is_number(step) or not float(step).is_integer() or step < 1:
            raise ConfigError(f"{where}.step: expected a positive integer, got {step!r}")
        if (int(high) - int(low)) % int(step):
            raise ConfigError(f"{where}: high - low ({int(high) - int(low)}) must be a multiple of step ({int(step)})")
        p = IntParam(name, int(low), int(high), log, int(step))
    if default is None:
        default = p.center()
    else:
        try:
            default = p.validate(default)
        except InvalidCandidateError as e:
            raise ConfigError(f"{where}.default: {e}") from None
    if isinstance(p, FloatParam):
        return FloatParam(p.name, p.low, p.high, p.log, float(default))
    return IntParam(p.name, p.low, p.high, p.log, p.step, int(default))


class SearchSpace:
    """An ordered set of named parameters.

    ``encode`` maps a configuration to a point of the unit cube ``[0, 1]^d`` (d = number of
    params; a categorical takes one coordinate, the centre of its choice's bin);
    ``decode`` maps any point of the cube back to a valid configuration.
    """

    def __init__(self, params: Iterable[Param]):
        self.params: dict[str, Param] = {}
        for p in params:
            if p.name in self.params:
                raise ConfigError(f"space.params.{p.name}: defined twice")
            self.params[p.name] = p
        if not self.params:
            raise ConfigError("space.params: the search space is empty; add at least one parameter")

    @classmethod
    def from_config(cls, params: Mapping[str, Any]) -> SearchSpace:
        if not isinstance(params, Mapping):
            raise ConfigError("space.params: expected a mapping of name -> {type: ..., ...}")
        return cls(_param_from_config(str(name), spec) for name, spec in params.items())

    def __len__(self) -> int:
        return len(self.params)

    def __iter__(self):
        return iter(self.params.values())

    @property
    def names(self) -> list[str]:
        return list(self.params)

    def defaults(self) -> dict[str, Any]:
        """The baseline configuration: every parameter at its default."""
        return {name: p.default for name, p in self.params.items()}

    def contains(self, params: Mapping[str, Any]) -> bool:
        """Whether ``params`` is a valid configuration of this space (``validate`` would accept it)."""
        try:
            self.validate(params)
        except InvalidCandidateError:
            return False
        return True

    def validate(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Check a full configuration; return it normalized (ints as int, floats as float).

        Raises InvalidCandidateError naming the parameter and the bound.
        """
        if not isinstance(params, Mapping):
            raise InvalidCandidateError(f"expected a mapping of parameter values, got {type(params).__name__}")
        unknown = [k for k in params if k not in self.params]
        if unknown:
            raise InvalidCandidateError(f"{unknown[0]}: unknown parameter; known: {', '.join(self.params)}")
        missing = [k for k in self.params if k not in params]
        if missing:
            raise InvalidCandidateError(f"{missing[0]}: missing value")
        return {name: p.validate(params[name]) for name, p in self.params.items()}

    def complete(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Fill parameters not given with their defaults, then validate."""
        return self.validate({**self.defaults(), **params})

    def encode(self, params: Mapping[str, Any]) -> np.ndarray:
        """A (d,) array in [0, 1]."""
        return np.array([p.encode(params[name]) for name, p in self.params.items()], dtype=float)

    def encode_many(self, configs: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """An (n, d) array in [0, 1]."""
        if not configs:
            return np.zeros((0, len(self.params)))
        return np.stack([self.encode(c) for c in configs])

    def decode(self, u: Sequence[float] | np.ndarray) -> dict[str, Any]:
        u = np.asarray(u, dtype=float).reshape(-1)
        if u.shape[0] != len(self.params):
            raise ValueError(f"decode: expected {len(self.params)} coordinates, got {u.shape[0]}")
        return {name: p.decode(x) for (name, p), x in zip(self.params.items(), u, strict=True)}

    def key(self, params: Mapping[str, Any]) -> tuple:
        """A hashable identity for duplicate detection (floats rounded to 10 significant digits)."""
        out = []
        for name, p in self.params.items():
            v = params.get(name)
            if isinstance(p, FloatParam) and v is not None:
                v = float(f"{float(v):.10g}")
            out.append((name, v))
        return tuple(out)

    def describe(self) -> str:
        lines = []
        for p in self:
            if isinstance(p, CategoricalParam):
                lines.append(f"{p.name}: categorical {list(p.choices)} (default {p.default!r})")
            else:
                kind = "float" if isinstance(p, FloatParam) else "int"
                extra = " log" if p.log else ""
                if isinstance(p, IntParam) and p.step != 1:
                    extra += f" step {p.step}"
                lines.append(f"{p.name}: {kind} [{p.low:g}, {p.high:g}]{extra} (default {p.default!r})")
        return "\n".join(lines)
