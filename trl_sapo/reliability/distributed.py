"""The one collective the reliability features share: every rank learns whether any rank saw a problem."""

from __future__ import annotations

import torch


def any_rank(flag: bool, accelerator) -> bool:
    """True on every rank if `flag` is True on any rank (one tiny all-reduce when there are several processes)."""
    if accelerator.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() > 0)
