"""The device table: the names `torch.cuda.get_device_name()` returns matched to dense peaks, and MFU from it."""

import pytest

from lm_lab.devices import BY_KEY, lookup
from lm_lab.errors import ConfigError

# what torch.cuda.get_device_name() returns on each (nvidia-smi's names), and the dense bf16 peak expected
NAMES = [
    ("NVIDIA A100-SXM4-80GB", "a100", 312.0),
    ("NVIDIA A100-SXM4-40GB", "a100", 312.0),
    ("NVIDIA A100-PCIE-40GB", "a100", 312.0),
    ("NVIDIA A100 80GB PCIe", "a100", 312.0),
    ("NVIDIA H100 80GB HBM3", "h100_sxm", 989.4),
    ("NVIDIA H100 PCIe", "h100_pcie", 756.0),
    ("NVIDIA H100 NVL", "h100_nvl", 835.5),
    ("NVIDIA H200", "h200", 989.4),
    ("NVIDIA H200 NVL", "h200_nvl", 835.5),
    ("NVIDIA GH200 480GB", "gh200", 989.4),
    ("NVIDIA L40S", "l40s", 362.05),
    ("NVIDIA A10G", "a10g", 125.0),
    ("NVIDIA L4", "l4", 121.0),
    ("NVIDIA GeForce RTX 4090", "rtx_4090", 165.2),
]


@pytest.mark.parametrize("name, key, bf16", NAMES, ids=[n for n, _, _ in NAMES])
def test_device_names_match_their_dense_peaks(name, key, bf16):
    found = lookup(name)
    assert found is not None and found.key == key and found.peak_tflops("bf16") == bf16
    assert lookup(key) is found  # the table key names it too (budget.gpu=a100)


def test_peaks_are_dense_and_other_dtypes():
    assert BY_KEY["h100_sxm"].peak_tflops("tf32") == 494.7 and BY_KEY["a100"].peak_tflops("fp32") == 19.5
    assert BY_KEY["v100"].peak_tflops("fp16") == 125.0
    with pytest.raises(ConfigError, match="the v100 has no bf16 peak"):
        BY_KEY["v100"].peak_tflops("bf16")
    assert all(d.source for d in BY_KEY.values())


def test_unknown_gpus_are_not_matched():
    assert lookup("NVIDIA Quantum Accelerator 9000") is None and lookup("NVIDIA L40") is None


@pytest.mark.parametrize(
    "name, precision, peak",
    [
        ("NVIDIA H200", "bf16-mixed", 989.4e12),  # Lightning's table gives no MFU here (and the sparse 2e15 elsewhere)
        ("NVIDIA H100 NVL", "bf16-true", 835.5e12),  # Lightning's: 1978.8e12, the sparse figure of an NVL pair
        ("NVIDIA A100-SXM4-80GB", "32-true", 156e12),  # fp32 matmuls on tensor cores (tf32) unless `highest`
        ("NVIDIA A100-SXM4-80GB", "16-mixed", 312e12),
        ("NVIDIA Quantum Accelerator 9000", "bf16-mixed", None),
    ],
)
def test_mfu_peak_of_the_device_the_run_is_on(monkeypatch, name, precision, peak):
    import torch

    from lm_lab.devices import peak_flops

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    assert peak_flops(torch.device("cuda", 0), precision) == peak
    assert peak_flops(torch.device("cpu"), precision) is None
