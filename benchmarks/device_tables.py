"""README tables of the step-time paths on CPU and GPU, and of the GPU training step.

Reads from the results folder (any file may be missing):

* ``step_time_paths_cpu.json``: ``step_time.py --device cpu`` for the paths (``amuse``: per
  parameter on CPU; ``amuse_foreach``: batched; ``amuse_compiled``: batched and compiled);
* ``step_time_cuda.json`` and ``step_time_compiled_cuda.json``: the same pairs on a GPU, as
  ``benchmarks/device_check.sh`` writes them;
* ``train_step_gpt_cuda.json`` and ``train_step_resnet_cuda.json``: ``train_step.py`` on a GPU.

A cell without a measurement reads "unmeasured": GPU figures are never estimated.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

UNMEASURED = "unmeasured"
PATHS = {
    "amuse": "default (CPU: per parameter; GPU: batched)",
    "amuse_per_parameter": "per parameter",
    "amuse_foreach": "batched (same-shape stacks in the workspace)",
    "amuse_compiled": "batched, compile=True",
    "amuse_cudagraphs": 'batched, compile="reduce-overhead" (CUDA graphs)',
}
CPU_SAME_AS = {
    "amuse_per_parameter": "= default on CPU",
    "amuse_cudagraphs": "n/a (CUDA graphs)",
}
"""CPU cells that are another row's run, not a missing one."""
TRAIN_METHODS = {
    "gpt": ("amuse", "amuse_compiled", "muon_adamw"),
    "resnet": ("amuse", "muon_adamw"),
}
"""What ``device_check.sh`` runs (compiling ResNet-18's ten stack shapes would not fit its time)."""

Table = Callable[..., str]  # make_tables.table(header, rows, left)
Provenance = Callable[[dict], str]


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _rows(*datasets: dict | None) -> dict[str, dict[str, dict]]:
    """``{model: {optimizer: row}}`` merged over the datasets (later ones add rows)."""
    merged: dict[str, dict[str, dict]] = {}
    for data in datasets:
        for model, rows in (data or {}).get("models", {}).items():
            merged.setdefault(model, {}).update(rows)
    return merged


def _ratio(row: dict | None) -> str:
    return UNMEASURED if row is None else f"{row['ratio_to_torch_muon']:.2f}"


def _ms(row: dict | None) -> str:
    return UNMEASURED if row is None else f"{row['median_ms']:.2f}"


def _peak(row: dict | None) -> str:
    return UNMEASURED if row is None else f"{row['step_peak_bytes'] / 2**20:.1f}"


def _machine(meta: dict, fallback: str) -> str:
    if not meta:
        return fallback
    if meta.get("gpu"):
        return f"{meta['gpu']}, torch {meta.get('torch', '?')}"
    cores, load = meta.get("cpu_count", "?"), meta.get("load_average_1m", "?")
    return f"{cores}-core {meta.get('processor', 'CPU')}, 1-minute load {load} at the start"


def path_tables(results: Path, table: Table, provenance: Provenance) -> str:
    """Each path's step against torch.optim.Muon (its own pair), CPU next to GPU."""
    cpu_data = _load(results / "step_time_paths_cpu.json")
    gpu_data = [_load(results / f) for f in ("step_time_cuda.json", "step_time_compiled_cuda.json")]
    cpu, gpu = _rows(cpu_data), _rows(*gpu_data)
    gpu_meta = next((d["meta"] for d in gpu_data if d and d.get("meta")), {})
    rows = []
    known = ("vit_s16", "resnet18")
    for model in [*known, *sorted((set(cpu) | set(gpu)) - set(known))]:
        for name, label in PATHS.items():
            c, g = cpu.get(model, {}).get(name), gpu.get(model, {}).get(name)
            cpu_cells = [_ratio(c), _peak(c)]
            if c is None and name in CPU_SAME_AS:
                cpu_cells = [CPU_SAME_AS[name]] * 2
            rows.append([model, f"`{name}`: {label}", *cpu_cells, _ratio(g), _ms(g), _peak(g)])
    header = ["matrices", "path", "CPU × torch Muon", "CPU step peak MiB", "GPU × torch Muon",
              "GPU ms", "GPU step peak MiB"]  # fmt: skip
    no_gpu = f"{UNMEASURED} for this version (`bash benchmarks/device_check.sh` measures it)"
    cpu_machine = _machine((cpu_data or {}).get("meta", {}), "no committed run")
    lines = [
        "Each path against `torch.optim.Muon` as a pair alone in a fresh process (the ratio is "
        f"the figure to read). CPU: {cpu_machine}. GPU: {_machine(gpu_meta, no_gpu)}.\n",
        table(header, rows, 2),
    ]
    for meta in ((cpu_data or {}).get("meta"), gpu_meta):
        if meta:
            lines += ["", provenance(meta)]
    return "\n".join(lines)


def train_step_tables(results: Path, table: Table, provenance: Provenance) -> str:
    """The GPU training step of each model and method (``train_step.py``)."""
    data = [_load(results / f"train_step_{m}_cuda.json") for m in ("gpt", "resnet")]
    rows_by_model = _rows(*data)
    meta = next((d["meta"] for d in data if d and d.get("meta")), {})
    rows = []
    for model, methods in TRAIN_METHODS.items():
        for method in dict.fromkeys([*methods, *rows_by_model.get(model, {})]):
            row = rows_by_model.get(model, {}).get(method)
            if row is None:
                rows.append([model, method, UNMEASURED, UNMEASURED, UNMEASURED])
                continue
            ratio = row.get("ratio_to_muon_adamw")
            rows.append([model, method, f"{row['step_ms']:.2f}", f"{row['optimizer_ms']:.2f}",
                         "-" if ratio is None else f"{ratio:.2f}"])  # fmt: skip
    lines = [
        "Forward, backward and optimizer step, bf16 autocast (`benchmarks/train_step.py`): the "
        "byte-level GPT (width 384, depth 6, context 256, batch 64) and ResNet-18 (batch 256, "
        "32x32). GPU: " + _machine(meta, f"{UNMEASURED} for this version") + ".\n",
        table(["model", "method", "step ms", "optimizer ms", "× Muon + AdamW"], rows, 2),
    ]
    if meta:
        lines += ["", provenance(meta)]
    return "\n".join(lines)


def render(results: Path, table: Table, provenance: Provenance) -> str:
    return "\n".join(
        [
            "### Optimizer step time by path, CPU and GPU\n",
            path_tables(results, table, provenance),
            "\n### Training step on a GPU\n",
            train_step_tables(results, table, provenance),
        ]
    )
