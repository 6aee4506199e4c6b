"""One assembly of a campaign from its config: what ``hybrid`` runs, and what benchmarks and tests build.

    from hybrid.assemble import assemble, compose
    campaign = assemble(compose(["proposer=sobol", "budget.max_experiments=4", "tracking=none"]))
    summary = campaign.run()   # the campaign `hybrid proposer=sobol budget.max_experiments=4 tracking=none` runs

:func:`compose` is Hydra's composition of conf/ with command-line overrides, turned into typed
objects (:class:`hybrid.config.Config`); :func:`assemble` builds the space, target, budget,
stopping rule, backend, proposer, ranker, tracker and live view from it, and the
:class:`~hybrid.campaign.Campaign` that runs them. Benchmarks and tests may inject a backend or
a tracker; everything else is built as the CLI builds it.

Configs are searched in the current directory's ``conf/`` first, then in the packaged ``conf/``
(see :mod:`hybrid.config`): ``conf/space/mine.yaml`` in your project is ``hybrid space=mine``.
This module is the CLI layer: it imports Hydra; the campaign layer never does.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import types
import typing
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

# Hydra exports no public file source to extend; this one has been at this path since Hydra 1.0
from hydra._internal.core_plugins.file_config_source import FileConfigSource
from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import DictConfig, OmegaConf

from hybrid.config import SCHEMAS, Config, PruningConfig, PruningKind, StoppingKind
from hybrid.errors import ConfigError, reject_unknown_keys

if TYPE_CHECKING:
    from backends.base import Backend
    from hybrid.campaign import Campaign
    from hybrid.progress import Progress
    from hybrid.space import SearchSpace
    from hybrid.tracking import Tracker
    from surrogate.pruning import PruningRule

ROOT = Path(__file__).resolve().parent.parent  # the project root: conf/, examples/, model/
CONF_DIR = ROOT / "conf"
PRIMARY = "config"  # conf/config.yaml: the main config


# ---- where configs are found ----------------------------------------------------------------
def project_conf_dir() -> Path | None:
    """The current directory's ``conf/`` when there is one (and it is not the packaged one)."""
    conf = Path.cwd() / "conf"
    if not conf.is_dir() or conf.resolve() == CONF_DIR.resolve():
        return None
    return conf.resolve()


class ProjectConfigSource(FileConfigSource):
    """A user's ``conf/``: every group file counts, its top-level ``config.yaml`` does not (in a
    project that is another Hydra app's main config, not hybrid's)."""

    @staticmethod
    def scheme() -> str:
        return "hybrid-project"

    def is_config(self, config_path: str) -> bool:
        if self._normalize_file_name(config_path.strip("/")) == f"{PRIMARY}.yaml":
            return False
        return super().is_config(config_path)


class ProjectSearchPath(SearchPathPlugin):
    """Put the project's ``conf/`` before the packaged one, so its files win for the same name."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        conf = project_conf_dir()
        if conf is not None:
            search_path.prepend("hybrid-project", f"{ProjectConfigSource.scheme()}://{conf}")


def register_configs() -> None:
    """The schemas (hybrid.config.SCHEMAS), the ``hybrid_root`` resolver and the project search
    path, for Hydra. Idempotent; called before every composition."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    cs = ConfigStore.instance()
    for name, node in SCHEMAS:
        cs.store(name=name, node=node)
    if not OmegaConf.has_resolver("hybrid_root"):
        OmegaConf.register_new_resolver("hybrid_root", lambda: str(ROOT))
    plugins = Plugins.instance()
    plugins.register(ProjectConfigSource)  # both no-ops when already registered
    plugins.register(ProjectSearchPath)


