"""Score blocks `q @ g.T` in float32, through oneDNN on the CPU when it is there.

On the CPU, torch's float32 matmul goes to MKL, which runs its AVX2 kernels on AMD
processors; oneDNN (bundled with torch as mkldnn) picks its kernels from the instruction set
(AVX-512 where present) and measured 2.2x MKL's rate on the EPYC used for `make bench`
(512 x 4096 x 128 blocks: ~500 vs ~230 GFLOP/s on 2 threads). Same arithmetic: float32
products and float32 accumulation (only under `torch.set_float32_matmul_precision
("highest")`, the default; other settings keep torch's own matmul). Elsewhere (GPU, other
dtypes, a torch build without mkldnn, or if the op is refused) it is plain `q @ g.T`.

The op is `torch.ops.mkldnn._linear_pointwise` (what torch.compile emits for CPU linear
layers): not a documented API, hence the fallback on any error.
"""

from __future__ import annotations

import torch

_state = {"onednn": None}  # None: not tried yet; then True / False


def _onednn_ready() -> bool:
    if _state["onednn"] is None:
        ok = bool(torch.backends.mkldnn.is_available()
                  and hasattr(torch.ops.mkldnn, "_linear_pointwise"))
        if ok:  # one tiny call: the op exists and agrees with torch's matmul
            a = torch.arange(12, dtype=torch.float32).reshape(3, 4)
            try:
                ok = torch.equal(_linear(a, a), a @ a.T)
            except RuntimeError:
                ok = False
        _state["onednn"] = ok
    return bool(_state["onednn"])


def _linear(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(q, g, None, "none", [], "")


def scores_t(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """`q @ g.T` for float32 [m, d] and [n, d]: a new [m, n] float32 tensor."""
    if (q.device.type == "cpu" and g.device.type == "cpu" and q.dtype == torch.float32
            and g.dtype == torch.float32 and q.shape[0] > 0 and g.shape[0] > 0
            and torch.get_float32_matmul_precision() == "highest" and _onednn_ready()):
        try:
            return _linear(q.contiguous(), g.contiguous())
        except RuntimeError:
            _state["onednn"] = False
    return q @ g.T
