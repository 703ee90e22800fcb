"""Load checkpoints and weight files without running code that a file may carry.

Every ``torch.load`` in landcover goes through :func:`load_torch_file`: ``weights_only=True``
(tensors, plain containers, numbers and strings only) is passed explicitly, so neither torch's
default nor ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` can turn it off. A pickle that would call
anything else (``__reduce__`` payloads: ``os.system``, ``open``, ...) is refused before it runs.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

from landcover.errors import ModelError, UnsafeFileError

_DETAIL = re.compile(r"WeightsUnpickler error:\s*(.+?)(?: was not an allowed global|\n\n|$)", re.S)


def _refusal_detail(exc: BaseException) -> str:
    match = _DETAIL.search(str(exc))
    detail = " ".join(match.group(1).split()) if match else type(exc).__name__
    return detail[:160]


def load_torch_file(path: str | Path, what: str, hint: str) -> Any:
    """``torch.load(path, map_location='cpu', weights_only=True)`` with one-line errors.

    A file whose unpickling would run code raises :class:`UnsafeFileError` (nothing of it is
    executed); an unreadable one :class:`ModelError`. ``what`` names the file's role
    ('checkpoint', 'weights'), ``hint`` says what to use instead.
    """
    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # garbage, or pickle opcodes torch does not load
            detail = _refusal_detail(exc) if "Weights only load failed" in str(exc) else str(exc)[:160]
            raise ModelError(
                f"cannot read {what} {path} (not a tensor-only PyTorch file: {detail}); the file "
                f"is truncated or not a PyTorch file: copy it again, or {hint}"
            ) from exc
        raise UnsafeFileError(
            f"refused to load {what} {path}: unpickling it would run code or build objects that are not "
            f"tensors ({_refusal_detail(exc)}); nothing of it was executed. Only tensor-only files are "
            f"loaded: {hint}"
        ) from exc
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ModelError(
            f"cannot read {what} {path} ({type(exc).__name__}: {first}); the file is truncated or "
            f"not a PyTorch file: copy it again, or {hint}"
        ) from exc
