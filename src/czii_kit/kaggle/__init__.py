"""Kaggle delivery: pack weights and wheels into a dataset (pack.py), check the image can install them before
``pip install`` (preflight.py, standard library only), and the machine facts the notebook decides by
(environment.py: the GPUs, the engine to run, whether CUDA runs at all)."""
from __future__ import annotations

from czii_kit.kaggle.environment import (Environment, GpuInfo, check_cuda_runs, choose_engine, describe_gpus,
                                         format_environment)
from czii_kit.kaggle.pack import Pack, PackResult, pack_dataset, read_pack

__all__ = ["Environment", "GpuInfo", "Pack", "PackResult", "check_cuda_runs", "choose_engine", "describe_gpus",
           "format_environment", "pack_dataset", "read_pack"]
