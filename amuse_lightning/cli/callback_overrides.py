"""Change one setting of a callback that a config lists under ``trainer.callbacks``.

LightningCLI (jsonargparse) can append to that list (``--trainer.callbacks+=...``) and its
``--trainer.callbacks.init_args.X`` reaches only the last entry. ``amuse-lightning`` also takes::

    --trainer.callbacks.AmuseCallback.bn_recalibration_batches=10    # the one AmuseCallback
    --trainer.callbacks.1.monitor=val_loss                            # the entry at position 1

A class name must match exactly one entry (the shipped configs list two ``ModelCheckpoint``\\s:
name those by position, counted from 0 as the YAML list is written). The value is read as YAML.
:func:`split_callback_overrides` takes these arguments out of the command line;
:func:`override_callbacks` applies them to the parsed list, which then goes back to the parser
as one ``--trainer.callbacks=[...]`` argument, so types are checked, ``--print_config`` shows the
result and the run's saved ``config.yaml`` holds it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from amuse_lightning.lightning.errors import ConfigError, did_you_mean
from amuse_lightning.lightning.factories import import_class_path

__all__ = ["CallbackOverride", "override_callbacks", "split_callback_overrides"]

_FLAG = re.compile(
    r"^--trainer\.callbacks\.(?P<which>[A-Z]\w*|\d+)\.(?P<arg>\w+)(=(?P<value>.*))?$"
)


@dataclass(frozen=True)
class CallbackOverride:
    """``which`` (a class name or a position) and ``arg: value`` to set in its ``init_args``."""

    which: str
    arg: str
    value: Any

    @property
    def flag(self) -> str:
        return f"--trainer.callbacks.{self.which}.{self.arg}"


def split_callback_overrides(args: Sequence[str]) -> tuple[list[str], list[CallbackOverride]]:
    """``args`` without the callback overrides, and the overrides in the order given."""
    rest: list[str] = []
    overrides: list[CallbackOverride] = []
    items = iter(args)
    for arg in items:
        found = _FLAG.match(arg)
        if not found:
            rest.append(arg)
            continue
        text = found.group("value")
        if text is None:
            text = next(items, None)
            if text is None:
                raise ConfigError(f"{arg} needs a value ({arg}=VALUE)")
        value = yaml.safe_load(text) if text.strip() else text
        overrides.append(CallbackOverride(found.group("which"), found.group("arg"), value))
    return rest, overrides


def override_callbacks(callbacks: Any, overrides: Sequence[CallbackOverride]) -> list[dict]:
    """The parsed ``trainer.callbacks`` list as plain ``{"class_path", "init_args"}`` dicts,
    with ``overrides`` applied; a selector that matches no entry, or several, is refused."""
    entries = [_plain(entry) for entry in _as_list(callbacks)]
    for override in overrides:
        index = _select(entries, override)
        _check_argument(entries[index]["class_path"], override)
        entries[index]["init_args"][override.arg] = override.value
    return entries


def _check_argument(class_path: str, override: CallbackOverride) -> None:
    try:
        parameters = list(inspect.signature(import_class_path(class_path)).parameters)
    except Exception:  # the parser reports a class it cannot import
        return
    if override.arg not in parameters:
        name = class_path.rsplit(".", 1)[-1]
        raise ConfigError(
            f"not an argument of {name}{did_you_mean(override.arg, parameters)}", override.flag
        )


def _select(entries: list[dict], override: CallbackOverride) -> int:
    names = [str(e.get("class_path", "?")).rsplit(".", 1)[-1] for e in entries]
    listed = ", ".join(f"{i}: {name}" for i, name in enumerate(names)) or "none"
    if override.which.isdigit():
        index = int(override.which)
        if index >= len(entries):
            raise ConfigError(
                f"the config lists {len(entries)} callbacks (from 0; {listed})", override.flag
            )
        return index
    matches = [i for i, name in enumerate(names) if name == override.which]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise ConfigError(
            f"the config lists no {override.which} under trainer.callbacks ({listed}); add one "
            f"with --trainer.callbacks+=<class path> or edit the config",
            override.flag,
        )
    positions = " or ".join(f"--trainer.callbacks.{i}.{override.arg}" for i in matches)
    raise ConfigError(
        f"the config lists {len(matches)} {override.which} callbacks ({listed}); name one by "
        f"its position: {positions}",
        override.flag,
    )


def _as_list(callbacks: Any) -> list[Any]:
    if callbacks is None:
        return []
    return list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]


def _plain(entry: Any) -> dict:
    if hasattr(entry, "as_dict"):
        entry = entry.as_dict()
    if not isinstance(entry, dict) or "class_path" not in entry:
        raise ConfigError(
            "an entry of trainer.callbacks is not a class_path/init_args mapping; "
            "--trainer.callbacks.<Class>.<arg> needs the config's list form",
            "trainer.callbacks",
        )
    return {"class_path": entry["class_path"], "init_args": dict(entry.get("init_args") or {})}
