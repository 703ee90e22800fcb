"""Blending a row of windows into finished map rows while carrying only the overlap.

Window (i, j) covers padded rows ``i * stride .. + tile`` and columns ``j * stride .. + tile``. Of a row of windows
only its last ``overlap`` rows are shared with the next row, and of a window only its last ``overlap`` columns with
the next window. So the strip keeps: the ``overlap`` rows the previous row of windows left (``carry``:
K x overlap x padded width, 124 MB for 44 classes over a full Sentinel-2 tile in float32) and a *work* buffer a
batch of windows wide (K x tile x (batch x stride + overlap)). When the next window would not fit the buffer,
every column left of it is finished: its top ``stride`` rows become map pixels, its bottom ``overlap`` rows go to
the carry, and the ``overlap`` columns still open move to the front. Arrays live with the engine: torch tensors
(on its device) or numpy arrays; this module imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from landcover.inference.sliding import Plan

FINISH_COLUMNS = 256  # columns finished at once (K x stride x 256 float32 temporaries: 8.7 MB for 44 classes)
Outputs = dict[str, np.ndarray]  # 'map' (rows, width); 'probabilities' (K, rows, width); 'confidence' (1, rows, width)


class NumpyOps:
    """Strip arithmetic on numpy arrays (the onnxruntime engine)."""

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.zeros(shape, np.float32)

    def asarray(self, a: np.ndarray) -> np.ndarray:
        return a

    def accumulate(self, acc: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> None:
        acc += (probs[:, None, None] if probs.ndim == 1 else probs) * weights

    def shift_left(self, buf: np.ndarray, n: int) -> None:
        """Move the last columns of ``buf`` left by ``n`` (numpy copies overlapping memory safely)."""
        buf[..., : buf.shape[-1] - n] = buf[..., n:]

    def finish(self, acc: np.ndarray, wsum: np.ndarray, probabilities: bool, confidence: bool) -> Outputs:
        p = acc / np.maximum(wsum, np.float32(1e-12))
        out = {"map": p.argmax(axis=0)}
        if probabilities:
            out["probabilities"] = np.clip(np.round(p * 255), 0, 255).astype(np.uint8)
        if confidence:
            out["confidence"] = np.clip(np.round(p.max(axis=0) * 255), 0, 255).astype(np.uint8)[None]
        return out


class TorchOps:
    """Strip arithmetic on torch tensors on the engine's device (the torch engine). With ``classes_last`` (the
    engine returns channels-last probabilities) the (K, rows, columns) buffers are stored classes-last too, so
    that adding a window reads and writes memory in order (3.7x faster than the transposing add on a CPU)."""

    def __init__(self, device: Any, classes_last: bool = False):
        import torch

        self.torch, self.device, self.classes_last = torch, device, classes_last

    def zeros(self, shape: tuple[int, ...]) -> Any:
        if self.classes_last and len(shape) == 3:
            return self.torch.zeros((*shape[1:], shape[0]), device=self.device).permute(2, 0, 1)
        return self.torch.zeros(shape, device=self.device)

    def asarray(self, a: np.ndarray) -> Any:
        return self.torch.from_numpy(a).to(self.device)

    def accumulate(self, acc: Any, probs: Any, weights: Any) -> None:
        acc.addcmul_(probs[:, None, None] if probs.ndim == 1 else probs, weights)

    def shift_left(self, buf: Any, n: int) -> None:
        buf[..., : buf.shape[-1] - n] = buf[..., n:].clone()  # the two views overlap

    def finish(self, acc: Any, wsum: Any, probabilities: bool, confidence: bool) -> Outputs:
        p = acc / wsum.clamp_min(1e-12)
        best, ids = p.max(dim=0)
        out = {"map": ids.cpu().numpy()}
        if probabilities:
            out["probabilities"] = p.mul(255).round_().clamp_(0, 255).to(self.torch.uint8).cpu().numpy()
        if confidence:
            out["confidence"] = best.mul(255).round_().clamp_(0, 255).to(self.torch.uint8).cpu().numpy()[None]
        return out


class Strip:
    """The blending state of one scene: the carried overlap rows and the work buffer of the current row."""

    def __init__(self, ops: NumpyOps | TorchOps, k: int, plan: Plan, weights: np.ndarray, batch_size: int):
        self.ops, self.k, self.plan = ops, k, plan
        t, o, pw = plan.tile, plan.overlap, plan.padded_width
        self.span = min(pw, max(1, batch_size) * plan.stride + o)  # work buffer width (>= tile)
        self.span = max(self.span, t)
        self.carry, self.wcarry = ops.zeros((k, o, pw)), ops.zeros((o, pw))
        self.work, self.wwork = ops.zeros((k, t, self.span)), ops.zeros((t, self.span))
        self.weights = ops.asarray(weights)
        self.base = 0  # padded column of the work buffer's first column
        self.sink: Callable[[int, int, Outputs], None] = lambda a, b, out: None
        self.rows = (0, 0)  # the finished rows of this row of windows that lie in the scene (strip rows)
        self.wanted = (False, False)  # probabilities, confidence

    def start_row(self, rows: tuple[int, int], sink: Callable[[int, int, Outputs], None]) -> None:
        """A new row of windows; ``sink(a, b, outputs)`` receives the finished padded columns a..b."""
        self.base, self.rows, self.sink = 0, rows, sink
        self._load(0, self.span)

    def add(self, j: int, probs: Any) -> None:
        """Window ``j`` of the row: probabilities (K, tile, tile), or (K,) for a whole tile."""
        c, t = j * self.plan.stride, self.plan.tile
        if c + t > self.base + self.span:
            self._advance(c)
        a = c - self.base
        self.ops.accumulate(self.work[:, :, a : a + t], probs, self.weights)
        self.wwork[:, a : a + t] += self.weights

    def end_row(self) -> None:
        """Finish every column of the row."""
        self._advance(self.plan.padded_width)

    def _advance(self, c: int) -> None:
        """Finish the padded columns before ``c``; the buffer then starts at ``c``."""
        while self.base < c:
            n = min(c - self.base, self.span, self.plan.padded_width - self.base)
            self._flush(n)
            keep = self.span - n  # columns of the buffer still open
            if keep > 0:
                self.ops.shift_left(self.work, n)
                self.ops.shift_left(self.wwork, n)
            self.base += n
            self._load(keep, self.span)

    def _load(self, lo: int, hi: int) -> None:
        """Buffer columns lo..hi start a new part of the row: the carried rows on top, zeros below."""
        o, pw = self.plan.overlap, self.plan.padded_width
        a, b = self.base + lo, min(self.base + hi, pw)
        top = o if b - a == hi - lo else 0  # rows the carry overwrites in every column: not zeroed first
        self.work[:, top:, lo:hi] = 0
        self.wwork[top:, lo:hi] = 0
        if o and b > a:
            self.work[:, :o, lo : lo + b - a] = self.carry[:, :, a:b]
            self.wwork[:o, lo : lo + b - a] = self.wcarry[:, a:b]

    def _flush(self, n: int) -> None:
        """The buffer's first ``n`` columns are finished: map rows out, the bottom overlap rows to the carry."""
        s, o, a = self.plan.stride, self.plan.overlap, self.base
        lo, hi = self.rows
        for c in range(0, n if hi > lo else 0, FINISH_COLUMNS):  # column chunks keep the temporaries small
            d = min(n, c + FINISH_COLUMNS)
            self.sink(a + c, a + d, self.ops.finish(self.work[:, lo:hi, c:d], self.wwork[lo:hi, c:d], *self.wanted))
        if o:
            self.carry[:, :, a : a + n] = self.work[:, s:, :n]
            self.wcarry[:, a : a + n] = self.wwork[s:, :n]
