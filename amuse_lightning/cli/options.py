"""argparse pieces of the commands beside LightningCLI (``finish``, ``plot``): a parser whose
errors are one line, and the value types their options share."""

from __future__ import annotations

import argparse
import re
from typing import NoReturn

from amuse_lightning.lightning.errors import ConfigError

__all__ = [
    "OneLineParser",
    "boolean",
    "fraction",
    "non_negative_int",
    "positive_float",
    "positive_int",
]


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are a :class:`ConfigError` (one line, exit status 2)."""

    def error(self, message: str) -> NoReturn:
        found = re.match(r"argument ([^:]+): (.*)", message)
        if found:
            raise ConfigError(found.group(2), found.group(1).split("/")[-1])
        raise ConfigError(message)


def fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0 (0: off), got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0.0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def lr_factor(text: str) -> float | str:
    """A number > 0, or ``auto`` (the finisher's rule of the steps so far)."""
    if text == "auto":
        return text
    try:
        return positive_float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0 or auto, got {text}") from None


def boolean(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"must be true or false, got {text}")
