"""Every knob of the simulator in one frozen dataclass, its named presets, and the real-data constants.

Why one dataclass: a dataset's ``synthetic.json`` records it whole, the built-in dataset's cache
key hashes it, and a preset is nothing but a set of overrides of it.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from czii_kit.data import layout
from czii_kit.errors import ConfigError

FULL_SHAPE = (184, 630, 630)  # (z, y, x) of a real run
TRAIN_RUN_NAMES = ("TS_5_4", "TS_6_4", "TS_6_6", "TS_69_2", "TS_73_6", "TS_86_3", "TS_99_9")
_COUNT_COLUMNS = ("apo-ferritin", "beta-amylase", "beta-galactosidase", "ribosome", "thyroglobulin",
                  "virus-like-particle")
# Picks per class in the 7 real training runs (184 x 630 x 630 voxels).
REAL_COUNTS: dict[str, dict[str, int]] = {
    run: dict(zip(_COUNT_COLUMNS, row)) for run, row in {
        "TS_5_4": (46, 10, 12, 31, 30, 11),
        "TS_6_4": (58, 9, 12, 74, 30, 10),
        "TS_6_6": (41, 14, 11, 23, 35, 19),
        "TS_69_2": (35, 12, 16, 37, 34, 9),
        "TS_73_6": (95, 12, 14, 46, 28, 22),
        "TS_86_3": (64, 9, 23, 55, 45, 29),
        "TS_99_9": (36, 21, 24, 65, 49, 13),
    }.items()
}
TARGET_STD = 1e-5  # std of a real denoised tomogram; the other recons share its gain (wbp comes out larger)
# The built-in dataset every tool falls back to without --data: train runs carry all four recons.
BUILTIN = dict(n_train=4, n_test=2, shape=(96, 256, 256), seed=0, recons=layout.RECONS)
TILT_SCHEMES = ("dose-symmetric", "bidirectional", "unidirectional")
TEMPLATE_KINDS = ("maps", "procedural")
_RANGES = ("tilt_max_deg", "defocus_um", "bfactor", "ice_fraction")


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the simulation; ranges (low, high) are drawn once per run.

    Defaults follow the real data: 41 tilts of +-60 degrees at 3 degree steps collected
    dose-symmetrically at 300 kV, 120 e/Å² in total, 2.5-4.5 um underfocus, ice 100-150 nm.
    ``noise`` multiplies the shot noise of that dose (1 = physical, 0 = noise-free). Target counts
    are the real per-run counts scaled to the volume, times ``density``; ``distractors``,
    ``membranes`` and ``gold`` are counts per full-size (184 x 630 x 630) run.
    """

    shape: tuple[int, int, int] = FULL_SHAPE
    # scene
    templates: str = "maps"  # "maps": density maps of the real structures; "procedural": sums-of-Gaussians phantoms
    maps: str | None = None  # folder with maps.yaml and MRC maps; None = the maps shipped with the kit
    density: float = 1.0
    distractors: float = 150.0  # non-target complexes per full-size run
    distractor_species: int = 8  # distinct non-target complexes per run (each appears many times)
    membranes: float = 4.0
    gold: float = 8.0
    ice_fraction: tuple[float, float] = (0.55, 0.8)  # ice thickness as a fraction of z
    intensity_jitter: float = 0.1  # per-copy density variation (std of a log-normal factor)
    jitter_angstrom: float = 4.0  # per-axis std of the curators' pick error
    # acquisition
    tilt_max_deg: tuple[float, float] = (60.0, 60.0)  # +- range of the series, drawn and rounded to the step
    tilt_step_deg: float = 3.0
    tilt_scheme: str = "dose-symmetric"
    dose: float = 120.0  # e/Å² over the whole series
    noise: float = 1.0
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.07
    defocus_um: tuple[float, float] = (2.5, 4.5)  # underfocus at the tilt axis, per run
    defocus_jitter_um: float = 0.1  # per-tilt deviation from the run's defocus
    bfactor: tuple[float, float] = (50.0, 200.0)  # Å², envelope exp(-B k^2 / 4): drift, coherence, alignment
    tilt_axis_error_deg: float = 0.3  # std of the run's in-plane tilt-axis error
    tilt_angle_error_deg: float = 0.1  # std of each tilt's angle error
    shift_error_angstrom: float = 2.0  # std of each tilt's residual alignment shift
    # reconstruction
    deconv_strength: float = 1.0  # ctfdeconvolved: IsoNet/Warp-style Wiener filter
    deconv_falloff: float = 1.0
    isonet_fill: float = 0.6  # isonetcorrected: fraction of the missing wedge's signal restored

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) < 32:
            raise ConfigError(f"shape {self.shape} must be three sizes (z, y, x), each at least 32 voxels")
        object.__setattr__(self, "shape", shape)
        for name in _RANGES:
            try:
                lo, hi = (float(v) for v in getattr(self, name))
            except (TypeError, ValueError):
                raise ConfigError(f"{name} = {getattr(self, name)!r} must be a range [low, high]") from None
            if not 0 <= lo <= hi:
                raise ConfigError(f"{name} = {getattr(self, name)} must be a range (low, high) with 0 <= low <= high")
            object.__setattr__(self, name, (lo, hi))
        if not (0 < self.tilt_max_deg[0] and self.tilt_max_deg[1] < 90):
            raise ConfigError(f"tilt_max_deg {self.tilt_max_deg} must lie strictly between 0 and 90 degrees")
        if not 0 < self.tilt_step_deg <= self.tilt_max_deg[0]:
            raise ConfigError(f"tilt_step_deg {self.tilt_step_deg} must be > 0 and at most the smallest "
                              f"tilt_max_deg {self.tilt_max_deg[0]}")
        if not (0 < self.ice_fraction[0] and self.ice_fraction[1] <= 1):
            raise ConfigError(f"ice_fraction {self.ice_fraction} must lie in (0, 1]")
        for name, allowed in (("tilt_scheme", TILT_SCHEMES), ("templates", TEMPLATE_KINDS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        positive = ("density", "dose", "voltage_kv", "deconv_strength", "deconv_falloff")
        non_negative = ("noise", "jitter_angstrom", "distractors", "membranes", "gold", "intensity_jitter",
                        "cs_mm", "defocus_jitter_um", "tilt_axis_error_deg", "tilt_angle_error_deg",
                        "shift_error_angstrom", "isonet_fill")
        bad = [n for n in positive if not getattr(self, n) > 0]
        bad += [n for n in non_negative if not getattr(self, n) >= 0]
        if bad:
            raise ConfigError(f"SynthConfig: {', '.join(bad)} out of range ({', '.join(positive)} must be > 0; "
                              "the others >= 0)")
        if not 0 <= self.amplitude_contrast < 1 or self.isonet_fill > 1 or self.distractor_species < 1:
            raise ConfigError("SynthConfig: amplitude_contrast must be in [0, 1), isonet_fill in [0, 1] and "
                              "distractor_species >= 1")

    @classmethod
    def preset(cls, name: str = "default", **overrides) -> SynthConfig:
        """A named preset (``PRESETS``) with optional field overrides, e.g. ``preset("hard", shape=...)``."""
        if name not in PRESETS:
            raise ConfigError(f"unknown synthetic preset {name!r}; choose from {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, values: dict) -> SynthConfig:
        """Build from plain values (YAML, JSON, --set), naming any unknown key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown synthetic setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


PRESETS: dict[str, dict] = {
    # the real data, as far as its published acquisition settings go
    "default": {},
    # the held-out stress test (issue 14): half the dose, 2.5x the non-target complexes, twice the
    # membranes and gold, a wider defocus range, series that lost their highest tilts, larger errors
    "hard": dict(dose=60.0, distractors=375.0, distractor_species=12, membranes=8.0, gold=16.0,
                 defocus_um=(2.0, 5.5), tilt_max_deg=(51.0, 60.0), tilt_axis_error_deg=0.6,
                 tilt_angle_error_deg=0.2, shift_error_angstrom=4.0),
    # only the targets, noise-free and perfectly aligned: what remains is where the picks say
    "clean": dict(noise=0.0, distractors=0.0, membranes=0.0, gold=0.0, jitter_angstrom=0.0,
                  intensity_jitter=0.0, defocus_jitter_um=0.0, tilt_axis_error_deg=0.0,
                  tilt_angle_error_deg=0.0, shift_error_angstrom=0.0),
}
