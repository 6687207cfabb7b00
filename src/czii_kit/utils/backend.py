"""NumPy/CuPy array-module selection: one implementation of every algorithm, CPU or GPU.

Functions take ``xp = get_xp(array)`` and use ``xp.*`` (and ``get_ndimage(xp)``) instead of
``np.*``, so the same code runs with NumPy/SciPy on CPU and CuPy on GPU, chosen by the
type of the input. CuPy is imported only when an input is a CuPy array or the GPU is
asked for explicitly; importing this module never imports it.
"""
from __future__ import annotations

import contextlib
import importlib.util
from types import ModuleType

import numpy as np


def is_cupy_array(array) -> bool:
    """True for a CuPy array, decided from its type so that CuPy need not be imported."""
    return type(array).__module__.split(".")[0] == "cupy"


def get_xp(array=None, *, gpu: bool = False) -> ModuleType:
    """The array module for ``array`` (cupy for a CuPy array, else numpy); ``gpu=True`` forces cupy."""
    if gpu or is_cupy_array(array):
        import cupy

        return cupy
    return np


def get_ndimage(xp: ModuleType) -> ModuleType:
    """``scipy.ndimage`` for numpy, ``cupyx.scipy.ndimage`` for cupy."""
    if xp is np:
        import scipy.ndimage

        return scipy.ndimage
    import cupyx.scipy.ndimage

    return cupyx.scipy.ndimage


def to_numpy(array) -> np.ndarray:
    """A NumPy array on the host, copying from the GPU when ``array`` is a CuPy array."""
    if is_cupy_array(array):
        return array.get()
    return np.asarray(array)


_warned_no_cupy = False
_CUPY_FAILED: dict[int, str] = {}  # GPU index -> why CuPy does not run there (its probe failed)


def record_cupy_failure(index: int, reason: str | None) -> None:
    """What a probe of CuPy on GPU ``index`` found: None when it runs, else why (then peaks go to the host)."""
    if reason is None:
        _CUPY_FAILED.pop(int(index), None)
    else:
        _CUPY_FAILED[int(index)] = reason


def cupy_failure(index: int) -> str | None:
    return _CUPY_FAILED.get(int(index))


def from_torch(tensor):
    """The array behind a torch tensor, where it already is, without a copy: a NumPy view on CPU,
    a CuPy array through DLPack on a GPU (so the peak finder runs there and only candidate lists
    cross to the host). Without CuPy on a GPU machine, or on a GPU where its probe failed
    (``record_cupy_failure``), the tensor is copied to the host."""
    global _warned_no_cupy
    tensor = tensor.detach()
    if tensor.device.type == "cpu":
        return tensor.numpy()
    if cupy_failure(tensor.device.index or 0) is not None:
        return tensor.cpu().numpy()  # said once, when the probe failed
    try:
        import cupy
    except ImportError:
        if not _warned_no_cupy:
            import logging

            logging.getLogger(__name__).warning(
                "CuPy is not installed: probability volumes are copied to the host and peaks are found on the "
                "CPU (pip install cupy-cuda12x for GPU peak finding)")
            _warned_no_cupy = True
        return tensor.cpu().numpy()
    with cupy.cuda.Device(tensor.device.index or 0):
        return cupy.from_dlpack(tensor.contiguous())


@contextlib.contextmanager
def use_device(device):
    """Make ``device`` current for torch and CuPy in this thread (CUDA devices only; CPU is a no-op).

    CUDA's current device is per host thread: a worker for cuda:1 must make it current itself, or
    kernels, TensorRT contexts and CuPy arrays silently land on GPU 0.
    """
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        yield
        return
    index = device.index or 0
    with torch.cuda.device(index), contextlib.ExitStack() as stack:
        if importlib.util.find_spec("cupy") is not None:
            import cupy

            stack.enter_context(cupy.cuda.Device(index))
        yield
