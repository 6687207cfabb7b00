"""Runs and datasets: one seeded run end to end, and a whole competition directory written atomically.

Train runs get the requested recons and six copick picks files; test runs get ``denoised`` only
(as on Kaggle, unless asked for others: a lab's own wbp tomograms) with their picks in ``solution.csv``.
The built-in dataset is the default data of every tool: made once per parameter set into $CZII_DATA_DIR
or ./data and reused.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from czii_kit import __version__
from czii_kit.data import io, layout
from czii_kit.data.synth.config import BUILTIN, TRAIN_RUN_NAMES, SynthConfig
from czii_kit.data.synth.imaging import tomograms
from czii_kit.data.synth.render import render_density
from czii_kit.data.synth.scene import Scene, sample_scene
from czii_kit.data.synth.tiltseries import Acquisition, sample_acquisition
from czii_kit.errors import ConfigError, DataError
from czii_kit.particles import CLASS_NAMES, VOXEL_SPACING, voxel_to_angstrom
from czii_kit.tables import PICK_COLUMNS, solution_from_picks
from czii_kit.utils.progress import progress_bar
from czii_kit.utils.timing import StageClock

GENERATOR = "czii_kit.data.synth/2"  # bump when the output for a given config changes (cache key)


def check_recons(recons) -> tuple[str, ...]:
    recons = tuple(recons)
    unknown = [r for r in recons if r not in layout.RECONS]
    if unknown or not recons:
        raise ConfigError(f"unknown reconstruction(s) {unknown or recons}; choose from {', '.join(layout.RECONS)}")
    return tuple(dict.fromkeys(recons))


def simulate_run(name: str, seed: int, cfg: SynthConfig | None = None, recons=("denoised",),
                 timings: dict | None = None) -> tuple[dict[str, np.ndarray], pd.DataFrame, Scene, Acquisition]:
    """(volumes, picks, scene, acquisition): generate_run plus what was drawn, for metadata and tests;
    ``timings``, if given, receives seconds per stage."""
    cfg = cfg or SynthConfig()
    recons = check_recons(recons)
    scene_rng, acquisition_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    clock = StageClock(timings)
    scene = sample_scene(name, cfg, scene_rng)
    acquisition = sample_acquisition(cfg, acquisition_rng, scene.slab.thickness * VOXEL_SPACING)
    clock.lap("scene")
    density = render_density(scene)
    clock.lap("render")
    volumes = tomograms(density, acquisition, cfg, noise_rng, recons, timings)
    return volumes, scene.picks, scene, acquisition


def generate_run(name: str, seed: int, cfg: SynthConfig | None = None,
                 recons=("denoised",)) -> tuple[dict[str, np.ndarray], pd.DataFrame]:
    """One run: ({recon: float32 (z, y, x) volume}, picks DataFrame experiment, particle_type, x, y, z in Å)."""
    volumes, picks, _, _ = simulate_run(name, seed, cfg, recons)
    return volumes, picks


def run_names(split: str, n: int) -> list[str]:
    """Train: the real run names, cycled with a suffix (_2, _3, ...) past seven. Test: TS_T1_1, TS_T2_1, ..."""
    if split == "test":
        return [f"TS_T{i + 1}_1" for i in range(n)]
    k = len(TRAIN_RUN_NAMES)
    return [TRAIN_RUN_NAMES[i % k] + (f"_{i // k + 1}" if i >= k else "") for i in range(n)]


def run_seed(seed: int, split: str, index: int) -> int:
    return int(np.random.SeedSequence([seed, layout.SPLITS.index(split), index]).generate_state(1)[0])


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"output directory {out} already exists and is not empty; pass a new --out or remove it")


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished dataset into place in one rename (an empty existing --out is replaced)."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    try:
        os.rename(tmp, out)
    except OSError as e:
        raise DataError(f"could not move the finished dataset to {out} ({e}); did another process create it?") from e


def _sample_submission(test_runs: list[str], shape, seed: int) -> pd.DataFrame:
    """One made-up row per class and test run, like Kaggle's sample_submission.csv."""
    rng = np.random.default_rng([seed, 7])
    rows = [(run, name, *voxel_to_angstrom(rng.uniform(0, np.array(shape) - 1))[0])
            for run in test_runs for name in CLASS_NAMES]
    return solution_from_picks(pd.DataFrame(rows, columns=PICK_COLUMNS))


