from __future__ import annotations

import math

import numpy as np
import pytest

from hybrid.errors import ConfigError, InvalidCandidateError
from hybrid.space import CategoricalParam, FloatParam, IntParam, SearchSpace

SPEC = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True, "default": 0.01},
    "wd": {"type": "float", "low": 0.0, "high": 0.3},
    "depth": {"type": "int", "low": 2, "high": 16, "step": 2, "default": 8},
    "batch": {"type": "int", "low": 8, "high": 512, "log": True},
    "window": {"type": "categorical", "choices": ["L", "SL", "SSSL"], "default": "SSSL"},
}


@pytest.fixture
def space() -> SearchSpace:
    return SearchSpace.from_config(SPEC)


def test_defaults_are_the_baseline(space):
    d = space.defaults()
    assert d["lr"] == 0.01 and d["depth"] == 8 and d["window"] == "SSSL"
    assert d["wd"] == pytest.approx(0.15)  # no default: centre of the range
    assert d["batch"] == 64  # log centre of [8, 512]
    assert space.validate(d) == d


def test_encode_decode_roundtrip(space):
    rng = np.random.default_rng(0)
    for _ in range(200):
        cfg = space.decode(rng.random(len(space)))
        space.validate(cfg)
        u = space.encode(cfg)
        assert np.all((u >= 0) & (u <= 1))
        back = space.decode(u)
        assert back["depth"] == cfg["depth"] and back["batch"] == cfg["batch"] and back["window"] == cfg["window"]
        assert math.isclose(back["lr"], cfg["lr"], rel_tol=1e-9)


def test_decode_covers_every_choice_and_bound(space):
    assert space.decode([0, 0, 0, 0, 0]) == {"lr": pytest.approx(1e-4), "wd": 0.0, "depth": 2, "batch": 8, "window": "L"}
    top = space.decode([1, 1, 1, 1, 1])
    assert top["depth"] == 16 and top["batch"] == 512 and top["window"] == "SSSL"
    assert {space.decode([0.5, 0.5, 0.5, 0.5, u])["window"] for u in np.linspace(0, 1, 30)} == {"L", "SL", "SSSL"}


def test_log_encoding_is_logarithmic(space):
    p = space.params["lr"]
    assert p.encode(1e-4) == pytest.approx(0) and p.encode(1e-1) == pytest.approx(1)
    assert p.encode(math.sqrt(1e-4 * 1e-1)) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"lr": 0.5}, "lr: 0.5 is outside [0.0001, 0.1]"),
        ({"depth": 3}, "depth: 3 is not on the grid low=2 step=2"),
        ({"depth": 18}, "depth: 18 is outside [2, 16]"),
        ({"depth": 4.5}, "depth: expected an integer"),
        ({"lr": "fast"}, "lr: expected a float"),
        ({"lr": True}, "lr: expected a float"),
        ({"window": "XL"}, "window: 'XL' is not one of"),
        ({"lr": float("nan")}, "lr: nan is not a finite number"),
        ({"momentum": 0.9}, "momentum: unknown parameter"),
    ],
)
def test_validate_names_param_and_bound(space, params, message):
    with pytest.raises(InvalidCandidateError, match=message.replace("[", r"\[").replace("]", r"\]")):
        space.complete(params)


def test_validate_normalizes_types(space):
    cfg = space.complete({"depth": 4.0, "wd": 0})
    assert isinstance(cfg["depth"], int) and cfg["depth"] == 4
    assert isinstance(cfg["wd"], float)


def test_missing_value_is_an_error(space):
    d = space.defaults()
    del d["wd"]
    with pytest.raises(InvalidCandidateError, match="wd: missing value"):
        space.validate(d)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "float", "low": 0.5, "high": 0.1}, r"space.params.x: low \(0.5\) must be < high \(0.1\)"),
        ({"type": "float", "low": 0, "high": 1, "log": True}, "space.params.x: log scale needs low > 0"),
        ({"type": "double", "low": 0, "high": 1}, "space.params.x.type: 'double' is not one of"),
        ({"type": "float", "high": 1}, "space.params.x.low: required"),
        ({"type": "float", "low": "a", "high": 1}, "space.params.x.low: expected a number"),
        ({"type": "int", "low": 0, "high": 5, "step": 2}, r"must be a multiple of step \(2\)"),
        ({"type": "int", "low": 0.5, "high": 5}, "needs integer bounds"),
        ({"type": "categorical", "choices": []}, "space.params.x.choices: give a non-empty list"),
        ({"type": "categorical", "choices": "abc"}, "space.params.x.choices: give a non-empty list"),
        ({"type": "float", "low": 0, "high": 1, "default": 2}, "space.params.x.default: x: 2 is outside"),
        ({"type": "float", "low": 0, "high": 1, "choices": [1]}, r"space.params.x: unknown field\(s\) \['choices'\]"),
        # inf/nan pass every comparison, then overflow the encoding; bool("maybe") is True
        ({"type": "float", "low": 0, "high": math.inf}, r"^space.params.x.high: expected a finite number, got inf$"),
        ({"type": "float", "low": math.nan, "high": 1}, r"^space.params.x.low: expected a finite number, got nan$"),
        ({"type": "int", "low": -math.inf, "high": 4}, r"^space.params.x.low: expected a finite number, got -inf$"),
        ({"type": "float", "low": 0.1, "high": 1, "log": "maybe"}, r"^space.params.x.log: expected true or false, "
                                                                   r"got 'maybe'$"),
        ({"type": "int", "low": 1, "high": 8, "log": 1}, r"^space.params.x.log: expected true or false, got 1$"),
    ],
)
def test_bad_space_definitions(spec, message):
    with pytest.raises(ConfigError, match=message):
        SearchSpace.from_config({"x": spec})


def test_log_may_be_left_out_or_null():
    space = SearchSpace.from_config({"x": {"type": "float", "low": 0.1, "high": 1, "log": None},
                                     "y": {"type": "float", "low": 0.1, "high": 1}})
    assert not space.params["x"].log and not space.params["y"].log


def test_empty_space_is_an_error():
    with pytest.raises(ConfigError, match=r"space.params: the search space is empty"):
        SearchSpace.from_config({})


def test_key_identifies_duplicates(space):
    a = space.defaults()
    b = dict(a, lr=a["lr"] * (1 + 1e-13))
    assert space.key(a) == space.key(b)
    assert space.key(a) != space.key(dict(a, depth=10))


def test_param_types():
    s = SearchSpace.from_config(SPEC)
    assert isinstance(s.params["lr"], FloatParam)
    assert isinstance(s.params["depth"], IntParam)
    assert isinstance(s.params["window"], CategoricalParam)
    assert "lr: float [0.0001, 0.1] log" in s.describe()
