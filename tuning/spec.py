"""A sweep file: a base training config, the axes to sweep, and how to run the trials.

    base: tiny.yaml              # a config file (relative to this file) or an inline config
    overrides: {train.max_steps: 20}   # dotted keys applied to the base (optional)
    sweep:
      name: ablation-tiny
      grid: {train.loss: [l1, l2], model.attention: [true, false], data.normalize: [true, false]}
      variants: {l2: {}, cosine: {train.beta_schedule: squaredcos_cap_v2}}   # named configurations (optional)
      seeds: [0, 1, 2]
      ...                        # see SweepSettings

Command-line overrides `sweep.KEY=VALUE` change the sweep section, any other `KEY=VALUE` the base
config. Everything is checked before Ray starts: unknown keys and bad values fail with one line.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from core.config import Config, flatten, load_config, validate
from core.errors import UserError

SEARCHES = ("grid", "random", "asha")
# Distributions a `sweep.space` entry may use: {key: {loguniform: [1e-5, 1e-3]}}.
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "randint")
# Which draw from `sweep.space` a trial uses: a trial parameter and tag, not a config key.
SAMPLE_INDEX = "sample_index"
# Which of `sweep.variants` a trial runs: an axis (a trial parameter and tag) whose values are names.
VARIANT = "variant"


@dataclass
class GenerateSettings:
    per_class: int = 40  # clips per class, as in the study; sampler settings come from the config's `sample`
    classes: list[int] = field(default_factory=list)  # empty = all 50


@dataclass
class EvaluateSettings:
    metrics: list[str] = field(default_factory=lambda: ["fad", "clap", "esc"])
    reference: str = ""  # real clips to compare with; empty = the trial's data.source
    reference_folds: list[int] = field(default_factory=list)
    cache_dir: str = ""  # empty = .cache/evaluation of the folder the sweep starts in
    ceiling: bool = True  # real held-out clips (real_*, once on the parent run) and each trial's two ceilings
    options: dict[str, Any] = field(default_factory=dict)  # passed on to score_generated


@dataclass
class AshaSettings:
    stages: int = 4  # training is cut into this many equal stages, each scored and reported to Tune
    grace_period: int = 1
    reduction_factor: int = 2


@dataclass
class SweepSettings:
    name: str = MISSING
    grid: dict[str, Any] = field(default_factory=dict)  # dotted config key -> list of values
    # name -> {dotted key: value}: configurations that differ in several keys at once, or one axis at a time
    # from a base (a study's "on the best, one change each"); run with every grid point and seed
    variants: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Any] = field(default_factory=dict)  # random/asha: dotted key -> {distribution: args}
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    search: str = "grid"  # grid | random | asha
    num_samples: int = 1  # random/asha: draws from `space`; each runs with every grid point and seed
    sample_seed: int = 0  # random/asha: seeds the draws, so the same sweep file draws the same values
    metric: str = "fd_esc"  # any metric of evaluation.metrics.REGISTRY (real_/repr_ prefixed ones too)
    mode: str = ""  # min | max; "" = the metric's own direction (the registry's)
    max_failures: int = 2  # retries per trial
    max_concurrent_trials: int = 0  # 0 = as many as the cluster fits
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    workers_per_trial: int = 0  # > 1: distributed training with Ray Train; 0 = one per GPU when gpus_per_trial > 1
    storage_path: str = "outputs/sweeps"  # a folder every node sees (shared file system) on a cluster
    generate: GenerateSettings = field(default_factory=GenerateSettings)
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)
    asha: AshaSettings = field(default_factory=AshaSettings)
    baseline: str = ""  # the report's paired differences are from it: "variant=l2" or "loss=l2,attention=True"


@dataclass
class SweepSpec:
    base: dict[str, Any]  # the base config as a plain dict (defaults <- file <- overrides), validated
    settings: SweepSettings
    grid: dict[str, list[Any]]  # flat: "train.loss" -> [l1, l2]
    space: dict[str, dict[str, list[Any]]]
    source: str  # the sweep file, for the record
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # flat: "cosine" -> {key: value}

    @property
    def axes(self) -> list[str]:
        """Keys whose values tell configurations apart (seeds are repeats, not an axis)."""
        return ([VARIANT] if self.variants else []) + list(self.grid) + list(self.space)

    def configurations(self) -> Iterator[dict[str, Any]]:
        """The trial parameters of every variant x grid point (without seed or draws from `space`)."""
        variants = [{VARIANT: name} for name in self.variants] or [{}]
        for variant in variants:
            for values in itertools.product(*self.grid.values()):
                yield {**variant, **dict(zip(self.grid, values))}

    @property
    def stages(self) -> int:
        return self.settings.asha.stages if self.settings.search == "asha" else 1

    @property
    def workers(self) -> int:
        workers = self.settings.workers_per_trial
        if workers == 0:
            workers = int(self.settings.gpus_per_trial) if self.settings.gpus_per_trial > 1 else 1
        return workers

    def trial_count(self) -> int:
        count = len(self.settings.seeds) * self.settings.num_samples * max(1, len(self.variants))
        for values in self.grid.values():
            count *= len(values)
        return count

    def trial_config(self, params: dict[str, Any]) -> Config:
        """The base config with one trial's axis values and seed applied, validated."""
        try:
            values = {key: value for key, value in params.items() if key not in (SAMPLE_INDEX, VARIANT)}
            variant = self.variants[params[VARIANT]] if VARIANT in params else {}
            merged = OmegaConf.merge(OmegaConf.structured(Config), self.base, _nest(variant), _nest(values))
            config: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
        except OmegaConfBaseException as error:
            raise UserError(f"sweep value {params} does not fit the config: {str(error).splitlines()[0]}") from None
        validate(config)
        return config