def _write_run(root: Path, split: str, name: str, volumes: dict[str, np.ndarray], picks: pd.DataFrame) -> None:
    for recon, vol in volumes.items():
        io.write_tomogram(layout.tomogram_path(root, split, name, recon), vol)
    if split == "train":
        for particle in CLASS_NAMES:
            xyz = picks.loc[picks["particle_type"] == particle, ["x", "y", "z"]].to_numpy()
            io.write_picks(root, name, particle, xyz)


def _run_info(split: str, scene: Scene, acquisition: Acquisition) -> dict:
    kinds = pd.Series([o.kind for o in scene.objects]).value_counts()
    return {"split": split, **acquisition.summary(), "counts": {k: int(v) for k, v in kinds.items()},
            "membranes": len(scene.membranes)}


def make_dataset(out: str | Path, n_train: int = 4, n_test: int = 2, shape=(96, 256, 256), seed: int = 0,
                 recons=("denoised",), cfg: SynthConfig | None = None, progress: bool = True,
                 mix: Mapping[str, SynthConfig] | None = None, test_recons=("denoised",)) -> Path:
    """Write a synthetic competition directory at ``out`` (``shape`` overrides ``cfg.shape``).

    ``mix`` (name -> settings) gives train run i the i-th setting, cycling, instead of ``cfg`` (a dataset with
    more variety than any one real one: pretraining); each run's setting is recorded in synthetic.json.
    Built in a hidden sibling directory and renamed at the end, so a crash leaves nothing
    half-made. Deterministic for a seed.
    """
    out = Path(out)
    _check_out(out)
    if n_train < 0 or n_test < 0 or n_train + n_test == 0:
        raise ConfigError(f"need at least one run (got n_train={n_train}, n_test={n_test})")
    cfg = replace(cfg or SynthConfig(), shape=tuple(shape))
    settings = {name: replace(c, shape=tuple(shape)) for name, c in (mix or {}).items()}
    recons, test_recons = check_recons(recons), check_recons(test_recons)
    jobs = ([("train", name, i, recons) for i, name in enumerate(run_names("train", n_train))]
            + [("test", name, i, test_recons) for i, name in enumerate(run_names("test", n_test))])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()  # plain mkdir (not mkdtemp) so the dataset gets the user's usual permissions
    try:
        solution, runs_info = [], {}
        for split, name, index, run_recons in progress_bar(jobs, desc="synthetic runs", unit="run", enabled=progress):
            setting = list(settings)[index % len(settings)] if settings and split == "train" else None
            run_cfg = settings[setting] if setting else cfg
            volumes, picks, scene, acquisition = simulate_run(name, run_seed(seed, split, index), run_cfg, run_recons)
            _write_run(tmp, split, name, volumes, picks)
            if split == "test":
                solution.append(picks)
            runs_info[name] = {**_run_info(split, scene, acquisition), **({"setting": setting} if setting else {})}
        solution_df = pd.concat(solution) if solution else pd.DataFrame(columns=PICK_COLUMNS)
        solution_from_picks(solution_df).to_csv(tmp / layout.SOLUTION_CSV, index=False)
        _sample_submission(run_names("test", n_test), cfg.shape, seed).to_csv(tmp / "sample_submission.csv",
                                                                              index=False)
        meta = {"generator": GENERATOR, "version": __version__, "seed": seed, "recons": list(recons),
                **({"test_recons": list(test_recons)} if n_test else {}),
                "config": asdict(cfg), "runs": runs_info,
                **({"mix": {name: asdict(c) for name, c in settings.items()}} if settings else {})}
        (tmp / "synthetic.json").write_text(json.dumps(meta, indent=1))
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def builtin_dataset_path(cache_dir: str | Path | None = None) -> Path:
    """Where the built-in dataset lives: <cache>/synthetic-<hash of its parameters and the generator>."""
    base = Path(cache_dir) if cache_dir is not None else Path(os.environ.get("CZII_DATA_DIR") or "data")
    key = json.dumps({**BUILTIN, "config": asdict(SynthConfig()), "generator": GENERATOR, "version": __version__},
                     sort_keys=True, default=list)
    return base / f"synthetic-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def ensure_builtin_dataset(cache_dir: str | Path | None = None) -> Path:
    """The default data of every tool: generated once (cache: $CZII_DATA_DIR or ./data), then reused."""
    path = builtin_dataset_path(cache_dir)
    if (path / layout.SOLUTION_CSV).is_file():
        return path
    print(f"generating the built-in synthetic dataset in {path} (once; later runs reuse it)", flush=True)
    try:
        return make_dataset(path, **BUILTIN)
    except DataError:
        if (path / layout.SOLUTION_CSV).is_file():  # another process finished it first
            return path
        raise
