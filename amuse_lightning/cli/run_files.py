"""What ``amuse-lightning finish`` reads from a run before it builds anything.

- :func:`read_checkpoint`: the checkpoint's header (step, the model class LightningCLI stored
  in its hyper-parameters, the finisher's mark, the weights' names and shapes);
- :func:`saved_config`: the ``config.yaml`` that ``fit`` saved beside the run (LightningCLI's
  ``SaveConfigCallback`` writes it into the logger's version folder; checkpoints usually lie in
  ``<version>/checkpoints/``);
- :func:`output_path`: where the finished checkpoint goes, refusing the source itself and an
  existing file unless asked to overwrite;
- :func:`check_model_class` / :func:`check_weights_fit`: the config builds the checkpoint's
  model (before building, by class; before loading, by the weights' names and shapes).

Each refusal is a :class:`~amuse_lightning.lightning.errors.ConfigError` naming the flag to
change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from amuse_lightning.lightning.errors import ConfigError
from amuse_lightning.lightning.factories import import_class_path

__all__ = [
    "CheckpointInfo",
    "check_model_class",
    "check_weights_fit",
    "output_path",
    "read_checkpoint",
    "refuse_finished",
    "run_folder",
    "saved_config",
]

#: What ``finish_checkpoint`` stores in the checkpoints it writes.
FINISHER_KEY = "amuse_finisher"

#: LightningCLI's bookkeeping in a model's hyper-parameters (not ``__init__`` arguments).
_CLI_HPARAMS = ("_class_path", "_instantiator")


@dataclass(frozen=True)
class CheckpointInfo:
    """The parts of a Lightning checkpoint that ``finish`` checks before building the run."""

    path: Path
    model_class: str | None
    hyper_parameters: dict[str, Any] = field(default_factory=dict)
    finisher: Mapping[str, Any] | None = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


def read_checkpoint(path: Path) -> CheckpointInfo:
    """The header of the checkpoint at ``path`` (memory-mapped: the tensors are not read)."""
    try:
        checkpoint = _load(path)
    except Exception as error:  # a file torch cannot read: say which
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"{path} is not a readable checkpoint ({reason})", "--ckpt_path"
        ) from error
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise ConfigError(
            f"{path} holds no Lightning checkpoint (no 'state_dict'); pass the checkpoint a "
            "Lightning run wrote (e.g. <run>/checkpoints/last.ckpt)",
            "--ckpt_path",
        )
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    class_path = hparams.get("_class_path")
    shapes = {
        name: tuple(value.shape)
        for name, value in checkpoint["state_dict"].items()
        if isinstance(value, torch.Tensor)
    }
    return CheckpointInfo(
        path=path,
        model_class=class_path if isinstance(class_path, str) else None,
        hyper_parameters={k: v for k, v in hparams.items() if k not in _CLI_HPARAMS},
        finisher=checkpoint.get(FINISHER_KEY),
        shapes=shapes,
    )


def _load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:  # not a zip-format file: mmap cannot apply
        return torch.load(path, map_location="cpu", weights_only=False)


def refuse_finished(info: CheckpointInfo) -> None:
    """A checkpoint ``finish`` wrote is a finished model, not a run to finish."""
    if info.finisher is None:
        return
    source = info.finisher.get("source") or "the run's own checkpoint"
    raise ConfigError(
        f"{info.path} was written by 'amuse-lightning finish' (a finished model, from "
        f"{source}); finish the run's own checkpoint ({source}) instead",
        "--ckpt_path",
    )


def run_folder(ckpt_path: Path) -> Path:
    """The run's version folder: the parent of ``checkpoints/``, else the checkpoint's folder."""
    parent = ckpt_path.parent
    return parent.parent if parent.name == "checkpoints" else parent


def saved_config(ckpt_path: Path) -> Path | None:
    """The ``config.yaml`` fit saved for the run of ``ckpt_path``, if there is one."""
    for folder in dict.fromkeys([ckpt_path.parent, run_folder(ckpt_path)]):
        candidate = folder / "config.yaml"
        if candidate.is_file():
            return candidate
    return None


def output_path(source: Path, output: str | None, overwrite: bool) -> Path:
    """``output`` (default ``<source name>-finished.ckpt`` beside the source), refusing the
    source itself (by resolved path) and an existing file unless ``overwrite``."""
    path = Path(output) if output else source.with_name(f"{source.stem}-finished.ckpt")
    if path.resolve() == source.resolve() or (path.exists() and path.samefile(source)):
        raise ConfigError(
            f"{output} is the checkpoint being finished; pass another path (the source "
            "stays the run's resumable state)",
            "--output",
        )
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; pass a file name", "--output")
    if path.exists() and not overwrite:
        raise ConfigError(
            f"{path} exists; pass --overwrite to replace it, or another --output", "--output"
        )
    return path


def _class_of(class_path: str) -> Any:
    try:
        return import_class_path(class_path)
    except (ImportError, AttributeError, ValueError):
        return None


def check_model_class(info: CheckpointInfo, config: Any, hint: str) -> None:
    """Refuse a config whose ``model.class_path`` is not the checkpoint's model class (from the
    hyper-parameters LightningCLI stores); ``hint`` says which config to pass."""
    model = config.get("model") if hasattr(config, "get") else None
    configured = model.get("class_path") if hasattr(model, "get") else None
    if info.model_class is None or not isinstance(configured, str):
        return
    same = configured == info.model_class
    if not same:
        wanted, given = _class_of(info.model_class), _class_of(configured)
        same = wanted is not None and wanted is given
    if not same:
        raise ConfigError(
            f"the config builds {configured}, but {info.path} holds a {info.model_class}; {hint}",
            "--config",
        )


def check_weights_fit(info: CheckpointInfo, model: torch.nn.Module, hint: str) -> None:
    """Refuse a built model whose weights' names or shapes differ from the checkpoint's (a
    model of another class or size), naming the first difference and the hyper-parameters the
    checkpoint was trained with where they differ."""
    here = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    missing = [name for name in here if name not in info.shapes]
    unexpected = [name for name in info.shapes if name not in here]
    resized = [name for name in here if name in info.shapes and here[name] != info.shapes[name]]
    if not (missing or unexpected or resized):
        return
    if resized:
        name = resized[0]
        what = f"{name} is {_shape(info.shapes[name])} there and {_shape(here[name])} here"
    elif unexpected:
        what = f"it has {unexpected[0]}, which the model lacks"
    else:
        what = f"it lacks the model's {missing[0]}"
    trained = _differing_hparams(info.hyper_parameters, model)
    class_name = info.model_class or type(model).__name__
    raise ConfigError(
        f"the weights in {info.path} do not fit the model the config builds "
        f"({type(model).__name__}): {what}"
        + (f"; the checkpoint's {class_name} was trained with {trained}" if trained else "")
        + f"; {hint}",
        "--config",
    )


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "a scalar"


def _differing_hparams(saved: Mapping[str, Any], model: torch.nn.Module) -> str:
    current = getattr(model, "hparams", {}) or {}
    differing = [
        f"{key}={saved[key]!r}"
        for key in saved
        if key in current and _plain(current[key]) != _plain(saved[key])
    ]
    return ", ".join(differing)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
