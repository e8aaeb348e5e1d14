"""Argument checking and param-group normalisation for AMUSE: errors say what to change."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from .directions import (
    FALLBACK_UPDATES,
    MUON_DIRECTIONS,
    MUON_SCALINGS,
    SPECTRAL_INPUTS,
    buffer_names,
)
from .hardware import fastest_ns_dtype
from .polar import AUTO_NS_DTYPE, NS_COEFFICIENT_SETS, SUPPORTED_POWERS, ns_dtype_name
from .schedule import length_aware_beta_final

NONFINITE_POLICIES = ("raise", "skip", "off")

_FLAT_WARNING = (
    "AMUSE got parameters without `use_muon`: matrices go to Muon and the rest to the fallback. "
    "Embeddings, position tokens and the classifier head are matrices that belong in the fallback; "
    "build groups with amuse_lightning.partition_parameters(model).param_groups() (AmuseMixin "
    "does this for a LightningModule)."
)


def uses_muon(group: Mapping[str, Any], param: Tensor) -> bool:
    """Whether ``param`` of param group ``group`` takes the Muon update (else the fallback): the
    one rule the optimizer, the partition and the Lightning layer share.

    The group decides when it says so: ``group["use_muon"]`` first, else timm's
    ``group["use_fallback"]`` negated. A group that says neither (a flat parameter list) sends
    matrices and conv kernels (``param.ndim >= 2``) to Muon and everything else to the fallback.
    """
    if "use_muon" in group:
        return bool(group["use_muon"])
    if "use_fallback" in group:
        return not group["use_fallback"]
    return param.ndim >= 2


def _is_named(item: Any) -> bool:
    """Whether ``item`` is a ``(name, tensor)`` pair, as ``model.named_parameters()`` yields."""
    return (
        isinstance(item, tuple)
        and len(item) == 2
        and isinstance(item[0], str)
        and isinstance(item[1], Tensor)
    )


def _unnamed(group: dict[str, Any]) -> dict[str, Any]:
    """A group whose ``params`` are ``(name, tensor)`` pairs as tensors plus ``names`` (the way
    :meth:`~amuse_lightning.partition.PartitionResult.param_groups` names them)."""
    tensors = group["params"]
    if isinstance(tensors, Tensor):
        return group
    tensors = list(tensors)
    named = [_is_named(p) for p in tensors]
    if not any(named):
        return {**group, "params": tensors}
    if not all(named):
        raise TypeError(
            "params mixes (name, tensor) pairs and bare tensors; pass model.named_parameters() "
            "or model.parameters(), not a mix"
        )
    return {**group, "params": [p for _, p in tensors], "names": [n for n, _ in tensors]}


def normalise_groups(params: Iterable[Tensor] | Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return param-group dicts that each say ``use_muon``.

    A flat parameter list, or a group without ``use_muon``/``use_fallback``, is split into a
    matrix group (Muon) and a group of the rest (fallback), with a warning. timm's
    ``use_fallback=True`` means ``use_muon=False``. ``(name, tensor)`` pairs (from
    ``model.named_parameters()``, flat or as a group's ``params``) are accepted as torch's own
    optimizers accept them: the names are kept in the group's ``names`` (split along with the
    tensors), where errors and reports read them.
    """
    if isinstance(params, Tensor):
        raise TypeError("params must be an iterable of tensors or dicts, not a single tensor")
    items = list(params)
    if not items:
        raise ValueError("AMUSE got an empty parameter list; pass the model's parameters")
    if not isinstance(items[0], dict):
        items = [{"params": items}]
    groups: list[dict[str, Any]] = []
    warned = False
    for index, group in enumerate(items):
        if not isinstance(group, dict):
            raise TypeError("mix of tensors and dicts in params; pass one kind")
        if "params" not in group:
            raise ValueError(
                f"param group {index} has no 'params' entry (keys: {sorted(group)}); every group "
                "dict needs 'params': an iterable of tensors"
            )
        group = _unnamed(plain_numbers(group))
        tensors = group["params"]
        tensors = [tensors] if isinstance(tensors, Tensor) else list(tensors)
        group = {**group, "params": tensors}
        if "use_muon" not in group and "use_fallback" in group:
            group["use_muon"] = not group["use_fallback"]
        if "use_muon" in group:
            groups.append(group)
            continue
        sides = [uses_muon(group, p) for p in tensors]
        if any(sides) and not warned:
            warnings.warn(_FLAT_WARNING, stacklevel=4)
            warned = True
        rest = {k: v for k, v in group.items() if k not in ("params", "names")}
        names = group.get("names")
        for use_muon in (True, False):
            chosen = [j for j, side in enumerate(sides) if side == use_muon]
            if not chosen:
                continue
            part = {**rest, "params": [tensors[j] for j in chosen], "use_muon": use_muon}
            if names is not None and len(names) == len(tensors):
                part["names"] = [names[j] for j in chosen]
            groups.append(part)
    return groups


