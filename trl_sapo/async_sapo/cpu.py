"""What TRL 1.16's AsyncGRPOTrainer assumes only a CUDA machine has, given a plain-torch path off CUDA.

* Tree attention for packed rows calls FlashAttention-3's `flash_attn_varlen_func`, fetched through the `kernels`
  package (trl/experimental/async_grpo/packing.py `_flash_attn`, L159-165). `enable_cpu_support()` replaces that
  lookup with a kernel that dispatches on the device of its inputs: CUDA tensors still go to FlashAttention-3,
  anything else to `varlen_attention` below. TRL's own `tree_attention` (the gather along each tree path, the
  bottom-right causal alignment) runs unchanged either way.
* The MFU metric looks the device's peak FLOPs up with `torch.cuda.get_device_name` (trl/trainer/utils.py
  `get_peak_flops_per_device`), which raises on a CPU-only torch. Off CUDA it now returns None, which TRL reads as
  "MFU unknown" and skips those two metrics.

Both replacements are process-wide, idempotent, and leave CUDA behaviour untouched.
"""

from __future__ import annotations

import torch
from trl.experimental.async_grpo import async_grpo_trainer, packing


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    softmax_scale: float | None = None,
    causal: bool = True,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
) -> torch.Tensor:
    """`flash_attn_varlen_func` in plain torch: segment s attends query rows `cu_seqlens_q[s]:cu_seqlens_q[s+1]`
    to key/value rows `cu_seqlens_k[s]:cu_seqlens_k[s+1]`.

    Shapes: query (total_q, H, D), key/value (total_k, H_kv, D) with H a multiple of H_kv (grouped-query attention).
    The causal mask is aligned bottom-right (query i of a segment sees keys j ≤ i + len_k − len_q), as FlashAttention
    does; `window_size=(left, right)` with left ≥ 0 also hides keys more than `left` positions back. Softmax in
    float32; returns (total_q, H, D) in the query's dtype.
    """
    if softmax_scale is None:
        softmax_scale = query.shape[-1] ** -0.5
    groups = query.shape[1] // key.shape[1]
    out = torch.empty_like(query)
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for s in range(len(bounds_q) - 1):
        q = query[bounds_q[s] : bounds_q[s + 1]].transpose(0, 1)  # (H, lq, D)
        k = key[bounds_k[s] : bounds_k[s + 1]].repeat_interleave(groups, dim=1).transpose(0, 1)
        v = value[bounds_k[s] : bounds_k[s + 1]].repeat_interleave(groups, dim=1).transpose(0, 1)
        len_q, len_k = q.shape[1], k.shape[1]
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * softmax_scale
        if softcap:
            scores = softcap * torch.tanh(scores / softcap)
        i = torch.arange(len_q, device=q.device)[:, None] + (len_k - len_q)  # query position on the key axis
        j = torch.arange(len_k, device=q.device)[None, :]
        visible = j <= i if causal else torch.ones_like(j <= i)
        if window_size[0] >= 0:
            visible = visible & (j >= i - window_size[0])
        scores = scores.masked_fill(~visible, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[bounds_q[s] : bounds_q[s + 1]] = torch.matmul(probs, v.float()).transpose(0, 1).to(query.dtype)
    return out


class _DeviceDispatchKernel:
    """Stands in for the FlashAttention-3 kernel module: CUDA inputs use the real kernel, others `varlen_attention`."""

    def __init__(self, cuda_kernel_loader):
        self._cuda_kernel_loader = cuda_kernel_loader

    def flash_attn_varlen_func(self, query, *args, **kwargs):
        if query.is_cuda:
            return self._cuda_kernel_loader().flash_attn_varlen_func(query, *args, **kwargs)
        return varlen_attention(query, *args, **kwargs)


def _peak_flops_or_none(cuda_lookup):
    def get_peak_flops_per_device(accelerator, dtype):
        if accelerator.device.type != "cuda" or not torch.cuda.is_available():
            return None  # TRL skips MFU logging when the peak is unknown
        return cuda_lookup(accelerator, dtype)

    get_peak_flops_per_device._trl_sapo_cpu_path = True
    return get_peak_flops_per_device


def enable_cpu_support() -> None:
    """Install the two CPU paths described in the module docstring (idempotent)."""
    if not isinstance(getattr(packing, "_flash_attn_kernel", None), _DeviceDispatchKernel):
        kernel = _DeviceDispatchKernel(packing._flash_attn)
        packing._flash_attn_kernel = kernel
        packing._flash_attn = lambda: kernel  # tree_attention looks this global up at call time
    lookup = async_grpo_trainer.get_peak_flops_per_device
    if not getattr(lookup, "_trl_sapo_cpu_path", False):
        async_grpo_trainer.get_peak_flops_per_device = _peak_flops_or_none(lookup)
