"""YAML configs: one documented base, thin variants, dotted command-line overrides.

A variant names its parent with ``_base_: base.yaml`` and lists only what differs.
Every key must exist in ``configs/base.yaml`` (typos are errors, with a suggestion),
except the free-form plug-in arguments under ``*.args``. The fully resolved config
is saved next to every checkpoint, so a checkpoint never depends on configs/ again.
"""
from __future__ import annotations

import copy
import difflib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import yaml

from czii_kit.errors import ConfigError
from czii_kit.particles import CZII, ParticleSet
from czii_kit.utils.atomic import write_text_atomic

FREE_FORM = ("args",)  # plug-in arguments: validated by the plug-in itself
CLASSES = "classes"  # keyed by class name (any names: the particle set comes from the data), checked by validate
CLASS_KEYS = ("threshold", "loss_weight", "sample_weight", "radius", "weight")  # radius (Å), weight: the metric's
# infer.engine's values (czii_kit.infer.engines runs them); here, so that the command line lists them without torch
ENGINE_KINDS = (
    "torch",  # the checkpoint's model in torch (fp16 autocast on CUDA)
    "onnx",  # the fp32 ONNX graph in onnxruntime
    "onnx_fp16",  # the fp16 graph TensorRT builds from, in onnxruntime: the GPU's precision, scored on any machine
    "tensorrt",  # a TensorRT engine built from the fp16 graph (CUDA only)
)
# Keys whose value may also be a per-class mapping {class name: value} (czii_kit.post.peaks.class_value reads them).
PER_CLASS = ("peaks.kernel_frac", "post.dbscan.eps_frac", "post.dbscan.min_samples", "yolo.cluster.link_frac",
             "yolo.cluster.max_gap", "yolo.cluster.min_size", "yolo.cluster.topk")


class YamlLoader(yaml.SafeLoader):
    """YAML as people write configs: 1e-3 and 3E+2 are numbers (YAML 1.1 reads a float without a dot as text)."""


YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
    r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
    r"|\.(?:inf|Inf|INF))$|^\.(?:nan|NaN|NAN)$"), list("-+0123456789."))


def load_yaml(text: str):
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 -- a SafeLoader subclass


MAX_OVERLAP = 0.95  # infer.overlap above it makes the window's step a voxel or less
# Bounds (inclusive; None: open) of numbers that would otherwise fail deep inside a run, or quietly do nothing.
LIMITS = {
    "train.epochs": (1, None), "train.batch_size": (1, None), "train.samples_per_epoch": (1, None),
    "train.num_workers": (0, None), "train.world_size": (1, None), "train.freeze_encoder_epochs": (0, None),
    "train.time_limit_min": (0.0, None), "train.lr": (0.0, None), "train.warmup_epochs": (0, None),
    "peaks.kernel_frac": (0.0, None), "class_defaults.threshold": (0.0, 1.0),
    "validate.every": (1, None), "normalize.subsample": (1, None), "targets.stride": (1, None),
    "infer.batch_size": (1, None), "infer.overlap": (0.0, MAX_OVERLAP),
}


def config_dir() -> Path:
    """configs/ of the checkout (override with $CZII_CONFIG_DIR)."""
    env = os.environ.get("CZII_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "configs"


def resolve_config_path(name: str | os.PathLike) -> Path:
    """Accept a path, or a bare name like ``cpu_quick`` looked up in configs/."""
    p = Path(name)
    if p.is_file():
        return p
    for cand in (config_dir() / p, config_dir() / f"{p}.yaml"):
        if cand.is_file():
            return cand
    have = ", ".join(sorted(q.stem for q in config_dir().glob("*.yaml")))
    raise ConfigError(f"config {name!r} not found (looked in . and {config_dir()}); available: {have}")


def _read_yaml(path: Path) -> dict:
    try:
        doc = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} must hold a mapping of keys at the top level")
    return doc


def deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in FREE_FORM:
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _load_chain(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config {path} includes itself through _base_")
    doc = _read_yaml(path)
    parent = doc.pop("_base_", None)
    if parent is None:
        return doc
    if not (path.parent / parent).is_file():
        raise ConfigError(f"config {path} names _base_: {parent}, which is not a file next to it; fix the name "
                          "(variants in configs/ use _base_: base.yaml)")
    return deep_merge(_load_chain((path.parent / parent), seen + (path,)), doc)


def check_keys(cfg: dict, schema: dict, where: str = "") -> None:
    """Every key of cfg must appear in schema (the base config), recursively (class entries: see validate)."""
    for k, v in cfg.items():
        dotted = f"{where}{k}"
        if dotted == CLASSES:
            continue
        if k not in schema:
            hint = difflib.get_close_matches(str(k), [str(s) for s in schema], n=1)
            tip = f"; did you mean '{where}{hint[0]}'?" if hint else f"; valid keys here: {', '.join(map(str, schema))}"
            raise ConfigError(f"unknown config key {dotted!r}{tip}")
        if isinstance(v, dict) and isinstance(schema[k], dict) and k not in FREE_FORM:
            check_keys(v, schema[k], dotted + ".")


def _kind(default) -> tuple[str, tuple[type, ...]] | None:
    """What a key whose base.yaml value is ``default`` accepts: (words for messages, types); None: anything."""
    if default is None:
        return None
    if isinstance(default, bool):
        return "true or false", (bool,)
    if isinstance(default, int):
        return "an integer", (int,)
    if isinstance(default, float):
        return "a number", (int, float)
    if isinstance(default, str):
        return "a string", (str,)
    if isinstance(default, list):
        return "a list", (list,)
    if isinstance(default, dict):
        return "a mapping", (dict,)
    return None


def _matches(value, types: tuple[type, ...]) -> bool:
    """isinstance, except that true/false is only a bool (Python counts it as an int)."""
    return isinstance(value, types) and isinstance(value, bool) == (types == (bool,))


def check_value(dotted: str, value, default) -> None:
    """``value`` for key ``dotted`` has the type of its default (ints stay ints, lists keep their items' type; a
    PER_CLASS key may map class names to such values) and, for a key with LIMITS, is a finite number within them:
    a wrong value fails as the config loads, not in the middle of a run."""
    if dotted in PER_CLASS and isinstance(value, dict):
        for each in value.values():
            check_value(dotted, each, default)
        return
    kind = _kind(default)
    item_kind = _kind(default[0]) if isinstance(default, list) and default else None
    bad_type = kind and not _matches(value, kind[1])
    bad_items = not bad_type and item_kind and not all(_matches(v, item_kind[1]) for v in value)
    if bad_type or bad_items:
        what = f"a list of {item_kind[0].removeprefix('an ').removeprefix('a ')}s" if item_kind else kind[0]
        raise ConfigError(f"config {dotted} must be {what}, got {value!r} (like its default: --set {dotted}="
                          f"{json.dumps(default, separators=(',', ':'))})")
    if dotted not in LIMITS or (value is None and default is None):
        return
    low, high = LIMITS[dotted]
    bounds = f"in [{low}, {high}]" if high is not None else f"at least {low}"
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"config {dotted} must be a number {bounds}, got {value!r}")


def check_types(cfg: dict, schema: dict, where: str = "") -> None:
    """check_value for every key of cfg that schema (the base config) gives a default (class entries: validate)."""
    for k, v in cfg.items():
        dotted = f"{where}{k}"
        if dotted == CLASSES or k in FREE_FORM or k not in schema:
            continue
        if isinstance(v, dict) and isinstance(schema[k], dict):
            check_types(v, schema[k], dotted + ".")
        else:
            check_value(dotted, v, schema[k])


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value (e.g. train.epochs=5)")
    key, raw = text.split("=", 1)
    try:
        value = load_yaml(raw) if raw != "" else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from e
    return key.strip().split("."), value


def apply_overrides(cfg: dict, overrides: list[str], schema: dict, types: dict | None = None) -> dict:
    """``cfg`` with dotted overrides, each key checked against ``schema`` and each value against the type of its
    default in ``types`` (default: base.yaml; ``schema`` where none is found: an installed kit without configs/)."""
    types = types or base_config() or schema
    cfg = copy.deepcopy(cfg)
    for text in overrides:
        keys, value = parse_override(text)
        node, node_schema = cfg, schema
        for i, k in enumerate(keys[:-1]):
            free = node_schema is None or k in FREE_FORM or (i == 0 and k == CLASSES)
            if not free and k not in node_schema:
                check_keys({k: None}, node_schema, ".".join(keys[:i]) + "." if i else "")
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
            node_schema = None if free or node_schema is None else node_schema.get(k)
        if node_schema is not None and keys[-1] not in node_schema:
            check_keys({keys[-1]: None}, node_schema, ".".join(keys[:-1]) + "." if len(keys) > 1 else "")
        if node_schema is not None:
            default = _default_of(types, keys, node_schema[keys[-1]])
            check_value(".".join(keys), value, default)
            if isinstance(value, dict) and isinstance(default, dict) and keys[-1] not in FREE_FORM:
                check_keys(value, default, ".".join(keys) + ".")  # a whole section replaced: its keys and values
                check_types(value, default, ".".join(keys) + ".")
        node[keys[-1]] = value
    return cfg


def _default_of(types: dict, keys: list[str], fallback):
    node = types
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            return fallback
        node = node[k]
    return node


