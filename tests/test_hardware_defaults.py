"""Defaults that follow the hardware: the example ResNet's memory layout (and ``ns_dtype="auto"``).

An AVX2-only CPU is emulated with ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN then runs its AVX2
kernels, as on such a CPU) in a subprocess: torch 2.14.1's channels-last convolution backward
crashes there for layers narrower than 8 channels, which killed a test worker of ``make test``.
"""

from __future__ import annotations

import copy
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


# ------------------------------------------------------------------ ns_dtype="auto" (issue 23)


def small_groups(device: str = "cpu") -> list[dict]:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(8, 6, device=device))
    bias = torch.nn.Parameter(torch.randn(8, device=device))
    return [{"params": [weight], "use_muon": True}, {"params": [bias], "use_muon": False}]


def set_native_bf16(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(hardware, "native_bf16_matmul", lambda: native)


@pytest.mark.xdist_group("multiprocess")
def test_auto_is_float32_where_bf16_products_are_emulated() -> None:
    code = """
        import torch
        from amuse_lightning import AMUSE
        params = [torch.nn.Parameter(torch.randn(8, 6)), torch.nn.Parameter(torch.randn(8))]
        opt = AMUSE([{"params": params[:1], "use_muon": True},
                     {"params": params[1:], "use_muon": False}])
        explicit = AMUSE([{"params": params[:1], "use_muon": True}], ns_dtype=torch.bfloat16)
        print(*[g["ns_dtype"] for g in opt.param_groups], explicit.param_groups[0]["ns_dtype"])
    """
    done = run_python(code, AVX2_ONLY)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["float32", "float32", "bfloat16"]


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_decided_once_and_stored_by_name(monkeypatch, native: bool) -> None:
    from amuse_lightning import AMUSE

    set_native_bf16(monkeypatch, native)
    opt = AMUSE(small_groups())
    expected = "bfloat16" if native else "float32"
    assert [g["ns_dtype"] for g in opt.param_groups] == [expected, expected]
    assert opt.defaults["ns_dtype"] == "auto"
    saved = opt.state_dict()
    assert [g["ns_dtype"] for g in saved["param_groups"]] == [expected, expected]
    explicit = AMUSE(small_groups(), ns_dtype="float64")
    assert explicit.param_groups[0]["ns_dtype"] == "float64"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_is_bfloat16_on_cuda(monkeypatch) -> None:
    from amuse_lightning import AMUSE

    set_native_bf16(monkeypatch, False)  # whatever the host CPU does
    opt = AMUSE(small_groups("cuda"))
    assert [g["ns_dtype"] for g in opt.param_groups] == ["bfloat16", "bfloat16"]


def test_auto_on_the_meta_device_is_decided_at_the_first_step(monkeypatch) -> None:
    """A group on the meta device keeps ``"auto"`` (and so does its state_dict); a state_dict
    holding ``"auto"`` loaded for real parameters is decided at their first step."""
    from amuse_lightning import AMUSE

    set_native_bf16(monkeypatch, False)
    with torch.device("meta"):
        model = torch.nn.Linear(6, 8)
    on_meta = AMUSE([{"params": [model.weight], "use_muon": True}])
    assert on_meta.param_groups[0]["ns_dtype"] == "auto"
    groups = small_groups()
    opt = AMUSE(groups[:1])
    saved = on_meta.state_dict()
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["ns_dtype"] == "auto"
    groups[0]["params"][0].grad = torch.randn(8, 6)
    opt.step()
    assert opt.param_groups[0]["ns_dtype"] == "float32"


def test_a_checkpoint_from_before_auto_resumes_with_its_saved_dtype(monkeypatch) -> None:
    """Before ``"auto"`` the default was bfloat16 everywhere, stored as ``"bfloat16"``: a run
    resumed on a CPU where ``"auto"`` means float32 keeps bfloat16, bit for bit."""
    from amuse_lightning import AMUSE

    def grads(step: int, groups: list[dict]) -> None:
        gen = torch.Generator().manual_seed(step)
        for g in groups:
            for p in g["params"]:
                p.grad = torch.randn(p.shape, generator=gen)

    groups = small_groups()
    old = AMUSE(groups, ns_dtype=torch.bfloat16, warmup_steps=2)
    for step in range(3):
        grads(step, groups)
        old.step()
    saved = {"params": [p.detach().clone() for g in groups for p in g["params"]]}
    saved["optimizer"] = copy.deepcopy(old.state_dict())
    for step in range(3, 6):
        grads(step, groups)
        old.step()

    set_native_bf16(monkeypatch, False)
    resumed_groups = small_groups()
    for p, value in zip(
        [p for g in resumed_groups for p in g["params"]], saved["params"], strict=True
    ):
        p.data.copy_(value)
    resumed = AMUSE(resumed_groups, warmup_steps=2)
    assert resumed.param_groups[0]["ns_dtype"] == "float32"  # what "auto" means here
    resumed.load_state_dict(saved["optimizer"])
    assert [g["ns_dtype"] for g in resumed.param_groups] == ["bfloat16", "bfloat16"]
    for step in range(3, 6):
        grads(step, resumed_groups)
        resumed.step()
    for a, b in zip(
        [p for g in groups for p in g["params"]],
        [p for g in resumed_groups for p in g["params"]],
        strict=True,
    ):
        assert torch.equal(a, b)
