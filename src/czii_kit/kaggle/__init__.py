"""Kaggle delivery: pack weights and wheels into a dataset (pack.py), and the choices the notebook makes there."""
from __future__ import annotations

from czii_kit.errors import ConfigError
from czii_kit.kaggle.pack import Pack, PackResult, pack_dataset, read_pack

__all__ = ["Pack", "PackResult", "choose_engine", "pack_dataset", "read_pack"]


def choose_engine(requested: str, device: str) -> str:
    """The engine to run here: TensorRT needs a CUDA GPU and the tensorrt package, else torch (fp16 on GPU).

    Kaggle's image may lack tensorrt; a warning and torch beat a failed submission.
    """
    if requested != "tensorrt" or device == "cpu":
        return "torch" if requested == "tensorrt" else requested
    from czii_kit.infer.engines import require_tensorrt

    try:
        require_tensorrt()
    except ConfigError as e:
        print(f"WARNING: {e}\nfalling back to --engine torch (fp16 autocast on a GPU, fp32 on the CPU)")
        return "torch"
    return "tensorrt"
