"""Numeric precision and CUDA speed settings for both training loops.

``precision`` in an experiment is ``auto | fp32 | bf16 | fp16``:

* ``auto`` picks bf16 where the device computes it natively (CUDA compute
  capability 8.0 and newer: A100, H100, RTX 30xx/40xx; CPUs with AVX512-BF16
  or AMX), else fp16 with gradient scaling on GPUs with fast fp16 (tensor
  cores from 7.0, e.g. the paper's RTX 2060 and T4s at 7.5), else fp32. On a
  CPU ``auto`` never picks fp16: CPU fp16 kernels are slower than fp32.
* ``bf16`` / ``fp16``: autocast to that type (fp16 always with a
  ``GradScaler``: fp16 gradients underflow without one). ``bf16`` on a GPU
  without native bf16 is refused (torch would emulate it, slower than fp32).
* ``fp32``: no autocast. On CUDA, matmuls and convolutions then use TF32 on
  Ampere and newer unless ``cuda.tf32: false``.

:func:`resolve_precision` is the whole rule as a pure function of the device's
capability (tests pass capabilities in; nothing here reads the hardware).
:func:`prepare` reads the hardware once and returns an :class:`Amp` that the
loops use for autocast, gradient scalers and the run's logged params.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Literal

import torch

from liverlab.errors import LiverlabError

Resolved = Literal["fp32", "bf16", "fp16"]
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def fast_fp16(capability: tuple[int, int] | None) -> bool:
    """CUDA GPUs whose fp16 is faster than fp32: tensor cores (7.0+) and the P100 / Jetson parts.

    Consumer Pascal (6.1: GTX 10xx) runs fp16 at 1/64 of its fp32 rate.
    """
    if capability is None:
        return False
    return capability >= (7, 0) or capability in {(5, 3), (6, 0), (6, 2)}


def resolve_precision(
    requested: str, device_type: str, capability: tuple[int, int] | None, bf16_supported: bool
) -> Resolved:
    """The precision a run uses, from what was asked and what the device can do.

    Args:
        requested: the config's ``precision`` (auto, fp32, bf16, fp16).
        device_type: ``cuda`` or ``cpu`` (anything else gets fp32 for ``auto``).
        capability: the CUDA compute capability (major, minor), None on a CPU.
        bf16_supported: native bf16 on this device (CUDA: capability >= 8.0;
            CPU: AVX512-BF16 or AMX).
    """
    if requested not in ("auto", "fp32", "bf16", "fp16"):
        raise LiverlabError(f"precision: {requested!r} is not one of auto, fp32, bf16, fp16")
    cuda = device_type == "cuda"
    if requested == "bf16" and cuda and not bf16_supported:
        cap = f"{capability[0]}.{capability[1]}" if capability else "unknown"
        raise LiverlabError(
            f"precision: bf16 was requested but this GPU (compute capability {cap}) has no native bf16 "
            "(8.0+ has it); use precision: auto (fp16 with gradient scaling here) or fp16"
        )
    if requested != "auto":
        return requested  # type: ignore[return-value]
    if cuda:
        if bf16_supported:
            return "bf16"
        return "fp16" if fast_fp16(capability) else "fp32"
    if device_type == "cpu" and bf16_supported:
        return "bf16"
    return "fp32"


def cpu_bf16_supported() -> bool:
    """Native bf16 on this CPU (AVX512-BF16 or AMX tiles), where torch can tell."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def device_facts(device: torch.device) -> tuple[tuple[int, int] | None, bool]:
    """(capability, bf16_supported) of ``device``, read from the hardware."""
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        return capability, capability >= (8, 0)
    if device.type == "cpu":
        return None, cpu_bf16_supported()
    return None, False


def device_precision(requested: str, device: torch.device) -> Resolved:
    """:func:`resolve_precision` for a real device."""
    capability, bf16 = device_facts(device)
    return resolve_precision(requested, device.type, capability, bf16)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast for bf16 / fp16 (``auto`` is resolved for ``device``), a no-op for fp32."""
    resolved = device_precision(precision, device) if precision == "auto" else precision
    if resolved in DTYPES:
        return torch.autocast(device.type, dtype=DTYPES[resolved])
    return contextlib.nullcontext()


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A ``GradScaler`` that scales only for fp16 (disabled, it passes calls straight through)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def configure_cuda(tf32: bool, cudnn_benchmark: bool) -> None:
    """TF32 for fp32 matmuls and convolutions (Ampere+), cuDNN autotuning (fixed input sizes).

    Only the legacy flags are set, through ``set_float32_matmul_precision`` for
    matmuls: torch 2.13 raises when code mixes them with the new
    ``fp32_precision`` properties, and this pair keeps both views consistent.
    """
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = cudnn_benchmark


@dataclass(frozen=True)
class Amp:
    """A run's resolved precision on its device: autocast, scalers, logged params."""

    device: torch.device
    precision: Resolved
    tf32: bool = False
    cudnn_benchmark: bool = False

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.device, self.precision)

    def scaler(self) -> torch.amp.GradScaler:
        return grad_scaler(self.device, self.precision)

    def params(self) -> dict[str, str]:
        """What the run actually used (MLflow params ``resolved.*``; the config keeps what was asked)."""
        device = f"cuda ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda" else self.device.type
        out = {"resolved.precision": self.precision, "resolved.device": device}
        if self.device.type == "cuda":
            out.update({"resolved.tf32": str(self.tf32).lower(), "resolved.cudnn_benchmark": str(self.cudnn_benchmark).lower()})
        return out


def prepare(config: Any, device: torch.device) -> Amp:
    """Resolve ``config.precision`` for ``device``; on CUDA apply ``config.cuda`` (TF32, cudnn.benchmark)."""
    amp = Amp(device, device_precision(config.precision, device))
    if device.type == "cuda":
        cuda = config.cuda
        configure_cuda(cuda.tf32, cuda.cudnn_benchmark)
        amp = Amp(device, amp.precision, cuda.tf32, cuda.cudnn_benchmark)
    return amp
