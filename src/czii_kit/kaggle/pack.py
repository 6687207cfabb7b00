"""Pack checkpoints and czii-kit itself into a Kaggle dataset folder (read back on Kaggle by ``runtime``).

Kaggle code-competition notebooks run with the internet off, so everything the notebook needs
travels in one dataset, uploaded with ``kaggle datasets create -p PACK --dir-mode zip``:

    PACK/dataset-metadata.json   what the kaggle CLI reads: title, id USER/SLUG, license
    PACK/manifest.json           every file with size and sha256, class order, per-checkpoint fold/score/thresholds
    PACK/EXP/fold{K}.pt          checkpoints, one folder per experiment, with its config.yaml (+ ONNX with --onnx)
    PACK/configs/*.yaml          the configs: an installed czii-kit has no checkout to read base.yaml from
    PACK/wheels/*.whl            czii-kit built from this checkout, plus the optional dependency wheelhouse
    PACK/preflight.py            standard-library check, run before ``pip install``, that this image can install them

The manifest's ``environment`` records what the wheels are for (the Kaggle image's Python, platform
tags and CUDA: --kaggle-python, --kaggle-platform, --kaggle-cuda), every packed wheel's tags, and the
distributions the notebook imports that Kaggle's image lacks; preflight.py checks them on Kaggle.

The file table and manifest are ``manifest``'s, the wheels ``wheels``'; the notebook reads a pack with
``runtime``. A pack is built in a temp folder next to ``out`` and renamed into place at the end, so a failed
or refused pack leaves nothing behind. Credentials are never read: the Kaggle user comes from
--user or $KAGGLE_USERNAME, else a placeholder to edit.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from czii_kit.errors import CheckpointError, ConfigError, DataError
from czii_kit.kaggle import preflight
from czii_kit.kaggle.manifest import (CONFIGS, DATASET_METADATA, MANIFEST, PREFLIGHT, file_table, load_manifest,
                                      make_manifest, pack_files, write_json)
from czii_kit.kaggle.preflight import WHEELS
from czii_kit.kaggle.wheels import (KaggleTarget, build_project_wheel, check_ultralytics, copy_wheelhouse,
                                    environment_record, find_wheelhouse)
from czii_kit.utils.atomic import check_output_folder

PLACEHOLDER_USER = "your-kaggle-username"
LICENSE = "CC0-1.0"
NAME_LENGTHS = range(6, 51)  # Kaggle: dataset slug and title are 6-50 characters
SLUG_PATTERN = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
USER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


# --------------------------------------------------------------------------- names
def check_slug(slug: str) -> str:
    if len(slug) not in NAME_LENGTHS or not SLUG_PATTERN.fullmatch(slug):
        raise ConfigError(f"--slug {slug!r}: a Kaggle dataset slug is 6-50 lowercase letters, digits and single "
                          "hyphens, e.g. czii-kit-weights")
    return slug


def check_title(title: str) -> str:
    if len(title.strip()) not in NAME_LENGTHS:
        raise ConfigError(f"--title {title!r} has {len(title.strip())} characters; Kaggle needs 6-50")
    return title.strip()


def check_user(user: str) -> str:
    if not USER_PATTERN.fullmatch(user):
        raise ConfigError(f"--user {user!r} is not a Kaggle username (letters, digits, - and _)")
    return user


def default_user() -> str:
    """$KAGGLE_USERNAME, else a placeholder to replace in dataset-metadata.json (kaggle.json is never read)."""
    return os.environ.get("KAGGLE_USERNAME") or PLACEHOLDER_USER


def kaggle_cli_advice(version: str | None) -> str | None:
    """A line for an installed kaggle CLI (``version``, None: not installed) that cannot push with
    ``--accelerator`` (only 1.8.4 and newer can); None when it can."""
    from czii_kit.kaggle.environment import KAGGLE_CLI_MIN

    need = ".".join(map(str, KAGGLE_CLI_MIN))
    if version is None:
        return f"the kaggle CLI is not installed here: pip install 'kaggle>={need}' (it uploads and pushes)"
    parts = tuple(int(p) for p in re.findall(r"\d+", version)[:3])
    if parts < KAGGLE_CLI_MIN:
        return (f"kaggle {version} is installed, and its `kernels push` rejects --accelerator (needed for the T4s): "
                f"pip install -U 'kaggle>={need}'")
    return None


def dataset_metadata(user: str, slug: str, title: str) -> dict:
    """The dataset-metadata.json that `kaggle datasets create` reads."""
    return {"title": check_title(title), "id": f"{check_user(user)}/{check_slug(slug)}",
            "licenses": [{"name": LICENSE}]}


# --------------------------------------------------------------------------- contents
def _experiment_dirs(ckpts: list[dict]) -> dict[str, Path]:
    """Pack folder name (the weights folder's name) -> weights folder; names must not collide."""
    names: dict[str, Path] = {}
    for ckpt in ckpts:
        folder = Path(ckpt["path"]).resolve().parent
        if folder.name in (WHEELS, CONFIGS):
            raise ConfigError(f"experiment folder {folder} has the name of a pack folder; rename it")
        first = names.setdefault(folder.name, folder)
        if first != folder:
            raise ConfigError(f"experiments {first} and {folder} are both named {folder.name!r} and the pack keeps "
                              "one folder per experiment name; rename one of them")
    return names


def _require_unique(ckpts: list[dict]) -> None:
    seen: set[Path] = set()
    for ckpt in ckpts:
        path = Path(ckpt["path"]).resolve()
        if path in seen:
            raise ConfigError(f"{path} is selected twice by --weights; list each checkpoint once")
        seen.add(path)


def packed_onnx(ckpts: list[dict]) -> dict[str, list[Path]]:
    """Per checkpoint, the ONNX exports predict looks for next to it: the fp32 one (required), the fp16 one when
    present. Every missing fp32 file is named at once, with the one command that makes them all.

    A missing fp16 file costs only a few seconds on Kaggle (predict exports it into its cache before
    building the TensorRT engine); a missing fp32 one means --onnx was asked for without exporting.
    """
    from czii_kit.infer.kinds import kind_of

    exports, missing = {}, []
    for ckpt in ckpts:
        fp32, fp16 = (kind_of(ckpt).onnx_path([ckpt], ckpt["config"], fp16) for fp16 in (False, True))
        if not fp32.is_file():
            missing.append(ckpt)
        exports[ckpt["path"]] = [fp32, fp16] if fp16.is_file() else [fp32]
    if missing:
        paths = " ".join(str(c["path"]) for c in missing)
        raise CheckpointError(f"--onnx: {len(missing)} checkpoint(s) have no fp32 ONNX export beside them "
                              f"({', '.join(str(exports[c['path']][0]) for c in missing)}); make them with "
                              f"`czii export --weights {paths} --format onnx`, or drop --onnx")
    return exports


def check_usable(ckpts: list[dict], exports: dict[str, list[Path]]) -> None:
    """What the notebook will load, loaded here first: every 3D checkpoint's weights into the model its config names,
    every packed ONNX graph parsed; and no best checkpoint of a training that was stopped before its end."""
    import onnx

    from czii_kit.checkpoints import model_from_checkpoint, unfinished_training
    from czii_kit.infer.kinds import VolumeKind, kind_of

    for ckpt in ckpts:
        stopped = unfinished_training(ckpt)
        if stopped:
            raise CheckpointError(f"{stopped}, or pack another checkpoint")
        if kind_of(ckpt).name == VolumeKind.name:
            model_from_checkpoint(ckpt)
        for path in exports[ckpt["path"]]:
            try:
                onnx.load(str(path))
            except Exception as e:  # noqa: BLE001 -- protobuf and OS errors alike: the file is unusable
                raise CheckpointError(f"{path} is not a readable ONNX graph ({type(e).__name__}); export it again: "
                                      f"czii export --weights {ckpt['path']} --format onnx --force") from e


def _copy_experiments(ckpts: list[dict], experiments: dict[str, Path], exports: dict[str, list[Path]],
                      dest: Path) -> list[dict]:
    """Copy checkpoints (+ config.yaml, + ONNX exports) into dest/EXP/; returns the manifest's checkpoint entries."""
    entries = []
    for name, folder in experiments.items():
        (dest / name).mkdir()
        if (folder / "config.yaml").is_file():
            shutil.copy2(folder / "config.yaml", dest / name / "config.yaml")
    for ckpt in ckpts:
        src = Path(ckpt["path"])
        exp = src.resolve().parent.name
        extras = exports[ckpt["path"]]
        for path in (src, *extras):
            shutil.copy2(path, dest / exp / path.name)
        entries.append(_checkpoint_entry(ckpt, f"{exp}/{src.name}", [f"{exp}/{p.name}" for p in extras]))
    return entries


def _checkpoint_entry(ckpt: dict, path: str, onnx: list[str]) -> dict:
    score = float(ckpt["validation"].get("score", math.nan))
    return {"path": path, "fold": ckpt["fold"], "model": ckpt["model"]["name"], "epoch": ckpt["epoch"],
            "score": None if math.isnan(score) else score, "thresholds": dict(ckpt["thresholds"]),
            "window": list(ckpt["window"]), "onnx": onnx}


def _copy_configs(dest: Path) -> None:
    from czii_kit.config import config_dir

    dest.mkdir()
    for path in sorted(config_dir().glob("*.yaml")):
        shutil.copy2(path, dest / path.name)


# --------------------------------------------------------------------------- destination
def _existing_pack(out: Path, force: bool) -> dict | None:
    """Manifest of the pack already at out (None if out is new or empty); refuse what must not be replaced."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise DataError(f"--out {out} is a file; give a folder path")
    if not any(out.iterdir()):
        return None
    if not (out / MANIFEST).is_file():
        raise DataError(f"--out {out} exists and is not a czii-kit pack (no {MANIFEST}); choose a new --out "
                        "(--force only replaces packs, never other folders)")
    manifest = load_manifest(out)
    unlisted = sorted({p.as_posix() for p in pack_files(out)} - {f["path"] for f in manifest["files"]})
    if unlisted and not force:
        raise DataError(f"--out {out} holds files that are not part of its pack ({', '.join(unlisted[:5])}); "
                        "move them away, or use --force to replace the whole folder")
    return manifest


def _require_same_or_forced(out: Path, old: dict | None, new: dict, force: bool) -> None:
    if old is None or force:
        return
    old_files = {(f["path"], f["sha256"]) for f in old["files"]}
    new_files = {(f["path"], f["sha256"]) for f in new["files"]}
    changed = sorted({path for path, _ in old_files ^ new_files})
    if changed:
        raise DataError(f"--out {out} holds a different pack ({len(changed)} file(s) differ, e.g. "
                        f"{', '.join(changed[:3])}); use --force to replace it, or choose another --out")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished pack onto out; an old pack is moved aside first and deleted last."""
    if not out.exists():
        tmp.rename(out)
        return
    holder = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    out.rename(holder / out.name)
    tmp.rename(out)
    shutil.rmtree(holder)


# --------------------------------------------------------------------------- pack
@dataclass(frozen=True)
class PackResult:
    out: Path
    manifest: dict
    wheels: list[Path]  # every packed wheel, czii-kit's first
    replaced: bool  # an older, different pack was replaced (--force)
    target: KaggleTarget = KaggleTarget()  # the Kaggle image the wheels are for
    extra: tuple[str, ...] = ()  # distributions the packed kinds need besides the kit's (YOLO: ultralytics)


def pack_dataset(weights: Sequence[str | Path], out: str | Path, slug: str, user: str, title: str | None = None,
                 folds: Sequence[int] | None = None, wheels: str | Path | None = None, onnx: bool = False,
                 force: bool = False, progress: bool = True, target: KaggleTarget | None = None,
                 thresholds_from: str | Path | None = None, default_thresholds: bool = False,
                 default_fusion: bool = False) -> PackResult:
    """Pack the selected checkpoints, configs and wheels (and tools/evaluate.py's thresholds.json) into out,
    ready for `kaggle datasets create`. Refused before anything is written, because on Kaggle they would score
    quietly low: a full-data checkpoint with only the config's default thresholds and no thresholds file (unless
    ``default_thresholds``), and several kinds of checkpoints without tuned source weights (unless
    ``default_fusion``, which the manifest records for the notebook)."""
    from czii_kit.infer.kinds import KINDS, load_checkpoints
    from czii_kit.infer.plan import PredictionPlan
    from czii_kit.tuning import TUNING_FILE, guessed_thresholds

    target = target or KaggleTarget()
    metadata = dataset_metadata(user, slug, title or slug)
    out = check_output_folder(out)
    old = _existing_pack(out, force)
    ckpts = load_checkpoints(list(weights), list(folds) if folds is not None else None)
    _require_unique(ckpts)
    plan = PredictionPlan.from_checkpoints(ckpts, thresholds_from=thresholds_from, default_fusion=default_fusion)
    plan.check_fusion()
    tuning = plan.tuning
    guessed = guessed_thresholds(ckpts)
    if tuning is None and guessed and not default_thresholds:
        raise ConfigError(f"{', '.join(guessed)} carry the config's default thresholds (trained on every run without "
                          "--thresholds-from), which the notebook would submit with. Pack the cross-validated ones "
                          "with --thresholds-from REPORT (tools/evaluate.py over the fold models), or pass "
                          "--default-thresholds to pack the defaults on purpose")
    experiments = _experiment_dirs(ckpts)
    exports = packed_onnx(ckpts) if onnx else {c["path"]: [] for c in ckpts}
    check_usable(ckpts, exports)
    extra = tuple(sorted({d for kind in plan.groups for d in KINDS[kind].requires}))
    if "ultralytics" in extra:
        check_ultralytics()
    wheelhouse = find_wheelhouse(Path(wheels), target, extra) if wheels is not None else []
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would follow the rename
    try:
        checkpoints = _copy_experiments(ckpts, experiments, exports, tmp)
        _copy_configs(tmp / CONFIGS)
        shutil.copy2(preflight.__file__, tmp / PREFLIGHT)  # the notebook runs it before czii-kit is installed
        if tuning is not None:
            shutil.copy2(tuning.path, tmp / TUNING_FILE)  # cross-validated thresholds: the notebook passes them on
        (tmp / WHEELS).mkdir()
        packed_wheels = [build_project_wheel(tmp / WHEELS)]
        packed_wheels += [tmp / WHEELS / p.name for p in copy_wheelhouse(wheelhouse, tmp / WHEELS)]
        environment = environment_record(packed_wheels, target, extra)
        manifest = make_manifest(file_table(tmp, progress), checkpoints, metadata["id"], environment,
                                 list(ckpts[0]["classes"]), default_fusion)
        write_json(tmp / MANIFEST, manifest)
        write_json(tmp / DATASET_METADATA, metadata)
        _require_same_or_forced(out, old, manifest, force)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replaced = old is not None and old["files"] != manifest["files"]
    return PackResult(out, manifest, [out / WHEELS / p.name for p in packed_wheels], replaced, target, extra)
