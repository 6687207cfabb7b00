"""Detections from probability volumes (peak finding) and their post-processing switches."""
from czii_kit.post.merging import dbscan_merge, merge_close
from czii_kit.post.offsets import add_hard_particle_offsets
from czii_kit.post.peaks import find_peaks, reference_peaks
from czii_kit.post.steps import POSTPROCESSORS, apply_thresholds, postprocess, with_steps

__all__ = [
    "POSTPROCESSORS",
    "add_hard_particle_offsets",
    "apply_thresholds",
    "dbscan_merge",
    "find_peaks",
    "merge_close",
    "postprocess",
    "reference_peaks",
    "with_steps",
]