def plain_numbers(options: dict[str, Any]) -> dict[str, Any]:
    """numpy scalars (``np.float32(0.01)``, ``np.int64(50)``) become Python numbers, as torch's
    optimizers accept them; the groups and the state_dict then hold plain data."""
    return {
        k: v.item() if isinstance(v, numbers.Number) and hasattr(v, "item") else v
        for k, v in options.items()
    }


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _number(group: dict[str, Any], key: str) -> float:
    value = group[key]
    if isinstance(value, Tensor):
        raise TypeError(f"{key} must be a Python number, not a tensor")
    _check(
        isinstance(value, (int, float)) and math.isfinite(value),
        f"{key} must be a finite number, got {value!r}",
    )
    return float(value)


PLANNED = "auto"
"""``beta_anneal_steps="auto"``: the run's planned optimizer steps, filled in by
``AmuseCallback`` from the Trainer when ``fit`` starts (``fill_planned_steps``)."""

DEFAULT_RHO = 0.3
"""``rho`` of a group that sets neither ``rho`` nor beta annealing."""


def resolved_rho(group: dict[str, Any]) -> Any:
    """``rho=None`` (the default) -> 0.3, or 0 when the group anneals beta (which replaces the
    ``rho`` rise); an explicit value is returned as it is (:func:`validate_group` checks it)."""
    if group.get("rho") is not None:
        return group["rho"]
    return 0.0 if group.get("beta_anneal_steps", 0) != 0 else DEFAULT_RHO


def refuse_unplanned(groups: list[dict[str, Any]]) -> None:
    """Before any group moves: ``beta_anneal_steps="auto"`` must have been replaced by a count."""
    for index, group in enumerate(groups):
        if group.get("beta_anneal_steps") == PLANNED:
            raise ValueError(
                f"beta_anneal_steps='auto' (param group {index}) is the run's planned number of "
                "optimizer steps, which AmuseCallback fills in from the Trainer when fit starts; "
                "without it, pass that number yourself (e.g. beta_anneal_steps=10000), or "
                "beta_anneal_steps=0 for the rho rise"
            )


def validate_group(group: dict[str, Any], index: int) -> None:
    """Raise ValueError naming the argument, the allowed values and the group."""
    where = f" (param group {index})"
    lr = _number(group, "lr")
    _check(lr >= 0.0, f"lr must be >= 0, got {lr}{where}")
    _check(_number(group, "lr_scale") >= 0.0, f"lr_scale must be >= 0{where}")
    beta1 = _number(group, "beta1")
    _check(0.0 < beta1 <= 1.0, f"beta1 must be in (0, 1], got {beta1}{where}")
    rho = _number(group, "rho")
    _check(rho >= 0.0, f"rho must be >= 0 (0 keeps beta fixed), got {rho}{where}")
    warmup = group["warmup_steps"]
    _check(
        isinstance(warmup, int) and not isinstance(warmup, bool) and warmup >= 1,
        f"warmup_steps must be an integer >= 1, got {warmup!r}{where}",
    )
    momentum = _number(group, "momentum")
    _check(0.0 <= momentum < 1.0, f"momentum must be in [0, 1), got {momentum}{where}")
    beta2 = _number(group, "beta2")
    _check(0.0 <= beta2 < 1.0, f"beta2 must be in [0, 1), got {beta2}{where}")
    _check(_number(group, "eps") >= 0.0, f"eps must be >= 0{where}")
    for key in ("weight_decay", "weight_decay_at_y", "r", "weight_lr_power"):
        _check(_number(group, key) >= 0.0, f"{key} must be >= 0, got {group[key]}{where}")
    _check_mechanisms(group, where)
    _check(
        group.get("averaging", True) or group["weight_decay_at_y"] == 0.0,
        f"weight_decay_at_y decays y while keeping the average x fixed, so it needs averaging: "
        f"with averaging=False use weight_decay instead{where}",
    )
    steps = group["ns_steps"]
    _check(isinstance(steps, int) and steps >= 1, f"ns_steps must be an int >= 1{where}")
    ns_dtype_name(group["ns_dtype"])  # raises with the allowed names
    _choice(group, "ns_coefficients", NS_COEFFICIENT_SETS, where)
    _choice(group, "aux_update_type", MUON_SCALINGS, where)
    _choice(group, "update_type", FALLBACK_UPDATES, where)
    _choice(group, "direction", MUON_DIRECTIONS, where)
    _choice(group, "spectral_input", SPECTRAL_INPUTS, where)
    _check(
        group["spectral_power"] in SUPPORTED_POWERS,
        f"spectral_power must be one of {SUPPORTED_POWERS}, got {group['spectral_power']!r}{where}",
    )
    _check(isinstance(group["use_muon"], bool), f"use_muon must be True or False{where}")
    _check_real(group, index)
    for j, p in enumerate(group["params"]):
        check_param_dtype(group, p, _param_name(group, j), index)
    if group["use_muon"]:
        _check_matrices(group, index)


