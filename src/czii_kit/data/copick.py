"""copick projects as data: read runs, tomograms and picks through the copick library, write predictions back.

The CZII competition data is a copick project in all but two details, both handled here:
* its pick files are named ``<particle>.json`` where copick's filesystem layout expects
  ``<user>_<session>_<particle>.json`` (copick lists nothing otherwise): ``make_copick_project`` writes a
  copick project over a Kaggle-layout directory with the picks linked under copick names, nothing copied
  or changed in the directory itself;
* copick names the voxel spacing by its folder (10.000 Å) while the tomograms' OME-NGFF scale says
  10.012444 Å: tomograms are read with their own scale (``czii_kit.data.io``), so coordinates are exact.

The particle set of a project is its ``pickable_objects`` that are particles: name, ``radius`` (Å), and a
metric weight from ``metadata.weight`` (1 when absent). copick is an optional extra:
``pip install 'czii-kit[copick]'``.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from czii_kit.data import io, layout
from czii_kit.data.source import DataSource
from czii_kit.errors import ConfigError, DataError
from czii_kit.particles import CZII, Particle, ParticleSet
from czii_kit.tables import PICK_COLUMNS, XYZ
from czii_kit.utils.atomic import check_output_folder, write_text_atomic

INSTALL_HINT = "pip install 'czii-kit[copick]'"
KAGGLE_PICKS_USER, KAGGLE_PICKS_SESSION = "curation", "0"  # how make_copick_project names the competition's picks
IDENTIFIER = re.compile(r"[A-Za-z0-9-]+")  # copick splits file names on "_": ids must not contain one
CZII_PDB = {"apo-ferritin": "4V1W", "beta-amylase": "1FA2", "beta-galactosidase": "6X1Q", "ribosome": "6EK0",
            "thyroglobulin": "6SCJ", "virus-like-particle": "6N4V"}


def import_copick(what: str):
    try:
        import copick
    except ImportError:
        raise ConfigError(f"{what} is a copick project; reading and writing copick projects needs the copick "
                          f"library: {INSTALL_HINT}") from None
    return copick


def particles_of(objects) -> ParticleSet:
    """The particle set of copick ``pickable_objects`` (particles only, in config order)."""
    out = []
    for obj in objects:
        if not obj.is_particle:
            continue
        if obj.radius is None:
            raise ConfigError(f"copick pickable object {obj.name!r} has no radius; give it a radius in Å in the "
                              "copick config (the kit sizes targets, peaks and the metric's hit radius from it)")
        weight = float((obj.metadata or {}).get("weight", 1.0))
        out.append(Particle(obj.name, float(obj.radius), weight))
    if not out:
        raise ConfigError("the copick config has no pickable object with is_particle: true")
    return ParticleSet(tuple(out))


STAMP_KEYS = ("mtime", "ETag", "etag", "LastModified", "last_modified", "updated")  # fsspec info(), by file system


class CopickProject(DataSource):
    """A copick project (filesystem config JSON with overlay_root / static_root) as a data source.

    A copick project has no train/test split: both splits list every run. ``data.picks_user`` and
    ``data.picks_session`` choose whose picks are the ground truth (null: everybody's); ``data.voxel_spacing``
    chooses the VoxelSpacing folder (null: the run's only one).
    """

    def __init__(self, config_path: str | Path) -> None:
        self.config_path = Path(config_path)
        self.location = str(self.config_path)
        copick = import_copick(f"--data {config_path}")
        try:
            self.root = copick.from_file(str(self.config_path))
        except Exception as e:  # copick raises pydantic, OS and JSON errors alike
            raise DataError(f"copick could not open {config_path} ({type(e).__name__}: {e}); check its "
                            "overlay_root / static_root and pickable_objects") from e
        self.particles = particles_of(self.root.pickable_objects)

    def __reduce__(self):
        """Pickled as its config path: a Ray worker opens the project itself (copick's objects do not travel)."""
        return (CopickProject, (self.config_path,))

    def data_dirs(self) -> list[Path]:
        """The project's static_root on this file system; for a project over a competition directory
        (make_copick_project: ROOT/<split>/static), that directory's ROOT as well."""
        static = json.loads(self.config_path.read_text()).get("static_root", "")
        if not static.startswith("local://"):
            return []
        root = Path(static.removeprefix("local://"))
        return [root, root.parents[1]] if root.name == "static" and root.parent.name in layout.SPLITS else [root]

    # ------------------------------------------------------------------ runs and tomograms
    def list_runs(self, split: str) -> list[str]:
        if split not in layout.SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {', '.join(layout.SPLITS)}")
        runs = sorted(run.name for run in self.root.runs)
        if not runs:
            raise DataError(f"copick project {self.location} lists no runs; check its static_root")
        return runs

    def _run(self, name: str):
        run = self.root.get_run(name)
        if run is None:
            raise DataError(f"run {name!r} is not in copick project {self.location} (runs: "
                            f"{', '.join(self.list_runs('train'))})")
        return run

    def _tomogram(self, run_name: str, data_cfg: Mapping, recon: str | None):
        run = self._run(run_name)
        spacings = sorted(vs.voxel_size for vs in run.voxel_spacings)
        wanted = data_cfg.get("voxel_spacing")
        if wanted is None and len(spacings) != 1:
            raise DataError(f"run {run_name} has voxel spacings {spacings} in {self.location}; choose one with "
                            "--set data.voxel_spacing=VALUE")
        size = spacings[0] if wanted is None else float(wanted)
        vs = run.get_voxel_spacing(size)
        if vs is None:
            raise DataError(f"run {run_name} has no voxel spacing {size} (it has {spacings}); fix data.voxel_spacing")
        recon = recon or data_cfg["recon"]
        tomogram = vs.get_tomogram(recon)
        if tomogram is None:
            have = sorted(t.tomo_type for t in vs.tomograms)
            raise DataError(f"run {run_name} has no {recon!r} tomogram at voxel spacing {size} (it has "
                            f"{', '.join(have) or 'none'}); set data.recon")
        return tomogram, recon, f"{self.location}:{run_name}/VoxelSpacing{size:.3f}/{recon}.zarr"

    def read_run(self, run, split, data_cfg, recon=None) -> io.Tomogram:
        tomogram, recon, where = self._tomogram(run, data_cfg, recon)
        level = int(data_cfg["level"])
        volume, spacing = io.read_level(where, level, store=tomogram.zarr())  # the OME-NGFF scale, not the folder
        return io.Tomogram(run, split, recon, level, volume, spacing)

    def run_geometry(self, run, split, data_cfg, recon=None) -> tuple[tuple[int, ...], float]:
        tomogram, _, where = self._tomogram(run, data_cfg, recon)
        return io.level_geometry(where, int(data_cfg["level"]), store=tomogram.zarr())

    def run_stamp(self, run, split, data_cfg) -> str | None:
        """What the store's file system says of the level's array metadata: its modification time (local files)
        or its ETag / last-modified (object stores); None where it says neither."""
        store = self._tomogram(run, data_cfg, None)[0].zarr()
        try:
            info = store.fs.info(f"{store.path}/{data_cfg['level']}/.zarray")
        except (OSError, ValueError):
            return None
        return next((f"{key}={info[key]}" for key in STAMP_KEYS if info.get(key) is not None), None)

    # ------------------------------------------------------------------ picks
    def read_picks(self, run, data_cfg=None) -> pd.DataFrame:
        data_cfg = data_cfg or {}
        picks = self._run(run).get_picks(user_id=data_cfg.get("picks_user"), session_id=data_cfg.get("picks_session"))
        rows = []
        for p in picks:
            if p.pickable_object_name not in self.particles or not p.points:
                continue
            xyz = p.numpy()[0]
            if not np.isfinite(xyz).all():
                raise DataError(f"copick picks {p.user_id}/{p.session_id}/{p.pickable_object_name} of run {run} hold "
                                "non-finite coordinates; fix or delete them")
            rows += [(run, p.pickable_object_name, *point) for point in xyz.tolist()]
        frame = pd.DataFrame(rows, columns=PICK_COLUMNS).astype({"x": float, "y": float, "z": float})
        return frame.drop_duplicates().reset_index(drop=True)

    def write_picks(self, detections: pd.DataFrame, user_id: str, session_id: str, overwrite: bool = False) -> int:
        """Predictions as copick picks of ``user_id``/``session_id``, one file per run and class (scores kept);
        returns the number of files. Refuses to replace picks of that user/session without ``overwrite``."""
        check_identity(user_id, session_id)
        runs = sorted(set(detections["experiment"]))
        self.check_free(runs, user_id, session_id, overwrite)
        written = 0
        for run_name in runs:
            run = self._run(run_name)
            rows = detections[detections["experiment"] == run_name]
            for particle in self.particles.names:
                chosen = rows[rows["particle_type"] == particle]
                picks = run.new_picks(particle, session_id, user_id, exist_ok=True)
                picks.from_numpy(chosen[XYZ].to_numpy(dtype=float), scores=chosen["score"].to_numpy(float)
                                 if "score" in chosen else None)
                picks.store()
                written += 1
        return written

    def check_free(self, runs: Sequence[str], user_id: str, session_id: str, overwrite: bool = False) -> None:
        """Refuse (before any work) when ``user_id``/``session_id`` already has picks in one of ``runs`` (unless
        ``overwrite``), and always when those picks are links: make-copick-project links the data directory's own
        picks into the project, and writing them would write through the link into the user's data."""
        for run_name in runs:
            taken = self._run(run_name).get_picks(user_id=user_id, session_id=session_id)
            linked = [str(p.path) for p in taken if Path(str(p.path)).is_symlink()]
            if linked:
                raise DataError(f"copick project {self.location}: the picks of {user_id}/{session_id} in run "
                                f"{run_name} are links to another folder's files ({linked[0]} -> "
                                f"{Path(linked[0]).resolve()}), such as the data's own picks; predictions never "
                                "replace them: choose another --copick-out USER/SESSION")
            if taken and not overwrite:
                raise DataError(f"copick project {self.location} already has picks of {user_id}/{session_id} in run "
                                f"{run_name}; choose another --copick-out USER/SESSION, or pass --overwrite")


def check_identity(user_id: str, session_id: str) -> None:
    for what, value in (("user id", user_id), ("session id", session_id)):
        if not IDENTIFIER.fullmatch(value or ""):
            raise ConfigError(f"copick {what} {value!r}: use letters, digits and '-' only (copick splits pick file "
                              "names on '_')")


# --------------------------------------------------------------------------- a copick project over a Kaggle directory
def copick_config(name: str, particles: ParticleSet, overlay_root: Path, static_root: Path) -> dict:
    """A filesystem copick config: the particles (radius, metric weight in metadata), and the two roots."""
    objects = [{"name": p.name, "is_particle": True, "label": i + 1, "radius": p.radius,
                "pdb_id": CZII_PDB.get(p.name), "color": [int(c) for c in _colour(i)],
                "metadata": {"weight": p.weight}} for i, p in enumerate(particles)]
    return {"name": name, "description": "written by czii-kit", "version": "0.2.0", "pickable_objects": objects,
            "config_type": "filesystem", "overlay_root": f"local://{overlay_root.resolve()}",
            "static_root": f"local://{static_root.resolve()}", "overlay_fs_args": {"auto_mkdir": True}}


def _colour(i: int) -> tuple[int, int, int, int]:
    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (227, 119, 194),
               (140, 86, 75), (127, 127, 127)]
    return (*palette[i % len(palette)], 255)


def make_copick_project(root: str | Path, out: str | Path, split: str = "train",
                        particles: ParticleSet = CZII) -> Path:
    """Write a copick project over the Kaggle-layout directory ``root``: ``out/copick_<split>.json`` with the static
    data read in place and the picks linked as ``<user>_<session>_<particle>.json`` under ``out/overlay_<split>``.
    Nothing in ``root`` is copied or changed. Returns the config path."""
    source_root = layout.check_root(root)
    runs = layout.list_runs(source_root, split)
    out = check_output_folder(out)
    config_path = out / f"copick_{split}.json"
    overlay = out / f"overlay_{split}"
    for path in (config_path, overlay):
        if path.exists():
            raise DataError(f"{path} exists; choose a new --out (nothing was changed)")
    linked = {run: {} for run in runs}  # every picks file is checked before anything is written
    for run in runs:
        picks = layout.picks_dir(source_root, run)
        for f in sorted(picks.glob("*.json")) if split == "train" and picks.is_dir() else []:
            io.read_picks_file(f, run, particles)  # malformed JSON, unknown classes, bad points: named here
            name = json.loads(f.read_text()).get("pickable_object_name", f.stem)
            if name in linked[run]:
                raise DataError(f"run {run}: {linked[run][name].name} and {f.name} both hold {name} picks; merge them "
                                "into one file (copick keeps one picks file per class, user and session)")
            linked[run][name] = f
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".overlay_{split}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        for run, files in linked.items():
            target = tmp / "ExperimentRuns" / run / "Picks"
            target.mkdir(parents=True)
            for name, f in files.items():
                (target / f"{KAGGLE_PICKS_USER}_{KAGGLE_PICKS_SESSION}_{name}.json").symlink_to(f.resolve())
        tmp.rename(overlay)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    config = copick_config(f"czii-kit {split} over {source_root.name}", particles, overlay,
                           source_root / split / "static")
    write_text_atomic(config_path, json.dumps(config, indent=2) + "\n")
    return config_path
