"""Device-specific kernels of the fused head: GEMM precision, layout and the softmax terms.

The fused loss (:mod:`dist_face.heads.sharded.fused_loss`) asks for three GEMMs per class block and
one exponential; how they run depends on the device:

* **precision** — the run's precision sets the GEMMs' input dtype (bf16/fp16 under a bf16/fp16
  run, with float32 accumulation); everything else (norms, margins, softmax statistics, the
  loss, the row update) stays float32. On CUDA (and on the meta device, which the step audit
  uses to stand for a GPU) the product is written in float32 (``torch.mm(out_dtype=)``); CPU
  kernels accumulate in float32 but round the product to the input dtype. Float32 runs on
  CUDA may use TF32 (``head.tf32``, on by default) for the head's GEMMs.
* **layout** — with MKL, ``zᵀ = w·x̂ᵀ`` transposed back is ~21 % faster than ``x̂·wᵀ`` (N = 64,
  D = 512: 9.1 against 11.5 ms per 4096 rows on one core, ``tools/bench_head.py --impls gemm
  gemm_xwt``); a GPU gets the direct product, without the copy.
* **subnormal floor** — on x86 CPUs ``exp`` takes a slow path for subnormal results (35×
  slower per element); the CPU clamps the exponent's argument, a GPU does not need to.
* **workspace** — reused CPU buffers avoid page faults (:mod:`~dist_face.heads.sharded.workspace`);
  CUDA's caching allocator already reuses memory, so a GPU allocates per block.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

LOW_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}


def gemm_dtype(precision: str) -> torch.dtype | None:
    """Input dtype of the head's GEMMs for a run's ``train.precision`` (None: float32)."""
    return LOW_PRECISION.get(precision)


class Kernels:
    """The head's kernels for one device type and precision.

    Args:
        device: the device the head computes on (``meta`` is treated as a GPU).
        low: GEMM input dtype (bf16/fp16), or None for the compute dtype itself.
        tf32: allow TF32 for float32 GEMMs on CUDA.
    """

    def __init__(self, device: torch.device, low: torch.dtype | None, tf32: bool = True) -> None:
        self.cpu = device.type == "cpu"
        self.low = low
        self.tf32 = tf32 and device.type == "cuda" and low is None

    def gemm_input(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` in the GEMMs' input dtype (itself when no low precision applies)."""
        if self.low is None or t.dtype != torch.float32:
            return t
        return t.to(self.low)

    def mm(self, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``a·b`` of GEMM inputs, in float32 (the compute dtype for float32/64 inputs).

        ``out``: a reused buffer to write into on the CPU; ignored for low-precision inputs on
        a GPU, whose product is a fresh tensor.
        """
        if a.dtype not in LOW_PRECISION.values():
            return torch.mm(a, b, out=out)
        if self.cpu:  # no float32-output kernel on the CPU: the product is rounded once
            prod = torch.mm(a, b).float()
            return prod if out is None else out.copy_(prod)
        # a GPU's caching allocator reuses memory: no copy into the CPU's workspace buffer
        return torch.mm(a, b, out_dtype=torch.float32)

    def add_mm_(self, acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``acc += a·b`` (``acc`` float32)."""
        if a.dtype == acc.dtype:
            return acc.addmm_(a, b)
        return acc.add_(self.mm(a, b))

    def project(self, w: torch.Tensor, xin: torch.Tensor) -> torch.Tensor:
        """``z = xin · wᵀ`` ``[N, Kc]`` row-major, float32, from GEMM inputs."""
        if self.cpu:  # zᵀ = w·xinᵀ, transposed back: the faster GEMM with MKL
            return self.mm(w, xin.T).T.contiguous()
        return self.mm(xin, w.T)

    def exp_shifted(self, logits: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """``exp(logits − shift[:, None])`` ``[N, Kc]``.

        On the CPU, arguments below ``log(finfo.tiny) + 1`` (−86.3 in float32) give
        ``e · tiny`` instead of a subnormal or 0: an error of at most ``3e-38`` per term next
        to a denominator ≥ 1, to avoid the slow subnormal path of ``exp`` (15 ms against
        0.4 ms for ``[64, 4096]`` float32 on the 2-core test machine).
        """
        out = logits - shift[:, None]
        if self.cpu:
            out.clamp_min_(math.log(torch.finfo(logits.dtype).tiny) + 1.0)
        return out.exp_()

    @contextlib.contextmanager
    def precision(self) -> Iterator[None]:
        """TF32 for the float32 GEMMs inside, when enabled (CUDA only); restored after."""
        if not self.tf32:
            yield
            return
        before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before