def trial_key(params: dict[str, Any]) -> str:
    """A stable name for one trial (its axis values and seed): the same after retries and resumes.

    Readable first (`loss=l1,attention=True,...,seed=0`), then a hash so long values stay unique.
    """
    canonical = json.dumps(params, sort_keys=True, default=str)
    readable = ",".join(f"{key.rsplit('.', 1)[-1]}={params[key]}" for key in sorted(params, key=_seed_last))
    safe = "".join(c if c.isalnum() or c in "=,.-_" else "_" for c in readable)[:80]
    return f"{safe}-{hashlib.sha256(canonical.encode()).hexdigest()[:8]}"


def _seed_last(key: str) -> tuple[bool, str]:
    return key == "seed", key


def _dotlist(params: dict[str, Any]) -> list[str]:
    return [f"{key}={json.dumps(value) if not isinstance(value, str) else value}" for key, value in params.items()]


def load_sweep(path: str | os.PathLike, overrides: list[str] | None = None) -> SweepSpec:
    """Read, merge and check a sweep file; every problem is a `UserError` naming the key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep file not found: {path}")
    try:
        document = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except OmegaConfBaseException as error:
        raise UserError(f"cannot read sweep file {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(document, dict):
        raise UserError(f"sweep file {path} must be a mapping with 'base' and 'sweep'")
    unknown = set(document) - {"base", "overrides", "sweep"}
    if unknown:
        raise UserError(f"unknown key '{sorted(unknown)[0]}' in {path} (expected base, overrides, sweep)")
    if "sweep" not in document:
        raise UserError(f"sweep file {path} has no 'sweep' section")

    sweep_overrides, base_overrides = [], []
    for item in overrides or []:
        if "=" not in item or item.startswith("="):
            raise UserError(f"override '{item}' is not of the form key=value")
        (sweep_overrides if item.startswith("sweep.") else base_overrides).append(item)

    base = _load_base(document.get("base"), document.get("overrides") or {}, base_overrides, path)
    raw_sweep = copy.deepcopy(document["sweep"] or {})
    for key in ("grid", "space"):  # YAML may spell axes dotted or nested; compare them nested
        if isinstance(raw_sweep.get(key), dict):
            raw_sweep[key] = _nest(raw_sweep[key])
    if isinstance(raw_sweep.get("variants"), dict):
        variants = raw_sweep["variants"].items()
        raw_sweep["variants"] = {name: _nest(v) if isinstance(v, dict) else v for name, v in variants}
    for item in sweep_overrides:  # one at a time, so that the one that cannot be read is named
        try:
            parsed = OmegaConf.to_container(OmegaConf.from_dotlist([item[len("sweep.") :]]), resolve=True)
        except (yaml.YAMLError, OmegaConfBaseException, TypeError, ValueError) as error:
            shown = item.encode("unicode_escape").decode()
            raise UserError(f"override '{shown}' cannot be read: {str(error).splitlines()[0]}") from None
        raw_sweep = _deep_merge(raw_sweep, parsed)
    settings = _structured_settings(raw_sweep, path)
    grid = _flatten_leaves(settings.grid, "sweep.grid", leaf=lambda v: isinstance(v, list))
    space = _flatten_leaves(settings.space, "sweep.space", leaf=_is_distribution)
    variants = {}
    for name, changes in settings.variants.items():
        if not isinstance(changes, dict):
            raise UserError(f"invalid sweep key 'sweep.variants.{name}': expected {{key: value}}, got {changes!r}")
        variants[str(name)] = _flatten_leaves(changes, f"sweep.variants.{name}", leaf=lambda v: not isinstance(v, dict))
    spec = SweepSpec(base=base, settings=settings, grid=grid, space=space, source=str(path.resolve()),
                     variants=variants)  # fmt: skip
    _check(spec)
    return spec


def _load_base(base: Any, file_overrides: dict, cli_overrides: list[str], path: Path) -> dict[str, Any]:
    if isinstance(file_overrides, dict):
        file_list = _dotlist(dict(_flatten_leaves(file_overrides, "overrides", leaf=lambda v: not isinstance(v, dict))))
    else:
        raise UserError(f"'overrides' in {path} must be a mapping of dotted keys to values")
    if isinstance(base, str):
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        if not base_path.is_file():
            base_path = Path(base)
        config = load_config(base_path, file_list + cli_overrides)
    elif isinstance(base, dict) or base is None:
        with _temporary_yaml({"output_dir": "set-per-trial", **(base or {})}) as inline:
            config = load_config(inline, file_list + cli_overrides)
    else:
        raise UserError(f"'base' in {path} must be a config file path or an inline config")
    return OmegaConf.to_container(OmegaConf.structured(config), resolve=True)  # type: ignore[return-value]


class _temporary_yaml:
    """An inline base config goes through `load_config` like a file, so it is checked the same way."""

    def __init__(self, content: dict):
        self.content = content

    def __enter__(self) -> Path:
        import tempfile

        handle, name = tempfile.mkstemp(suffix=".yaml", prefix="sweep-base-")
        with os.fdopen(handle, "w") as stream:
            stream.write(OmegaConf.to_yaml(OmegaConf.create(self.content)))
        self.path = Path(name)
        return self.path

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def _structured_settings(raw: dict, path: Path) -> SweepSettings:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SweepSettings), raw)
        if OmegaConf.is_missing(merged, "name"):
            raise UserError(f"sweep key 'sweep.name' is required in {path} (or sweep.name=NAME)")
        settings: SweepSettings = OmegaConf.to_object(merged)  # type: ignore[assignment]
        OmegaConf.structured(settings)  # list elements' types are checked only here ([{}] passes to_object)
        return settings
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        raise UserError(f"invalid sweep key 'sweep.{key}' in {path}: {str(error).splitlines()[0]}") from None
    except (TypeError, ValueError) as error:  # OmegaConf names no key for a mapping where a list belongs
        raise UserError(f"invalid sweep key 'sweep.{_misfit_key(raw)}' in {path}: {error}") from None


def _misfit_key(raw: dict) -> str:
    """The (second-level) key of `raw` that does not merge into SweepSettings."""

    def fits(candidate: dict) -> bool:
        try:
            OmegaConf.merge(OmegaConf.structured(SweepSettings), candidate)
            return True
        except (OmegaConfBaseException, TypeError, ValueError):
            return False

    for key, value in raw.items():
        if not fits({key: value}):
            inner = [sub for sub in value if not fits({key: {sub: value[sub]}})] if isinstance(value, dict) else []
            return f"{key}.{inner[0]}" if inner else str(key)
    return "?"


def _nest(mapping: dict) -> dict:
    """{'train.loss': [..]} -> {'train': {'loss': [..]}}; nested input stays nested."""
    nested: dict = {}
    for key, value in mapping.items():
        parts = str(key).split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _nest(value) if isinstance(value, dict) and not _is_distribution(value) else value
    return nested


def _deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and not _is_distribution(value):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _is_distribution(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS


def _flatten_leaves(mapping: dict, where: str, leaf) -> dict[str, Any]:
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if leaf(node):
            flat[prefix] = node
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            expected = "a list of values" if where == "sweep.grid" else "{distribution: [arguments]}"
            raise UserError(f"invalid sweep key '{where}.{prefix}': expected {expected}, got {node!r}")

    walk("", mapping)
    return flat


def _check(spec: SweepSpec) -> None:
    settings = spec.settings
    known = set(flatten(load_config(None, ["output_dir=unused"])))
    places = [("sweep.grid", spec.grid), ("sweep.space", spec.space)]
    places += [(f"sweep.variants.{name}", changes) for name, changes in spec.variants.items()]
    for where, keys in places:
        for key in keys:
            if key not in known:
                raise UserError(f"invalid sweep key '{where}.{key}': '{key}' is not a config key")
            if key in ("seed", "output_dir"):
                raise UserError(
                    f"invalid sweep key '{where}.{key}': use sweep.seeds for seeds; output_dir is per trial"
                )
    for key, values in spec.grid.items():
        if not values:
            raise UserError(f"invalid sweep key 'sweep.grid.{key}': needs at least one value")
    both = set(spec.grid) & set(spec.space)
    if both:
        raise UserError(f"'{sorted(both)[0]}' is in both sweep.grid and sweep.space")
    for name, changes in spec.variants.items():
        _require(bool(re.fullmatch(r"[A-Za-z0-9_.-]+", name)), "variants",
                 f"variant name '{name}' may hold only letters, digits, '_', '.' and '-'")  # fmt: skip
        swept = sorted(set(changes) & (set(spec.grid) | set(spec.space)))
        _require(not swept, f"variants.{name}", f"sets {swept[0] if swept else ''}, which the grid or space sweeps")
    for key, distribution in spec.space.items():
        ((name, arguments),) = distribution.items()
        if not isinstance(arguments, list) or not arguments or (name != "choice" and len(arguments) != 2):
            raise UserError(
                f"invalid sweep key 'sweep.space.{key}': {name} needs [low, high]"
                if name != "choice"
                else f"invalid sweep key 'sweep.space.{key}': choice needs a list of values"
            )
        if name != "choice":
            low, high = arguments
            _require(
                isinstance(low, (int, float)) and isinstance(high, (int, float)) and low < high
                and (name != "loguniform" or low > 0),
                f"space.{key}", f"{name} needs numbers low < high" + (", both > 0" if name == "loguniform" else ""),
            )  # fmt: skip
    _require(settings.search in SEARCHES, "search", f"'{settings.search}' is not one of {', '.join(SEARCHES)}")
    _check_metric(settings)
    _require(bool(settings.seeds), "seeds", "needs at least one seed")
    _require(len(set(settings.seeds)) == len(settings.seeds), "seeds", "has repeated seeds")
    _require(settings.num_samples >= 1, "num_samples", "must be >= 1")
    _require(settings.max_failures >= 0, "max_failures", "must be >= 0")
    _require(settings.cpus_per_trial > 0, "cpus_per_trial", "must be positive")
    _require(settings.gpus_per_trial >= 0, "gpus_per_trial", "must be >= 0")
    _require(settings.workers_per_trial >= 0, "workers_per_trial", "must be >= 0")
    _require(settings.generate.per_class >= 1, "generate.per_class", "must be >= 1")
    _require(all(c >= 0 for c in settings.generate.classes), "generate.classes", "class ids are >= 0")
    _require(bool(settings.evaluate.metrics), "evaluate.metrics", "needs at least one metric")
    _require(settings.asha.stages >= 1, "asha.stages", "must be >= 1")
    if spec.space and settings.search == "grid":
        raise UserError("sweep.space needs sweep.search=random or asha (grid search only expands sweep.grid)")
    if settings.search == "asha":
        max_steps = spec.base["train"]["max_steps"]
        _require(max_steps >= settings.asha.stages, "asha.stages", f"is more than train.max_steps ({max_steps})")
    # Every combination must make a valid config: a bad value fails now, not in trial 37.
    for params in itertools.islice(spec.configurations(), 10000):
        params["seed"] = settings.seeds[0]
        try:
            spec.trial_config(params)
        except UserError as error:
            where = "sweep variant and grid combination" if VARIANT in params else "sweep.grid combination"
            raise UserError(f"{where} {params}: {error}") from None
    _check_baseline(spec)


def _check_baseline(spec: SweepSpec) -> None:
    """`sweep.baseline` names one configuration: axis=value pairs (an axis by its last part) the sweep has."""
    if not spec.settings.baseline:
        return
    named: set[str] = set()
    for item in spec.settings.baseline.split(","):
        key, _, value = (part.strip() for part in item.partition("="))
        axes = [axis for axis in spec.axes if key in (axis, axis.rsplit(".", 1)[-1])]
        _require(bool(axes and value), "baseline", f"'{item}' is not axis=value (axes: {', '.join(spec.axes)})")
        values = list(spec.variants) if axes[0] == VARIANT else spec.grid.get(axes[0])
        if values is not None:
            _require(value.lower() in {str(v).lower() for v in values}, "baseline", f"{key} has no value '{value}'")
        named.add(axes[0])
    # One configuration, not several: a difference from "variant=b" of a grid would be from any of its points.
    unnamed = [axis for axis in spec.axes if axis not in named and len(_values(spec, axis)) > 1]
    _require(not unnamed, "baseline", f"matches several configurations: name {', '.join(unnamed)} too")


def _values(spec: SweepSpec, axis: str) -> list:
    if axis == VARIANT:
        return list(spec.variants)
    return list(spec.grid.get(axis, [None, None]))  # a `space` axis: drawn, never one value


def _check_metric(settings: SweepSettings) -> None:
    """`metric` is one evaluation logs with the sweep's metric groups; `mode` follows it (the registry's direction)."""
    from evaluation.metrics import REGISTRY, find_metric

    metric = find_metric(settings.metric)
    _require(
        metric is not None, "metric", f"'{settings.metric}' is not a metric evaluation logs ({', '.join(REGISTRY)})"
    )
    _require(
        metric.group in settings.evaluate.metrics,
        "metric",
        f"{settings.metric} is computed by the '{metric.group}' metrics, which sweep.evaluate.metrics leaves out",
    )
    settings.mode = settings.mode or metric.mode
    _require(settings.mode in ("min", "max"), "mode", f"'{settings.mode}' is not min or max")
    _require(
        settings.mode == metric.mode,
        "mode",
        f"{settings.metric} is better when {'lower' if metric.lower_is_better else 'higher'}, so its mode is "
        f"{metric.mode}, not {settings.mode}",
    )


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise UserError(f"invalid sweep key 'sweep.{key}': {message}")