def base_config() -> dict | None:
    """configs/base.yaml resolved, or None where there is none (an installed kit without configs/)."""
    path = config_dir() / "base.yaml"
    return _load_chain(path) if path.is_file() else None


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple = ()) -> dict:
    """Base config, merged with a variant (if given), then the dotted overrides; validated."""
    base = _load_chain(config_dir() / "base.yaml")
    cfg = _load_chain(resolve_config_path(path)) if path else copy.deepcopy(base)
    check_keys(cfg, base)
    cfg = deep_merge(base, cfg)
    check_types(cfg, base)
    cfg = apply_overrides(cfg, list(overrides), base, types=base)
    validate(cfg)
    return cfg


def with_new_defaults(cfg: dict) -> dict:
    """A resolved config saved by an older czii-kit, with the keys added since at their base.yaml defaults.

    Checkpoints carry their own resolved config; new keys (e.g. infer.fold_ensemble) would be missing
    from old ones. Where no base.yaml can be found (an installed kit without configs/), ``cfg`` is kept.
    """
    base = base_config()
    if base is None:
        return cfg
    base = {k: v for k, v in base.items() if k != CLASSES}  # the class set is the checkpoint's own
    return deep_merge(base, cfg)


def validate(cfg: dict) -> None:
    """The ``classes`` section: a non-empty mapping of class name -> known settings with numbers; a class that
    is not one of the six CZII classes must give its radius (Å)."""
    classes = cfg.get(CLASSES)
    if not isinstance(classes, dict) or not classes:
        raise ConfigError("config 'classes' must map each particle class to its settings (see configs/base.yaml)")
    for name, entry in classes.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"config classes.{name} must be a mapping of {', '.join(CLASS_KEYS)}, got {entry!r}")
        unknown = sorted(set(entry) - set(CLASS_KEYS))
        if unknown:
            raise ConfigError(f"config classes.{name}: unknown key(s) {unknown}; valid: {', '.join(CLASS_KEYS)}")
        for key, value in entry.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"config classes.{name}.{key} must be a number, got {value!r}")
            if key == "threshold" and not 0 <= value <= 1:
                raise ConfigError(f"config classes.{name}.threshold must be a probability in [0, 1], got {value!r}")
        if name not in CZII and "radius" not in entry:
            raise ConfigError(f"config classes.{name}: {name!r} is not a CZII class, so give its radius "
                              f"(classes.{name}.radius, Å)")


def with_particle_set(cfg: dict, particles: ParticleSet) -> dict:
    """``cfg`` whose ``classes`` are exactly ``particles`` (the data's set, in its order): each class keeps its
    configured tunables, takes ``class_defaults`` for the ones it lacks, and records its radius and weight, so the
    resolved config (and every checkpoint) carries the set it was trained on."""
    out = copy.deepcopy(cfg)
    out[CLASSES] = {p.name: {**cfg["class_defaults"], **cfg[CLASSES].get(p.name, {}), "radius": p.radius,
                             "weight": p.weight} for p in particles}
    validate(out)
    return out


def particle_set(cfg: dict) -> ParticleSet:
    """The classes a config's model predicts, in channel order (radius and weight from the config)."""
    try:
        return ParticleSet.from_config(cfg)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"config 'classes': {e}") from None


def class_values(cfg: dict, key: str) -> list:
    """A per-class number from ``classes.<name>.<key>``, in the config's class order."""
    return [entry[key] for entry in cfg[CLASSES].values()]


def class_dict(cfg: dict, key: str) -> dict:
    return {name: entry[key] for name, entry in cfg[CLASSES].items()}


def infer_window(cfg: dict) -> tuple[int, int, int]:
    """The sliding window of a config: ``infer.window``, or the training patch when it is null."""
    return tuple(cfg["infer"]["window"] or cfg["train"]["patch_size"])


def dump_config(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)


def save_config(cfg: dict, path: str | os.PathLike) -> None:
    write_text_atomic(path, dump_config(cfg))


def exact_section(section, keys, what: str) -> dict:
    """A config section that must give exactly ``keys`` (its defaults live in configs/base.yaml only)."""
    from collections.abc import Mapping

    if not isinstance(section, Mapping):
        raise ConfigError(f"{what} must be a mapping with keys {', '.join(keys)}, got {section!r}")
    unknown = sorted(set(section) - set(keys))
    missing = [k for k in keys if k not in section]
    if unknown or missing:
        raise ConfigError(f"{what}: unknown key(s) {unknown}, missing key(s) {missing}; "
                          f"it needs exactly {', '.join(keys)} (see configs/base.yaml)")
    return dict(section)


def dataclass_from_mapping(cls, mapping, what: str):
    """A config section as a dataclass: missing keys take the defaults, unknown keys are errors."""
    from collections.abc import Mapping
    from dataclasses import fields

    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{what} config must be a mapping, got {type(mapping).__name__}")
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown {what} config key(s) {unknown}; allowed keys: {', '.join(allowed)}")
    return cls(**mapping)
