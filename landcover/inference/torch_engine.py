"""The PyTorch engine of ``predict``: a checkpoint's model on CPU (channels-last, float32 or bf16) or CUDA
(autocast), fed raw windows that it normalises with the checkpoint's statistics."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from landcover.errors import ConfigError
from landcover.inference.checkpoint import LoadedModel, load_checkpoint, probabilities, resolve_device
from landcover.inference.graph_rewrites import optimise_for_cpu

# glibc's mallopt parameters (malloc.h): blocks below MMAP_THRESHOLD come from the heap, which is trimmed (given
# back to the system) only beyond TRIM_THRESHOLD
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD, TRIM_THRESHOLD = 256 << 20, 1 << 30


def normalise(
    x: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    valid: torch.Tensor | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """Raw windows (B, C, H, W) -> ``(x - mean) / std``, 0 where a pixel is 0 in every band (as in training).

    ``valid``: (B, 1, H, W), where any band is not 0, when the caller has it. Written into one new tensor of
    ``memory_format`` by three in-place passes (2.5x faster than the expression's six on a CPU; the same
    arithmetic, so the same values)."""
    x = x.float()
    valid = (x != 0).any(dim=1, keepdim=True) if valid is None else valid
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format)
    return torch.sub(x, mean, out=out).div_(std).mul_(valid)


class TorchEngine:
    """A loaded checkpoint run by PyTorch."""

    name, backend = "torch", "torch"

    def __init__(self, lm: LoadedModel, device: torch.device, precision: str):
        self.lm, self.info, self.dev = lm, lm.info(), device
        self.device = str(device)
        self.amp = _autocast_dtype(device, precision)
        self.precision = {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self.amp]
        lm.model.to(device).eval()
        # on a CPU: batch norms folded into the convolutions before them, upsampling convolutions on the coarse
        # grid (graph_rewrites), and channels-last memory format: the same float32 arithmetic up to rounding,
        # laid out for the CPU kernels (docs/benchmarks.md: each lever)
        self.channels_last = device.type == "cpu" and any(isinstance(m, nn.Conv2d) for m in lm.model.modules())
        if device.type == "cpu":
            reuse_freed_memory()
        if self.channels_last:
            self.lm = dataclasses.replace(
                lm, model=optimise_for_cpu(lm.model, len(lm.bands)).to(memory_format=torch.channels_last)
            )
        self.classes_last = self.channels_last and lm.task == "segmentation"  # a layout hint for the strip
        self.mean = torch.from_numpy(lm.mean.reshape(1, -1, 1, 1)).to(device)
        self.std = torch.from_numpy(lm.std.reshape(1, -1, 1, 1)).to(device)

    @classmethod
    def load(
        cls,
        model: str | Path | LoadedModel,
        *,
        device: str = "auto",
        precision: str = "auto",
        threads: int | None = None,
    ) -> TorchEngine:
        if threads:
            torch.set_num_threads(threads)
        lm = model if isinstance(model, LoadedModel) else load_checkpoint(model)
        return cls(lm, resolve_device(device), precision)

    def tensor(self, raw: np.ndarray) -> torch.Tensor:
        """Raw windows on the device, normalised (uint16 travels as int16 to a GPU: torch's uint16 is partial)."""
        if self.dev.type == "cuda":
            travel = raw.view(np.int16) if raw.dtype == np.uint16 else raw.astype(np.float32)
            x = torch.from_numpy(travel).pin_memory().to(self.dev, non_blocking=True)
            x = x.to(torch.int32).bitwise_and_(0xFFFF) if x.dtype == torch.int16 else x
            return normalise(x, self.mean, self.std)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        valid = torch.from_numpy(raw.any(axis=1, keepdims=True))
        return normalise(torch.from_numpy(raw.astype(np.float32, copy=False)), self.mean, self.std, valid, layout)

    def probabilities(self, raw: np.ndarray) -> torch.Tensor:
        with torch.inference_mode(), _out_of_memory(len(raw), raw.shape[-1]):
            return probabilities(self.lm, self.tensor(raw), self.amp)


@functools.cache
def reuse_freed_memory() -> bool:
    """Keep the memory of freed tensors for the next ones (glibc's malloc; elsewhere nothing changes); True if set.

    Every batch makes tensors of the same sizes: the network's activations, its logits and the probabilities
    (46 MB each for four 256-px windows of 44 classes). glibc serves blocks above 32 MB with fresh ``mmap`` pages
    and unmaps them when freed, so each batch page-faults its largest tensors in again (the kernel zeroes every
    page): 45 % of the time of the classifier's convolution and 60 % of the softmax here. Served from the heap and
    not trimmed, they mostly reuse pages already mapped (docs/benchmarks.md: predict 9-13 % faster end to end,
    5x fewer page faults), at a cost of 50-250 MB more peak memory (a whole tile: +102 MB; holes the heap cannot
    give back) and memory that stays with the process until it ends. The reuse PyTorch's and Intel's CPU tuning
    guides get by preloading jemalloc or TCMalloc, set from inside the process; it applies to the whole process,
    so only the CPU engine sets it.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):  # not glibc (macOS, Windows)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def _autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    if device.type == "cuda":
        if precision == "fp32":
            return None
        return torch.bfloat16 if precision == "bf16" or torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16":
        if not _cpu_has_bf16():
            raise ConfigError("--precision bf16: this CPU has no bfloat16 instructions (AVX512-BF16/AMX); use fp32")
        return torch.bfloat16
    return None


def _cpu_has_bf16() -> bool:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        flags = fh.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


@contextlib.contextmanager
def _out_of_memory(batch_size: int, tile: int) -> Iterator[None]:
    """A GPU out of memory as a ConfigError naming the options that reduce it."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as exc:
        raise ConfigError(
            f"the GPU ran out of memory with --batch-size {batch_size} and {tile}-px windows; "
            "pass a smaller --batch-size (or --tile)"
        ) from exc
