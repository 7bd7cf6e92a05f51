"""Checkpoint conversion: ``convert`` rewrites an Ultralytics checkpoint with torch.nn or fused activations."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .sites import Counts
from .swap import _convert


def _load_checkpoint(src: Path) -> dict:
    from ultralytics.nn.tasks import BaseModel

    try:
        ckpt = torch.load(src, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"{src} is not an Ultralytics checkpoint: torch.load failed ({type(e).__name__}: {e})") from e
    if not (isinstance(ckpt, dict) and any(isinstance(ckpt.get(k), BaseModel) for k in ("model", "ema"))):
        found = f"keys {list(ckpt)[:8]}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(
            f"{src} is not an Ultralytics checkpoint: no Ultralytics model under 'model' or 'ema' ({found})"
        )
    return ckpt


def _save_atomic(obj: Any, dst: Path, forbidden: str | None) -> None:
    """Writes a temporary file next to ``dst``, checks that no global of module ``forbidden`` is needed to load
    it, then renames it: ``dst`` is never left half-written."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        if forbidden:
            left = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(tmp) if g.startswith(forbidden)]
            if left:
                raise RuntimeError(f"{dst} would still need {left} to load")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def convert(src: str | Path, dst: str | Path, to: str = "torch") -> dict[str, Counts]:
    """Rewrites Ultralytics checkpoint ``src`` (model and EMA) to ``dst`` with torch.nn activations
    (``to="torch"``: loads with plain Ultralytics, ``ULTRALYTICS_SAFE_LOAD=1`` included) or fused ones
    (``to="fused"``). ``src`` is only read. Returns the counts by checkpoint key."""
    if to not in ("torch", "fused"):
        raise ValueError(f"to must be 'torch' or 'fused', got {to!r}")
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"checkpoint {src} not found")
    if dst.resolve() == src.resolve():
        raise ValueError(f"out {dst} is the input: convert writes a new file and never modifies its input")
    ckpt = _load_checkpoint(src)
    counts = {key: _convert(ckpt[key], to) for key in ("model", "ema") if isinstance(ckpt.get(key), nn.Module)}
    _save_atomic(ckpt, dst, "rtdetr_fused" if to == "torch" else None)
    return counts
