"""Per-class decisions tuned on out-of-fold predictions, in one small file that travels with the weights.

``tools/evaluate.py`` tunes the per-class thresholds (and, with several sources, the per-class source
weights of the fusion) jointly on the out-of-fold candidates of every fold, and writes them as
``REPORT/thresholds.json``. Prediction (``--thresholds-from``), full-data training, the Kaggle pack
and the notebook read it back, so a model trained on every run uses thresholds chosen on held-out
tomograms instead of a default.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import czii_kit
from czii_kit.errors import ConfigError
from czii_kit.particles import CZII
from czii_kit.utils.atomic import write_text_atomic

TUNING_FILE = "thresholds.json"
FORMAT = "czii-kit-thresholds"
DEFAULT_THRESHOLDS = "config defaults"  # what a full-data checkpoint trained without a thresholds file records
INIT_THRESHOLDS = "init checkpoint"  # ... and one that started from a checkpoint (train.init_from): its thresholds


@dataclass
class Tuning:
    thresholds: dict[str, float]
    source_weights: dict[str, dict[str, float]] | None = None  # class -> source -> weight (None: config's fusion)
    classes: list[str] = field(default_factory=lambda: list(CZII.names))
    meta: dict = field(default_factory=dict)  # how it was tuned: folds, runs, score, sources, ...
    path: Path | None = None


def guessed_thresholds(ckpts) -> list[str]:
    """Checkpoints that carry only the config's default thresholds (trained on every run without a thresholds
    file): their thresholds are a guess, and with today's 4x positive weight a costly one (apo-ferritin scores
    below 0.3 everywhere; README, sixth step)."""
    return [str(c["path"]) for c in ckpts if c["validation"].get("thresholds_from") == DEFAULT_THRESHOLDS]


def tuning_path(path: str | Path) -> Path:
    """A thresholds file, or the report folder that holds one."""
    path = Path(path)
    return path / TUNING_FILE if path.is_dir() else path


def save_tuning(tuning: Tuning, path: str | Path) -> Path:
    path = tuning_path(path)
    doc = {"format": FORMAT, "package_version": czii_kit.__version__, "classes": list(tuning.classes),
           "thresholds": tuning.thresholds, "source_weights": tuning.source_weights, **tuning.meta}
    write_text_atomic(path, json.dumps(doc, indent=1, allow_nan=False) + "\n")
    return path


def load_tuning(path: str | Path, classes=CZII.names) -> Tuning:
    """Read and check a thresholds file: right format, the checkpoint's class set, finite numbers."""
    path = tuning_path(path)
    fix = "make it with `czii evaluate --weights weights/EXP --out reports/EXP`"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"thresholds file {path} does not exist; {fix}") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"thresholds file {path} is not readable JSON ({e}); {fix}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a czii-kit thresholds file (no format={FORMAT!r}); {fix}")
    if list(doc.get("classes", [])) != list(classes):
        raise ConfigError(f"{path} was tuned for classes {doc.get('classes')}, but the checkpoints predict "
                          f"{list(classes)}; tune thresholds for these checkpoints ({fix})")
    thresholds = _numbers(doc.get("thresholds"), classes, path, "thresholds")
    weights = doc.get("source_weights")
    if weights is not None:
        if not isinstance(weights, Mapping) or set(weights) - set(classes):
            raise ConfigError(f"{path}: source_weights must map class names to {{source: weight}}")
        weights = {c: {str(s): float(w) for s, w in ws.items()} for c, ws in weights.items()}
    meta = {k: v for k, v in doc.items() if k not in ("format", "classes", "thresholds", "source_weights")}
    return Tuning(thresholds, weights, list(classes), meta, path)


def check_sources(tuning: Tuning, sources) -> None:
    """Source weights must name sources the loaded checkpoints provide."""
    named = {s for ws in (tuning.source_weights or {}).values() for s in ws}
    unknown = sorted(named - set(sources))
    if unknown:
        raise ConfigError(f"{tuning.path} weighs source(s) {unknown}, but the checkpoints given provide only "
                          f"{sorted(sources)}; pass the same kinds of checkpoints the report was made from")


def _numbers(values, classes, path: Path, what: str) -> dict[str, float]:
    if not isinstance(values, Mapping) or sorted(values) != sorted(classes):
        raise ConfigError(f"{path}: {what} must give one number per class ({', '.join(classes)})")
    out = {c: float(values[c]) for c in classes}
    bad = [c for c, v in out.items() if math.isnan(v)]
    if bad:
        raise ConfigError(f"{path}: {what} of {', '.join(bad)} is not a number")
    return out
