"""The CPU engine keeps the memory of freed tensors for the next batch: a batch's logits and probabilities (46 MB
each for four 256-px windows of 44 classes) reuse mapped pages instead of page-faulting fresh ones in every time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from landcover.inference.torch_engine import reuse_freed_memory

BATCHES = """
import resource, sys
import torch
import torch.nn.functional as F
if sys.argv[1] == "tuned":
    from landcover.inference.torch_engine import reuse_freed_memory
    assert reuse_freed_memory()
x = torch.randn(4, 16, 256, 256).contiguous(memory_format=torch.channels_last)
w = torch.randn(44, 16, 3, 3).contiguous(memory_format=torch.channels_last)
def batch():  # a U-Net's classifier convolution and the engine's softmax
    logits = F.conv2d(x, w, padding=1)
    return torch.softmax(logits.permute(0, 2, 3, 1), -1).sum()
with torch.inference_mode():
    batch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        batch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = 4 * 44 * 256 * 256 * 4 // 4096  # one batch's logits


def minor_faults(mode: str) -> int:
    proc = subprocess.run([sys.executable, "-c", BATCHES, mode], capture_output=True, text=True, check=True)
    return int(proc.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_batchs_large_tensors_reuse_the_pages_of_the_last_batch() -> None:
    assert reuse_freed_memory()  # glibc here
    untuned, tuned = minor_faults("plain"), minor_faults("tuned")
    assert untuned >= 5 * PAGES  # logits and probabilities mapped afresh in each of the 5 batches: ~10 x PAGES
    assert tuned <= 2 * PAGES
