"""bf16 on the CPU: whether it is native, and a warning when it is not (docs/training.md section 10)."""

from __future__ import annotations

import functools
import warnings


class SlowDtypeWarning(UserWarning):
    """bfloat16 was asked for on a CPU that has no native bf16 matrix multiply (it runs far slower than float32)."""


def cpu_bf16_native() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16/AMX, or AVX-512 that oneDNN uses for bf16).

    On an AVX2-only CPU torch falls back to a reference kernel: measured here (AMD EPYC, AVX2, one
    thread) 0.9 GFLOP/s for a 512 x 576 x 1536 bf16 product against 49.6 in float32.
    """
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without the oneDNN probe: judge by the vector ISA
        return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


@functools.cache
def warn_slow_cpu_bf16() -> None:
    """Warn once per process when bf16 compute runs on a CPU without native bf16 (see :func:`cpu_bf16_native`)."""
    import torch

    if cpu_bf16_native():
        return
    isa = torch.backends.cpu.get_cpu_capability()
    warnings.warn(f"bfloat16 on a CPU without native bf16 matrix multiply (torch sees {isa}): it runs 10-50x "
                  "slower than float32 (fix: dtype 'float32' or 'auto'; in a training config "
                  "model.dtype = \"float32\")", SlowDtypeWarning, stacklevel=3)