# ---- composition --------------------------------------------------------------------------------
def compose_node(overrides: Sequence[str] = (), config_dir: str | Path | None = None) -> DictConfig:
    """The composed (untyped, unresolved) config ``hybrid <overrides>`` starts from, without
    Hydra's own section. Errors are one-line ConfigErrors."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_configs()
    if GlobalHydra.instance().is_initialized():  # e.g. a caller's own Hydra app: compose apart from it
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base=None, config_dir=str(Path(config_dir or CONF_DIR).resolve())):
            return hydra_compose(config_name=PRIMARY, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException, yaml.YAMLError) as err:
        raise ConfigError(hydra_message(err)) from err


def _reject_unknown_keys(node: DictConfig, where: str = "") -> None:
    """Keys a schema does not have, anywhere in the typed sections. Hydra's ``+key=value`` adds
    them past its struct check and ``OmegaConf.to_object`` would drop them without a word (a
    misspelled ``+budget.max_experimnets=1`` silently ignored). Free-form mappings (target.env,
    space.params, backend.resources...) are not typed, so any key stays allowed there."""
    schema = OmegaConf.get_type(node)
    if not (dataclasses.is_dataclass(schema) and isinstance(schema, type)):
        return
    fields = [f.name for f in dataclasses.fields(schema)]
    reject_unknown_keys(where, list(node.keys()), fields)
    for key in fields:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            _reject_unknown_keys(child, f"{where}.{key}" if where else key)


def to_config(node: DictConfig) -> Config:
    """The composed config as typed objects (``OmegaConf.to_object``): values resolved, enums
    converted, and the checks of the schemas' ``__post_init__`` done."""
    from omegaconf.errors import OmegaConfBaseException

    missing = sorted(OmegaConf.missing_keys(node))
    if missing:
        raise ConfigError(f"{missing[0]}: missing; set it, e.g. {missing[0]}=...")
    _reject_unknown_keys(node)
    try:
        cfg = OmegaConf.to_object(node)
    except OmegaConfBaseException as err:
        raise ConfigError(hydra_message(err)) from err
    if not isinstance(cfg, Config):
        raise ConfigError(f"{PRIMARY}.yaml: its defaults list must start with config_schema")
    return cfg


def compose(overrides: Sequence[str] = (), config_dir: str | Path | None = None) -> Config:
    """The typed config ``hybrid <overrides>`` runs with (conf/ of ``config_dir``, default the
    packaged one, after the current directory's conf/)."""
    return to_config(compose_node(overrides, config_dir))


def plain(value: Any) -> Any:
    """Typed config (or any part of it) as plain JSON-ready data: what the store and the tracker
    record as the campaign's config."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def campaign_dir_for(cfg: Config, name: str) -> Path:
    """``campaign.dir``, absolute; a campaign renamed (a multirun job) goes next to it, under its name."""
    directory = Path(cfg.campaign.dir)
    if name != cfg.campaign.name:
        directory = directory.parent / name
    return directory.resolve()


def check_campaign_dir(directory: Path) -> None:
    """``campaign.dir`` can become a directory this process writes in: not a file, not under a
    file, writable (as root, permissions do not apply). Read-only: nothing is created here."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"campaign.dir: {directory} is a file, not a directory; choose another campaign.dir "
                          "(or campaign.name)")
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"campaign.dir: {directory}: {existing} is a file, not a directory; choose another "
                          "campaign.dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"campaign.dir: {directory}: {existing} is not writable by this user; choose another "
                          "campaign.dir, or make it writable")


_INSTANTIATE_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


def _check_options(group: str, options: Any, given_by_campaign: Sequence[str]) -> None:
    """A proposer's or surrogate's options are its constructor's parameters (their YAML files
    explain them; no schema types them): a key it does not take is a ConfigError naming the ones
    it does, not a TypeError from its constructor."""
    from hydra.utils import get_object

    if not isinstance(options, dict) or not isinstance(options.get("_target_"), str):
        return
    try:
        signature = inspect.signature(get_object(options["_target_"]))
    except (ImportError, AttributeError, TypeError, ValueError):
        return  # instantiate names a target that cannot be built, as it always did
    params = signature.parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    allowed = [p.name for p in params if p.name not in given_by_campaign and p.kind is not p.VAR_POSITIONAL]
    reject_unknown_keys(group, [k for k in options if k not in _INSTANTIATE_KEYS], allowed)


