"""Defaults that follow the hardware: the example ResNet's memory layout (and ``ns_dtype="auto"``).

An AVX2-only CPU is emulated with ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN then runs its AVX2
kernels, as on such a CPU) in a subprocess: torch 2.14.1's channels-last convolution backward
crashes there for layers narrower than 8 channels, which killed a test worker of ``make test``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from amuse_lightning.examples.classifier import ResNetClassifier
from amuse_lightning.optim import hardware

AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


NARROW_RESNET_STEPS = """
    import torch
    from amuse_lightning.examples.classifier import ResNetClassifier
    torch.set_num_threads(1)
    model = ResNetClassifier(num_classes=10, in_channels=3, width=4, num_blocks=(1, 1, 1, 1))
    x = torch.randn(16, 3, 32, 32)
    for _ in range(3):
        model(x).sum().backward()
    print("channels_last", model.uses_channels_last(x.device))
"""


@pytest.mark.xdist_group("multiprocess")
def test_the_narrow_example_resnet_trains_on_an_avx2_only_cpu() -> None:
    """On main before the fix this process died with SIGSEGV (width 4, channels-last default)."""
    done = run_python(NARROW_RESNET_STEPS, AVX2_ONLY)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "channels_last False" in done.stdout


def test_channels_last_follows_the_cpu_and_refuses_the_crashing_case(monkeypatch) -> None:
    model = ResNetClassifier(num_classes=10, in_channels=1, width=4, num_blocks=(1, 1, 1, 1))
    cpu = torch.device("cpu")
    monkeypatch.setattr("amuse_lightning.examples.classifier.onednn_runs_avx512", lambda: True)
    assert model.uses_channels_last(cpu)
    assert model.uses_channels_last(torch.device("cuda"))
    monkeypatch.setattr("amuse_lightning.examples.classifier.onednn_runs_avx512", lambda: False)
    assert not model.uses_channels_last(cpu)
    assert model.uses_channels_last(torch.device("cuda"))
    explicit = ResNetClassifier(num_classes=10, in_channels=1, width=4, channels_last=True)
    with pytest.raises(ValueError, match="width >= 8, or channels_last: null"):
        explicit.uses_channels_last(cpu)
    wide = ResNetClassifier(num_classes=10, in_channels=1, width=8, channels_last=True)
    assert wide.uses_channels_last(cpu)
    off = ResNetClassifier(num_classes=10, in_channels=1, width=8, channels_last=False)
    assert not off.uses_channels_last(torch.device("cuda"))


def test_the_layout_is_applied_in_place_and_keeps_the_parameters(monkeypatch) -> None:
    monkeypatch.setattr("amuse_lightning.examples.classifier.onednn_runs_avx512", lambda: True)
    model = ResNetClassifier(num_classes=10, in_channels=1, width=8, num_blocks=(1, 1, 1, 1))
    before = [id(p) for p in model.parameters()]
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    out = model.eval()(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    assert [id(p) for p in model.parameters()] == before
    assert model.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    for key, value in model.state_dict().items():
        assert torch.equal(value, reference[key]), key


@pytest.mark.xdist_group("multiprocess")
def test_onednn_isa_cap_is_read_from_the_environment() -> None:
    code = """
        from amuse_lightning.optim import hardware
        print(hardware.onednn_runs_avx512(), hardware.native_bf16_matmul())
    """
    done = run_python(code, AVX2_ONLY)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
    if hardware.cpu_flags() is not None and hardware.cpu_flags() >= hardware.AVX512_CORE_FLAGS:
        capped = run_python(code, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"})
        assert capped.stdout.split() == ["True", "False"], capped.stderr
