"""The parser side of ``amuse-lightning``: shipped configs by bare name, one-line parse errors.

- :func:`shipped_configs` / :func:`resolve_config`: the YAML files installed with the package
  (``amuse_lightning/configs``); ``--config fashion_mnist_resnet`` (or ``...resnet.yaml``) names
  one of them wherever the package is installed. A path that exists always wins.
- :class:`AmuseArgumentParser`: LightningCLI's parser whose errors are one line,
  ``error: <key>: <what is wrong>``, instead of jsonargparse's nested report and the usage
  block. ``JSONARGPARSE_DEBUG=1`` shows jsonargparse's full message and traceback.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

from jsonargparse import ActionConfigFile
from lightning.pytorch.cli import LightningArgumentParser

from amuse_lightning.lightning.errors import did_you_mean
from amuse_lightning.lightning.factories import import_class_path

__all__ = [
    "CONFIG_DIR",
    "AmuseArgumentParser",
    "ConfigFileOrName",
    "condense_parser_message",
    "resolve_config",
    "shipped_configs",
]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
"""Where the example configs are installed (package data of ``amuse_lightning``)."""

_BARE_NAME = re.compile(r"^[\w.-]+$")


def shipped_configs() -> dict[str, Path]:
    """``{name: path}`` of the YAML configs installed with the package."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml"))}


def resolve_config(value: str) -> str:
    """``value`` itself when it is a file or an inline config; the installed config's path when
    it is a bare name (``fashion_mnist_resnet`` or ``fashion_mnist_resnet.yaml``).

    Raises ``FileNotFoundError`` for a bare name that is neither a file nor a shipped config.
    """
    if Path(value).is_file() or not _BARE_NAME.match(value):
        return value
    configs = shipped_configs()
    name = value.removesuffix(".yaml").removesuffix(".yml")
    if name in configs:
        return str(configs[name])
    raise FileNotFoundError(
        f"{value!r} is neither a file nor a shipped config{did_you_mean(name, configs)} "
        f"(shipped: {', '.join(configs)})"
    )


class ConfigFileOrName(ActionConfigFile):
    """``--config``: a path, an inline YAML string or the bare name of a shipped config."""

    def __call__(self, parser: Any, cfg: Any, values: Any, option_string: Any = None) -> None:
        if isinstance(values, str):
            try:
                values = resolve_config(values)
            except FileNotFoundError as err:
                parser.error(f"--config: {err}")
        super().__call__(parser, cfg, values, option_string)


class AmuseArgumentParser(LightningArgumentParser):
    """LightningCLI's parser with one-line errors (see the module docstring)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        debug = os.environ.get("JSONARGPARSE_DEBUG", "").lower() not in ("", "0", "false", "no")
        if not self.exit_on_error or debug:
            super().error(message, ex)  # raises for the caller, or shows the full report
        prog = self.prog.split()[0] if self.prog else "amuse-lightning"
        sys.stderr.write(f"{prog}: error: {condense_parser_message(message)}\n")
        self.exit(2)


# jsonargparse's report nests one block per Union member and class; these lines only frame it.
_FRAME = re.compile(
    r"^(- )?(Does not validate against|Subtypes:|Errors:|Given value type:|"
    r"Expected a <class 'NoneType'>|Problem with given class_path|Type .* expects a function)"
)


def condense_parser_message(message: str) -> str:
    """jsonargparse's nested error report as one line, ``<key>: <reason>`` (just the reason when
    the report names no key); the report's first line when it does not have the usual shape."""
    if "\n" not in message.strip():
        return message.strip()
    keys = re.findall(r'Parser key "([^"]+)"', message)
    reason = _innermost_reason(message)
    if reason is None:
        return message.strip().splitlines()[0] if message.strip() else message
    path = ".init_args.".join(keys)
    failed_import = re.search(
        r"Problem with given class_path '([^']+)':\s*\n\s*((No module named|module ).*)", message
    )
    unknown = re.match(r"Option '([^']+)' is not accepted", reason)
    if failed_import:
        reason = f"cannot import {failed_import.group(1)!r}: {failed_import.group(2).strip()}"
    elif unknown:
        name = unknown.group(1)
        classes = re.findall(r"class_path(?:=| ')'?([\w.]+)'", message)
        accepted = _init_args_of(classes[-1]) if classes else []
        path = f"{path}.init_args.{name}" if path else name
        reason = f"not an argument{did_you_mean(name, accepted)}"
    else:
        given = re.findall(r"^\s*Given value: (?!NestedArg|Namespace)(.*)$", message, re.MULTILINE)
        if given and ", got " not in reason:
            reason += f", got {given[-1].strip()}"
    return f"{path}: {reason}" if path else reason


def _innermost_reason(message: str) -> str | None:
    """The first line after the last ``Parser key`` that says what is wrong, tidied."""
    tail = message[message.rfind('Parser key "') :] if 'Parser key "' in message else message
    lines = tail.splitlines()
    if not lines:
        return None
    for line in [*lines[1:], lines[0].partition(":")[2]]:
        text = re.sub(r"^.*expects a function or a callable class: ", "", line.strip())
        if not text or _FRAME.match(text) or text.startswith("Given value:"):
            continue
        text = re.sub(r"\. Got value: Namespace\(.*$", "", text.removeprefix("- "))
        text = re.sub(r"\. Got value: ", ", got ", text)
        text = re.sub(r"Expected a typing\.Literal\[(.*)\]", r"expected one of \1", text)
        return re.sub(r"Expected a <class '(\w+)'>", r"expected \1", text)
    return None


def _init_args_of(class_path: str) -> list[str]:
    import inspect

    try:
        return list(inspect.signature(import_class_path(class_path)).parameters)
    except Exception:  # an unimportable class: no suggestions
        return []
