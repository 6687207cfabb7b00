"""Run ultralytics fully offline, with every file it writes kept inside one chosen directory.

ultralytics reads its environment once, at import: YOLO_CONFIG_DIR (settings.json, fonts),
YOLO_OFFLINE (no connectivity probe, no telemetry, no hub), YOLO_AUTOINSTALL (no pip). The
fonts its plotting and dataset checks look for are copied from matplotlib's bundled DejaVuSans
under the names it expects, so ``check_font`` never downloads. The AMP self-test (CUDA only)
downloads yolo11n.pt, so it is replaced by a plain "AMP works" answer. Import ultralytics
only through ``import_ultralytics``.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from czii_kit.errors import ConfigError

FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")
ENV_FLAGS = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "0"}


def bundled_font() -> Path:
    """matplotlib's DejaVuSans.ttf (always installed with matplotlib)."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"


def install_fonts(directory: Path) -> None:
    """Copy the bundled font to ``directory`` under every name ultralytics asks for."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in FONT_NAMES:
        if not (directory / name).exists():
            shutil.copyfile(bundled_font(), directory / name)


def default_config_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"czii-kit-ultralytics-{os.getuid()}"


def _set_environment(config_dir: Path) -> None:
    os.environ.update(ENV_FLAGS)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ.setdefault("MPLCONFIGDIR", str(config_dir / "matplotlib"))  # matplotlib's font cache
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(config_dir / "torchinductor"))  # made by the ONNX export


def import_ultralytics(config_dir: str | Path | None = None) -> ModuleType:
    """``ultralytics``, imported offline with its config dir under ``config_dir`` (default: a tmp dir).

    A second call in the same process reuses the first import (ultralytics fixes its config
    dir at import); the fonts are then placed in that dir.
    """
    if "ultralytics" not in sys.modules:
        _set_environment(Path(config_dir or default_config_dir()).resolve())
    import ultralytics
    from ultralytics.engine import trainer
    from ultralytics.utils import ONLINE, SETTINGS, USER_CONFIG_DIR

    if ONLINE:
        raise ConfigError("ultralytics was imported before czii_kit.yolo.offline set YOLO_OFFLINE=1; "
                          "import it through czii_kit.yolo.offline.import_ultralytics (or set YOLO_OFFLINE=1)")
    install_fonts(Path(USER_CONFIG_DIR))
    # in the kit's own settings file: no telemetry, and no Ray Tune reporting (Ray runs the kit's trials as plain
    # tasks; outside a Tune trial the callback only warns once per training)
    quiet = {key: False for key in ("sync", "raytune") if SETTINGS.get(key)}
    if quiet:
        SETTINGS.update(**quiet)
    trainer.check_amp = _amp_works
    return ultralytics


def _amp_works(model) -> bool:
    """Stand-in for ultralytics' AMP self-test, which downloads yolo11n.pt to compare outputs."""
    return True
