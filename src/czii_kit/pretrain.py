"""A starting model for everyone with few labelled tomograms: cpu_quick pretrained on the kit's own simulator.

``pretrain`` makes (once) a simulated dataset with more variety than any one real dataset: several imaging
settings (dose, defocus, tilt range, crowding, a noise-free one), all four reconstructions, held-out runs of every
setting for validation; trains the config on it; scores the model on held-out simulator sets; and writes the
folder users start from (``czii train --init-from weights/pretrained/cpu_quick``): the checkpoint, its config,
its training log and curve, and CARD.md (data, command, seconds, scores). None of the settings is the ``hard``
preset, so fine-tuning on ``hard`` runs measures a setting the pretraining did not contain as such.
"""
from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from czii_kit.config import load_config
from czii_kit.data import layout
from czii_kit.data.synth import SynthConfig, make_dataset
from czii_kit.errors import CheckpointError
from czii_kit.metric import table_score
from czii_kit.utils.atomic import check_output_folder, write_text_atomic
from czii_kit.utils.markdown import markdown_table

# Named settings of the pretraining data: SynthConfig.preset(preset, **overrides). Doses 90-150 e/Å², defocus
# 1.5-5 µm, tilt ranges down to +-45 degrees, 1-1.5x the non-target complexes: around the real data's settings,
# never the `hard` preset's combination (60 e/Å², 2.5x the complexes, larger errors).
PRETRAIN_MIX: dict[str, tuple[str, dict]] = {
    "default": ("default", {}),
    "low-dose-far-focus": ("default", {"dose": 90.0, "defocus_um": (3.5, 5.0)}),
    "high-dose-near-focus": ("default", {"dose": 150.0, "defocus_um": (1.5, 3.0)}),
    "short-tilt-crowded": ("default", {"tilt_max_deg": (45.0, 54.0), "distractors": 220.0, "membranes": 6.0}),
    "clean": ("clean", {}),
}
# What the card scores the model on: the held-out sets of docs/results.md (3 full-size test runs each).
EVAL_SETS: dict[str, dict] = {"default": {"seed": 101, "preset": "default"}, "hard": {"seed": 202, "preset": "hard"}}
FOLD_FILE = "pretrain_folds.csv"


@dataclass
class PretrainSpec:
    """What to pretrain on and how long (the defaults are what weights/pretrained/cpu_quick was made with)."""

    config: str = "cpu_quick"
    runs: int = 20  # train runs of the simulated set, cycling through PRETRAIN_MIX
    shape: tuple[int, int, int] = (128, 384, 384)
    seed: int = 7
    epochs: int = 60
    samples_per_epoch: int = 192
    validate_every: int = 5
    overrides: list[str] = field(default_factory=list)

    def training_overrides(self, fold_file: Path) -> list[str]:
        return ["data.extra_recons=[wbp, ctfdeconvolved, isonetcorrected]", f"data.fold_file={fold_file}",
                f"train.epochs={self.epochs}", f"train.samples_per_epoch={self.samples_per_epoch}",
                "train.time_limit_min=null", f"validate.every={self.validate_every}", f"seed={self.seed}",
                *self.overrides]


def mix_configs(shape: Sequence[int]) -> dict[str, SynthConfig]:
    return {name: SynthConfig.preset(preset, shape=tuple(shape), **values)
            for name, (preset, values) in PRETRAIN_MIX.items()}


def pretraining_data(path: Path, spec: PretrainSpec, progress: bool = True) -> Path:
    """The simulated pretraining set at ``path`` (made once, reused when its synthetic.json matches the spec) and
    its fold file: the first run of every setting held out for validation (threshold tuning), or only the first run
    when there are fewer than two runs per setting."""
    wanted = {"runs": spec.runs, "shape": list(spec.shape), "seed": spec.seed, "mix": sorted(PRETRAIN_MIX)}
    meta_path = path / "synthetic.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        have = {"runs": sum(1 for r in meta["runs"].values() if r["split"] == "train"), "seed": meta["seed"],
                "shape": list(meta["config"]["shape"]), "mix": sorted(meta.get("mix", {}))}
        if have != wanted:
            raise CheckpointError(f"{path} holds another pretraining set ({have}, wanted {wanted}); choose another "
                                  "--data-dir or remove it")
    else:
        make_dataset(path, n_train=spec.runs, n_test=0, shape=spec.shape, seed=spec.seed, recons=layout.RECONS,
                     mix=mix_configs(spec.shape), progress=progress)
    runs = json.loads(meta_path.read_text())["runs"]
    first = {}
    for run, info in runs.items():
        first.setdefault(info["setting"], run)
    held_out = set(first.values()) if len(runs) >= 2 * len(first) else {sorted(runs)[0]}  # keep most for training
    write_text_atomic(path / FOLD_FILE, "run,fold\n" + "".join(f"{run},{0 if run in held_out else 1}\n"
                                                              for run in sorted(runs)))
    return path / FOLD_FILE