def _part_name(part: Any) -> Any:
    return part.get("name") if isinstance(part, dict) else getattr(part, "name", None)


# ---- assembly -------------------------------------------------------------------------------------
def assemble(
    cfg: Config | DictConfig,
    *,
    name: str | None = None,
    campaign_dir: Path | None = None,
    backend: Backend | None = None,
    tracker: Tracker | None = None,
    progress: Progress | None = None,
) -> Campaign:
    """Build every part of the campaign ``cfg`` describes, checking the whole config first.

    ``name``/``campaign_dir``: another name (and its directory; default next to ``campaign.dir``)
    than ``campaign.name``, as a multirun job has. ``backend``/``tracker``/``progress``: use these
    instead of building them from ``cfg.backend``/``cfg.tracking``/``cfg.campaign.progress`` (an
    in-process backend for a simulated objective, a recording tracker); nothing else differs.
    """
    from hydra.utils import instantiate

    from hybrid.campaign import Campaign
    from hybrid.progress import Progress
    from hybrid.space import SearchSpace
    from hybrid.stopping import Budget, CostAwareStop
    from hybrid.targets import TargetSpec
    from hybrid.tracking import make_tracker

    if isinstance(cfg, DictConfig):
        cfg = to_config(cfg)
    camp = cfg.campaign
    space = SearchSpace.from_config(cfg.space.params)
    target = TargetSpec.from_config(plain(cfg.target))  # it reads a mapping
    budget = Budget.from_config(cfg.budget)
    cost_stop = None
    if cfg.stopping.name is StoppingKind.cost_aware:
        cost_stop = CostAwareStop.from_config(cfg.stopping)  # (its values are checked with any surrogate)
        if _part_name(cfg.surrogate) != "gp":  # the rule reads the GP's decisions: without one, the caps only
            cost_stop = None
    name = name or camp.name
    campaign_dir = Path(campaign_dir).resolve() if campaign_dir is not None else campaign_dir_for(cfg, name)
    check_campaign_dir(campaign_dir)
    _check_options("proposer", cfg.proposer, ("space", "objective", "seed"))
    _check_options("surrogate", cfg.surrogate, ("space", "objective", "seed", "target_hardware", "validate_top_k"))
    if backend is None:
        backend = instantiate(cfg.backend)
    # _partial_: runtime objects (space, objective) are passed as they are, not turned into config
    proposer = instantiate(cfg.proposer, _partial_=True)(space=space, objective=target.objective, seed=camp.seed)
    ranker = instantiate(cfg.surrogate, _partial_=True)(space=space, objective=target.objective, seed=camp.seed,
                                                        target_hardware=camp.target_hardware,
                                                        validate_top_k=camp.validate_top_k)
    if tracker is None:
        tracker = make_tracker(plain(cfg.tracking))  # it reads a mapping
    return Campaign(
        pruning=pruning_rule(cfg.pruning, space), follow_interval_s=camp.follow_interval_s,
        replicates=camp.replicates, confirm_top_k=camp.confirm_top_k,
        name=name, dir=campaign_dir, space=space, target=target, backend=backend, proposer=proposer,
        ranker=ranker, budget=budget, tracker=tracker, mode=camp.mode, poll_interval_s=camp.poll_interval_s,
        max_failure_rate=camp.max_failure_rate, on_interrupt=camp.on_interrupt,
        progress=progress or Progress(camp.progress), config=plain(cfg), target_hardware=camp.target_hardware,
        cost_stop=cost_stop, prefetch_pool=camp.prefetch_pool, warm_start=list(camp.warm_start),
        findings=camp.findings,
    )


