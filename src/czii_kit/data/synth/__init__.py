"""Synthetic cryo-ET runs made the way real ones are, written in the exact competition layout.

Why: every tool must run end to end (train, predict, score) without the Kaggle download, and a
model trained here should transfer to real tomograms. So a run is simulated physically:

1. Scene (``scene``, ``templates``, ``distractors``, ``render``): density maps of the six CZII
   proteins (shipped in ``maps/``, Apache-2.0) at random orientations and the real per-run counts,
   crowded without overlap among non-target complexes, membranes and gold beads in an ice slab.
2. Tilt series (``geometry``, ``optics``, ``tiltseries``): exact Fourier projections at the real
   tilt angles (+-60 degrees, 3 degree steps, dose-symmetric order) with per-tilt CTF and defocus
   gradient, radiation damage, shot noise, and tilt-axis, angle and alignment errors.
3. Reconstruction (``recon``): weighted back-projection, then the four recons Kaggle ships
   (``wbp``, ``ctfdeconvolved``, ``denoised``, ``isonetcorrected``) on the real value scale.
4. Datasets (``dataset``): seeded runs written atomically; the built-in dataset.

Units: scene coordinates are (z, y, x) voxels; picks are converted once with ``voxel_to_angstrom``.
"""
from czii_kit.data.synth.config import (BUILTIN, FULL_SHAPE, PRESETS, REAL_COUNTS, TARGET_STD, TRAIN_RUN_NAMES,
                                        SynthConfig)
from czii_kit.data.synth.dataset import (builtin_dataset_path, ensure_builtin_dataset, generate_run, make_dataset,
                                         run_names, run_seed, simulate_run)
from czii_kit.data.synth.imaging import tomograms
from czii_kit.data.synth.render import render_density
from czii_kit.data.synth.scene import Scene, expected_counts, sample_counts, sample_scene, templates_for
from czii_kit.data.synth.tiltseries import Acquisition, sample_acquisition

__all__ = [
    "BUILTIN", "FULL_SHAPE", "PRESETS", "REAL_COUNTS", "TARGET_STD", "TRAIN_RUN_NAMES", "SynthConfig",
    "builtin_dataset_path", "ensure_builtin_dataset", "generate_run", "make_dataset", "run_names", "run_seed",
    "simulate_run", "tomograms", "render_density", "Scene", "expected_counts", "sample_counts", "sample_scene",
    "templates_for", "Acquisition", "sample_acquisition",
]