def _check_mechanisms(group: dict[str, Any], where: str) -> None:
    """The optional schedule mechanisms (``schedule.py``): counts, the window scale and the
    annealing target; beta annealing replaces the ``rho`` rise, so both at once is refused."""
    for key in ("c_warmup_steps", "beta_anneal_steps"):
        value = group[key]
        planned = " or 'auto' (the Trainer's planned steps)" if key == "beta_anneal_steps" else ""
        _check(
            (isinstance(value, int) and not isinstance(value, bool) and value >= 0)
            or (planned != "" and value == PLANNED),
            f"{key} must be an integer >= 0 (0: off){planned}, got {value!r}{where}",
        )
    c_scale = _number(group, "c_scale")
    _check(c_scale >= 1.0, f"c_scale must be >= 1 (1: the plain average), got {c_scale}{where}")
    beta_final = group["beta_final"]
    _check(
        beta_final == PLANNED
        or (isinstance(beta_final, (int, float)) and not isinstance(beta_final, bool)
            and 0.0 < beta_final <= 1.0),
        f"beta_final must be a number in (0, 1] or 'auto' (from the annealing length), got "
        f"{beta_final!r}{where}",
    )  # fmt: skip
    _check(
        group["beta_anneal_steps"] == 0 or group["rho"] == 0.0,
        f"beta_anneal_steps={group['beta_anneal_steps']} anneals beta_t instead of the rho "
        f"rise; leave rho unset (or 0) with it, or beta_anneal_steps=0 to keep rho={group['rho']}"
        f"{where}",
    )


NEW_GROUP_KEYS = dict(
    ns_coefficients="quintic", c_warmup_steps=0, c_scale=1.0, beta_anneal_steps=0,
    beta_final=0.965, weight_sum_start=0.0,
)  # fmt: skip
"""Group keys added after 0.1.0 (and 0.2's schedule mechanisms) with the values that keep an
older state_dict's run as it was."""


def add_missing_group_keys(group: dict[str, Any]) -> None:
    """A group unpickled from an older version gets :data:`NEW_GROUP_KEYS` it lacks."""
    for key, value in NEW_GROUP_KEYS.items():
        group.setdefault(key, value)


def resolve_beta_final(group: dict[str, Any]) -> None:
    """``beta_final="auto"`` -> the number :func:`~.schedule.length_aware_beta_final` gives for
    the group's ``beta_anneal_steps``, once that is a count above 0 (left ``"auto"`` before:
    without annealing ``beta_final`` is not used). Stored as a number, so a state_dict resumes
    with the value the run started with."""
    steps = group.get("beta_anneal_steps", 0)
    if group.get("beta_final") == PLANNED and steps != PLANNED and steps > 0:
        group["beta_final"] = length_aware_beta_final(steps)


def adopt_beta_final(defaults: dict[str, Any], groups: list[dict[str, Any]]) -> None:
    """After a state_dict is loaded: ``defaults`` still saying ``beta_final="auto"`` take the
    number the loaded groups hold when they agree on one, so a group added later ends where
    the run's groups do (a checkpoint saved with 0.965 keeps 0.965 for it too)."""
    numbers = {g["beta_final"] for g in groups if g.get("beta_final", PLANNED) != PLANNED}
    if defaults.get("beta_final") == PLANNED and len(numbers) == 1:
        defaults["beta_final"] = numbers.pop()