def eval_set(root: Path, name: str, progress: bool = True) -> Path:
    """One held-out simulator set of docs/results.md (3 full-size test runs), made once."""
    path = root / f"eval_{name}"
    if not (path / layout.SOLUTION_CSV).is_file():
        settings = EVAL_SETS[name]
        make_dataset(path, n_train=0, n_test=3, shape=(184, 630, 630), seed=settings["seed"],
                     cfg=SynthConfig.preset(settings["preset"]), progress=progress)
    return path


def card(out: Path, spec: PretrainSpec, command: str, seconds: dict[str, float], scores: Mapping[str, object],
         trained: dict) -> str:
    """CARD.md: what the model is, what it was trained on and how, how long it took, what it scores."""
    rows = [{"held-out set": f"{name} (3 runs of 184x630x630, seed {EVAL_SETS[name]['seed']})",
             "F4 (its thresholds)": table_score(held_out.fixed), "F4 (tuned on the set)": table_score(held_out.tuned),
             **{c: held_out.fixed.loc[c, "f4"] for c in held_out.fixed.index if held_out.fixed.loc[c, "scored"]}}
            for name, held_out in scores.items()]
    mix = "\n".join(f"- `{name}`: preset `{preset}`" + "".join(f", {k} {v}" for k, v in values.items())
                    for name, (preset, values) in PRETRAIN_MIX.items())
    best = trained["best"]
    return "\n".join([
        f"# Pretrained {spec.config}", "",
        "A starting model for fine-tuning on few labelled tomograms: `czii train --fold -1 --data YOURS "
        f"--init-from {out}` (classes matched by name, so a copick project's own class set works too).", "",
        "## Data", "",
        f"{spec.runs} simulated runs of {'x'.join(map(str, spec.shape))} voxels (seed {spec.seed}), all four "
        "reconstructions, cycling through these settings (none of them the `hard` preset):", "", mix, "",
        f"The first run of every setting ({', '.join(trained['val_runs'])}) was held out; the thresholds in the "
        "checkpoint are tuned on them (validation F4 "
        f"{best['score']:.3f} at epoch {best['epoch']}).", "",
        "## Command", "", "```bash", command, "```", "",
        f"Data {seconds['data']:.0f} s, training {seconds['train'] / 60:.1f} min ({spec.epochs} epochs x "
        f"{spec.samples_per_epoch} patches), scoring {seconds['score']:.0f} s, on this machine "
        "(2 CPU cores).", "",
        "## Held-out simulator sets (no TTA)", "", markdown_table(pd.DataFrame(rows), "{:.3f}"), "",
    ]) + "\n"


def pretrain(out: str | Path, data_dir: str | Path, spec: PretrainSpec = PretrainSpec(), eval_root: str | Path = "data",
             command: str = "", progress: bool = True, report: Callable[[str], None] = print) -> Path:
    """Make the data (once), train, score on the held-out sets, write ``out``: checkpoint, config, log, curve, card."""
    from czii_kit.study import score_held_out
    from czii_kit.train.loop import train_fold

    out = check_output_folder(out)
    check_output_folder(data_dir, "--data-dir")
    if (out / "fold0.pt").exists():
        raise CheckpointError(f"{out / 'fold0.pt'} exists; choose another --out (nothing was overwritten)")
    seconds = {}
    t0 = time.monotonic()
    fold_file = pretraining_data(Path(data_dir), spec, progress)
    seconds["data"] = time.monotonic() - t0
    report(f"pretraining data: {data_dir} ({spec.runs} runs, {seconds['data']:.0f} s)")
    cfg = load_config(spec.config, spec.training_overrides(fold_file.resolve()))
    t0 = time.monotonic()
    trained = train_fold(cfg, 0, Path(data_dir), out, progress=progress)
    seconds["train"] = time.monotonic() - t0
    t0 = time.monotonic()
    scores = {name: score_held_out([out / "fold0.pt"], eval_set(Path(eval_root), name, progress), "test")
              for name in EVAL_SETS}
    seconds["score"] = time.monotonic() - t0
    (out / "fold0_last.pt").unlink(missing_ok=True)  # resume state: not part of what ships
    path = out / "CARD.md"
    write_text_atomic(path, card(out, spec, command or shlex.join(["czii", "pretrain", "--out", str(out)]), seconds,
                                 scores, trained))
    report(f"wrote {out}: fold0.pt, config.yaml, fold0_log.csv, fold0_curve.png, CARD.md")
    return out
