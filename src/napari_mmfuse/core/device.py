"""Choose the compute device once, and retry on smaller tiles when the GPU runs out of memory."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import torch

ENV_VAR = "MMFUSE_DEVICE"
T = TypeVar("T")


def get_device(prefer: str | torch.device | None = None) -> torch.device:
    """Return the device to compute on.

    Parameters
    ----------
    prefer : str or torch.device, optional
        Explicit choice ("cpu", "cuda", "cuda:1", "mps"). Without it the
        ``MMFUSE_DEVICE`` environment variable is used, then CUDA > MPS > CPU.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        If the requested device is not available on this machine.
    """
    choice = prefer if prefer is not None else os.environ.get(ENV_VAR) or None
    if choice is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(choice)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {choice!r}; choose one of {available_devices()}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {choice!r}; choose one of {available_devices()}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {choice!r} requested but CUDA is not available; use 'cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {choice!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s); "
                         f"choose one of {available_devices()}")
    if device.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise ValueError(f"device {choice!r} requested but MPS is not available; use 'cpu'")
    return device


def available_devices() -> list[str]:
    """Names of the devices present: "cpu", then "cuda" and "cuda:N" per GPU, then "mps"."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names


def is_out_of_memory(error: BaseException) -> bool:
    """Tell whether ``error`` is a device out-of-memory error."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def with_oom_retry(run: Callable[[int], T], *, tile: int, min_tile: int = 16) -> T:
    """Call ``run(tile)``, halving ``tile`` after each out-of-memory error.

    Parameters
    ----------
    run : callable
        Computes the result with tiles of the given edge length.
    tile : int
        First tile edge length to try.
    min_tile : int
        Below this edge length the out-of-memory error is raised.

    Returns
    -------
    The value returned by ``run``.
    """
    while True:
        try:
            return run(tile)
        except Exception as error:  # noqa: BLE001 - re-raised unless it is an OOM
            if not is_out_of_memory(error) or tile // 2 < min_tile:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            tile //= 2