def resolve_ns_dtype(group: dict[str, Any]) -> None:
    """``ns_dtype="auto"`` -> the name of the fastest dtype on the device of the group's first
    parameter (left ``"auto"`` while that is the ``meta`` device)."""
    if group["ns_dtype"] == AUTO_NS_DTYPE and group["params"]:
        group["ns_dtype"] = fastest_ns_dtype(group["params"][0].device) or AUTO_NS_DTYPE


def _choice(group: dict[str, Any], key: str, allowed: tuple[str, ...], where: str) -> None:
    _check(group[key] in allowed, f"{key} must be one of {allowed}, got {group[key]!r}{where}")


def _param_name(group: dict[str, Any], j: int) -> str:
    names = group.get("names")
    return names[j] if names is not None and j < len(names) else f"params[{j}]"


LOW_PRECISION = (torch.float16, torch.bfloat16)


def dtype_refused(group: dict[str, Any], dtype: torch.dtype) -> bool:
    """Whether :func:`check_param_dtype` refuses parameters of ``dtype`` in ``group``."""
    if dtype == torch.float16 and "exp_avg_sq" in buffer_names(group):
        return True
    return bool(group.get("averaging", True)) and dtype in LOW_PRECISION


def check_param_dtype(group: dict[str, Any], param: Tensor, name: str, index: int) -> None:
    """Refuse a parameter dtype under which the group's update silently goes wrong.

    * 16 bits in an averaging group: its ``z`` and ``x`` would be 16-bit too. ``x`` moves by
      ``c_t (z - x)`` per step; once ``c_t`` (about ``1/t``) is under the format's relative
      resolution (bf16: 2**-8) the increments round away and ``x`` stops moving.
    * float16 in a group that divides by ``sqrt(v) + eps`` (the Adam fallback, AdaMuon, the
      spectral ``rms`` input), averaging or not: ``eps = 1e-10`` rounds to 0 in float16 and
      ``v = g^2`` underflows for ``|g| < 2.4e-4``, so the step is ``g / 0`` and the parameters
      become infinite after one step. bfloat16 has float32's exponent range and is allowed there.

    Checked when a group is added and again at every step, before any group moves (a module
    cast after the optimizer was built).
    """
    if not dtype_refused(group, param.dtype):
        return
    if group.get("averaging", True):
        raise ValueError(
            f"{name} of param group {index} is {param.dtype}: AMUSE keeps z and the averaged x in "
            "the parameter's dtype, and in 16 bits the averaging increments c_t (z - x) round "
            "away after a few hundred steps (in float16 the fallback's second moments also "
            "underflow). Keep the parameters in float32 and compute in 16 bits with autocast "
            "(torch.autocast(device, dtype=torch.bfloat16); Lightning: precision='bf16-mixed' or "
            "'16-mixed')"
        )
    key, other = ("direction", "'muon'") if group["use_muon"] else ("update_type", "'sgd'")
    raise ValueError(
        f"{name} of param group {index} is torch.float16 and the group's update "
        f"({key}={group[key]!r}) divides by sqrt(v) + eps: in float16 eps={group['eps']:g} "
        "rounds to 0 and small squared gradients underflow, so the first step makes the "
        "parameters infinite. Keep the parameters in float32 and compute in float16 with "
        "autocast (Lightning: precision='16-mixed'), use bfloat16 parameters, or use "
        f"{key}={other}"
    )


def _check_real(group: dict[str, Any], index: int) -> None:
    for j, p in enumerate(group["params"]):
        if p.is_complex():
            raise ValueError(
                f"{_param_name(group, j)} of param group {index} is complex ({p.dtype}); AMUSE "
                "supports real parameters only: optimise torch.view_as_real(p) instead"
            )


def _check_matrices(group: dict[str, Any], index: int) -> None:
    names = group.get("names")
    for j, p in enumerate(group["params"]):
        if p.ndim < 2:
            name = names[j] if names is not None and j < len(names) else f"params[{j}]"
            raise ValueError(
                f"{name} of param group {index} has shape {tuple(p.shape)} but use_muon=True: "
                "Muon needs a matrix (or a conv kernel); put it in a group with use_muon=False"
            )
