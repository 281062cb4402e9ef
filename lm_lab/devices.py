"""One table of accelerator peaks: dense (no 2:4 sparsity) tensor-core TFLOP/s per GPU, each from its datasheet.

Used for MFU (achieved model FLOPs per second / the device's peak, PaLM App. B). NVIDIA's datasheets print sparse figures with an asterisk: the dense figure is half of it, and that is
what is written here. Lightning's own table logs no MFU on an H200 (it does not match "NVIDIA H200") and gives
the H100 NVL's sparse pair figure; so the lab matches `torch.cuda.get_device_name()` against this table instead.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch

from lm_lab.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Device:
    key: str
    """The table's short name (`a100`, `h100_sxm`, ...); `lookup` takes it as well as a CUDA device name."""
    pattern: str
    """A regular expression matched (case-insensitively) against `torch.cuda.get_device_name()`."""
    bf16: float | None
    """Dense bf16 tensor-core TFLOP/s (None: the device has no bf16 tensor cores)."""
    tf32: float | None
    fp32: float
    source: str
    fp16: float | None = None
    """Dense fp16 tensor-core TFLOP/s where it differs from bf16 (V100 has only fp16)."""

    def peak_tflops(self, dtype: str = "bf16") -> float:
        """The dense peak for `dtype` (bf16, fp16, tf32 or fp32), in TFLOP/s."""
        value = {"bf16": self.bf16, "fp16": self.fp16 or self.bf16, "tf32": self.tf32, "fp32": self.fp32}.get(dtype)
        if value is None:
            raise ConfigError(f"the {self.key} has no {dtype} peak in the device table; use another dtype")
        return value


# Order matters: the first match wins, so variants come before the plain name ("gh200" contains "h200").
DEVICES = (
    Device(
        "gh200", r"gh200", 989.4, 494.7, 67.0, "NVIDIA GH200 Grace Hopper datasheet (H100/H200 compute: 1979 sparse)"
    ),
    Device("h200_nvl", r"h200\s*nvl", 835.5, 417.5, 60.0, "NVIDIA H200 NVL datasheet (BF16 1671 sparse)"),
    Device("h200", r"h200", 989.4, 494.7, 67.0, "NVIDIA H200 SXM datasheet (BF16 1979 sparse)"),
    Device("h100_nvl", r"h100\s*nvl", 835.5, 417.5, 60.0, "NVIDIA H100 NVL datasheet, per GPU (BF16 1671 sparse)"),
    Device("h100_pcie", r"h100\s*pcie", 756.0, 378.0, 51.2, "NVIDIA H100 PCIe datasheet (BF16 1513 sparse)"),
    Device("h100_sxm", r"h100", 989.4, 494.7, 66.9, "NVIDIA H100 SXM datasheet (BF16 1979 sparse)"),
    Device("a100", r"a100", 312.0, 156.0, 19.5, "NVIDIA A100 datasheet (SXM4 and PCIe, 40 and 80 GB alike)"),
    Device("l40s", r"l40s", 362.05, 183.0, 91.6, "NVIDIA L40S datasheet (BF16 733 sparse)"),
    Device(
        "a10g",
        r"a10g?\b",
        125.0,
        62.5,
        31.2,
        "NVIDIA A10 datasheet (AWS's A10G variant has no NVIDIA datasheet of its own; A10 figures assumed)",
    ),
    Device("l4", r"\bl4\b", 121.0, 60.0, 30.3, "NVIDIA L4 datasheet (BF16 242 sparse)"),
    Device(
        "rtx_4090", r"rtx\s*4090", 165.2, 82.6, 82.6, "NVIDIA Ada whitepaper v2.1, RTX 4090 (BF16 with FP32 accumulate)"
    ),
    Device(
        "v100", r"v100", None, None, 15.7, "NVIDIA V100 SXM2 datasheet (fp16 tensor cores only; PCIe: 112)", fp16=125.0
    ),
)
BY_KEY = {d.key: d for d in DEVICES}


def lookup(name: str) -> Device | None:
    """The table's device for a `torch.cuda.get_device_name()` string or a table key, else None."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    if key in BY_KEY:
        return BY_KEY[key]
    return next((d for d in DEVICES if re.search(d.pattern, name, re.IGNORECASE)), None)


def compute_dtype(precision: str) -> str:
    """The matmul dtype of a Lightning precision: bf16, fp16, or for 32-bit tf32 unless matmuls are set to `highest`."""
    precision = str(precision)
    if "bf16" in precision:
        return "bf16"
    if "16" in precision:
        return "fp16"
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def peak_flops(device: torch.device, precision: str, override_tflops: float | None = None) -> float | None:
    """FLOP/s of `device` at `precision` from the table (None off CUDA, or for a GPU or dtype it lacks);
    `override_tflops` (budget.peak_tflops) stands in for the table, on any device."""
    if override_tflops is not None:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    found = lookup(name)
    if found is None:
        log.warning("GPU %r is not in lm_lab's device table: MFU is not logged", name)
        return None
    try:
        return found.peak_tflops(compute_dtype(precision)) * 1e12
    except ConfigError:
        return None