def pruning_rule(cfg: PruningConfig | None, space: SearchSpace) -> PruningRule | None:
    """The rule of ``pruning=curve`` (its values checked here: ConfigError names the field), or None."""
    from surrogate.pruning import PruningRule

    if cfg is None or cfg.name is PruningKind.none:
        return None
    return PruningRule(grace=cfg.grace, confidence=cfg.confidence, min_finished=cfg.min_finished,
                       min_rank_correlation=cfg.min_rank_correlation, signal=cfg.signal, space=space)


# ---- errors ------------------------------------------------------------------------------------------
_KINDS = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string"}


def hydra_message(err: BaseException) -> str:
    """A Hydra/OmegaConf error as one actionable line, ``<key>: <what is wrong>``."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        group, _, option = str(err.missing_cfg_file).rpartition("/")
        options = ", ".join(sorted(err.options or []))
        if group:
            return (f"{group}={option}: no such option; available: {options or 'none'} "
                    f"(or add conf/{group}/{option}.yaml to the current directory)")
    mark = _yaml_error(err)
    if mark is not None:
        return mark
    text = str(err)
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        return _no_such_field(m.group(1))
    cause: BaseException | None = err
    while cause is not None:  # a bad value: OmegaConf's error names the key and the value
        key, msg = getattr(cause, "full_key", None), getattr(cause, "msg", None)
        if isinstance(cause, OmegaConfBaseException) and key and msg:
            return f"{key}: {_value_message(str(msg).strip().splitlines()[0])}"
        cause = cause.__cause__
    m = re.search(r"full_key: (\S+)", text)
    if m:
        return f"{m.group(1)}: {text.strip().splitlines()[0]}"
    return text


def _yaml_error(err: BaseException) -> str | None:
    """A YAML file that does not parse: its name, the line and column, and what the parser
    expected (instead of the parser's traceback through Hydra)."""
    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, yaml.MarkedYAMLError):
        cause = cause.__cause__ or cause.__context__
    if cause is None or cause.problem_mark is None:
        return None
    mark = cause.problem_mark
    where, cwd = Path(mark.name).resolve(), Path.cwd().resolve()
    if where.is_relative_to(cwd):  # else (the packaged conf/): the full path
        where = where.relative_to(cwd)
    context = ""
    if cause.context and cause.context_mark is not None:
        context = f" (in the {cause.context.removeprefix('while parsing ').removeprefix('a ')} of line " \
                  f"{cause.context_mark.line + 1})"
    return (f"{where.as_posix()}: line {mark.line + 1}, column {mark.column + 1}: YAML syntax error: "
            f"{cause.problem}{context}; fix the file")


def _no_such_field(key: str) -> str:
    """``key=value`` where no such key exists. Under a schema (campaign.*, budget.*...) the
    message names the keys there are; under a free-form mapping (target.env, space.params) a new
    key is added with ``+``."""
    schema: Any = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not (dataclasses.is_dataclass(schema) and isinstance(schema, type)):
            break
        hints = typing.get_type_hints(schema)
        if part not in hints:
            try:
                reject_unknown_keys(".".join(parts[:i]), [part], [f.name for f in dataclasses.fields(schema)])
            except ConfigError as err:
                return str(err)
        hint = hints[part]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # X | None
            hint = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        schema = hint
    return f"{key}: no such config field; check the spelling, or add a new key with +{key}=..."


def _value_message(msg: str) -> str:
    """OmegaConf's wording of a wrong value, in the house style (the value, then what is allowed)."""
    m = re.fullmatch(r"Invalid value '(.*)', expected one of \[(.*)\]", msg)
    if m:  # an enum
        return f"{m.group(1)!r} is not one of {m.group(2)}"
    m = re.fullmatch(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", msg)
    if m:
        return f"expected {_KINDS.get(m.group(2), m.group(2).lower())}, got {m.group(1)!r}"
    m = re.fullmatch(r"Value '(.*)' of type '(\w+)' is incompatible with type hint '(.*)'", msg)
    if m:
        return f"{m.group(1)!r} ({m.group(2)}) is not a {m.group(3)}"
    return msg

