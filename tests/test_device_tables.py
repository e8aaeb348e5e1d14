"""The README's CPU/GPU step-time and GPU training-step tables (``benchmarks/device_tables.py``):
every GPU cell without a committed measurement reads "unmeasured", and a GPU run's JSON, as
``device_check.sh`` writes it, fills the cells and names the machine."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

from device_tables import render  # noqa: E402
from md_tables import provenance, table  # noqa: E402


def pair(ms: float, ratio: float, peak_mib: float) -> dict:
    return {"median_ms": ms, "ratio_to_torch_muon": ratio, "step_peak_bytes": peak_mib * 2**20}


def write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data))


def test_gpu_cells_are_unmeasured_until_a_gpu_run_is_committed(tmp_path: Path) -> None:
    cpu_meta = {"date": "2026-12-04", "cpu_count": 2, "processor": "x86_64", "load_average_1m": 5}
    cpu = {"meta": cpu_meta, "models": {"vit_s16": {"amuse_foreach": pair(500.0, 0.93, 0.0)}}}
    write(tmp_path / "step_time_paths_cpu.json", cpu)
    text = render(tmp_path, table, provenance)
    row = next(line for line in text.splitlines() if line.startswith("| vit_s16 | `amuse_foreach`"))
    assert row.endswith("| 0.93 | 0.0 | unmeasured | unmeasured | unmeasured |")
    assert "2-core x86_64, 1-minute load 5 at the start" in text
    assert "GPU: unmeasured for this version" in text
    assert "| gpt | amuse | unmeasured | unmeasured | unmeasured |" in text

    gpu_meta = {"date": "2026-12-05", "gpu": "NVIDIA H200", "torch": "2.11.0+cu130"}
    gpu = {"vit_s16": {"amuse_foreach": pair(1.9, 0.1, 60.0)}}
    write(tmp_path / "step_time_cuda.json", {"meta": gpu_meta, "models": gpu})
    train = {"gpt": {"amuse": {"step_ms": 12.0, "optimizer_ms": 2.0, "ratio_to_muon_adamw": 0.6}}}
    write(tmp_path / "train_step_gpt_cuda.json", {"meta": gpu_meta, "models": train})
    text = render(tmp_path, table, provenance)
    row = next(line for line in text.splitlines() if line.startswith("| vit_s16 | `amuse_foreach`"))
    assert row.endswith("| 0.93 | 0.0 | 0.10 | 1.90 | 60.0 |")
    assert "GPU: NVIDIA H200, torch 2.11.0+cu130" in text
    assert "| gpt | amuse | 12.00 | 2.00 | 0.60 |" in text
    assert "| gpt | muon_adamw | unmeasured | unmeasured | unmeasured |" in text


def test_each_model_and_path_is_one_row(tmp_path: Path) -> None:
    models = {m: {"amuse": pair(1.0, 1.0, 0.0)} for m in ("resnet18", "host_overhead", "vit_s16")}
    write(tmp_path / "step_time_paths_cpu.json", {"meta": {}, "models": models})
    write(tmp_path / "step_time_cuda.json", {"meta": {}, "models": {"vit_s16": models["vit_s16"]}})
    lines = [line for line in render(tmp_path, table, provenance).splitlines()
             if line.startswith("| ") and "`amuse`:" in line]  # fmt: skip
    sets = [line.split(" | ")[0].removeprefix("| ") for line in lines]
    assert sets == ["vit_s16", "resnet18", "host_overhead"]
