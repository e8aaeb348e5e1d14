"""A slow, obviously-correct AMUSE from the equations (docs/algorithm.md), the optimizer's oracle.

Everything is float64, one tensor at a time: no foreach, no batching, no shared helpers with the
library. ``x``, ``y`` and ``z`` are kept explicitly per parameter, so the oracle shares no algebra
with the optimizer's memory-lean recovery of ``x`` from ``(y, z)``. The spectral powers
``U Sigma^p V^T`` come from an exact SVD, not from a Newton iteration.

One step of a group (``t`` 1-based, ``T0 = warmup_steps``)::

    lr_t   = lr * lr_scale * min(1, t / T0)
    w_t    = t^r lr_t^weight_lr_power,   q_t = w_t / sum_{s<=t} w_s
    c_t    = 1 for t <= Tc (c_warmup_steps), else min(1, kappa w_t / sum_{Tc<s<=t} w_s)
    beta_t = beta1 (t <= T0 or rho = 0),  else 1 - S_t^rho (1 - beta1),
             S_t = q_t (1 - q_w) / (q_w (1 - q_t)),  q_w = q_{T0}
             (beta_anneal_steps A > 0: 1 - beta_t = (1 - beta1)^(1 - u) (1 - beta_final)^u,
              u = min(1, t / A); beta_final "auto": 1 - beta_final interpolated
              geometrically from 0.1 at A = 1,600 to 0.035 at A = 6,400, flat outside)
    z      <- z (1 - lr_t wd) - lr_t U_t
    x      <- x + c_t (z - x)
    y      <- beta_t x + (1 - beta_t) z

``reference_compat=True`` models the public AMUSE code: ``x`` is recovered from ``(y, z)`` with
the *new* ``beta_t`` every step, and ``weight_decay_at_y`` uses that same new ``beta_t``.
``averaging=False`` moves the parameter itself: ``p <- p (1 - lr_t wd) - lr_t U_t``.
Adam bias corrections use the group's step count ``t`` (a parameter that sat out steps still
divides by ``1 - beta2^t``), as the optimizer and the public code do.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

DEFAULTS = dict(
    lr=1e-2, lr_scale=1.0, beta1=0.8, rho=0.3, warmup_steps=100, r=0.0, weight_lr_power=2.0,
    momentum=0.95, nesterov=True, weight_decay=0.0, weight_decay_at_y=0.0, beta2=0.999,
    eps=1e-10, ns_steps=5, aux_update_type="adamw", update_type="adamw", direction="muon",
    spectral_power=0.0, spectral_input="momentum", reference_compat=False, averaging=True,
    c_warmup_steps=0, c_scale=1.0, beta_anneal_steps=0, beta_final="auto",
)  # fmt: skip
"""The optimizer's documented defaults; a group overrides any of them."""


def final_beta(beta_final: float | str, A: int) -> float:
    """``beta_final``, or for ``"auto"`` the geometric interpolation of ``1 - beta_final`` in
    ``A`` between (1,600, 0.1) and (6,400, 0.035), held flat outside."""
    if beta_final != "auto":
        return beta_final
    a = min(max(A, 1600), 6400)
    return 1 - 0.1 * (0.035 / 0.1) ** ((math.log(a) - math.log(1600)) / math.log(4))


def reference_newton_schulz(G: Tensor, steps: int) -> Tensor:
    """Quintic Newton-Schulz on one matrix in float64 (wide orientation)."""
    a, b, c = NS_COEFFICIENTS
    X = G.double()
    tall = X.shape[0] > X.shape[1]
    if tall:
        X = X.T
    X = X / (torch.linalg.norm(X) + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    return X.T if tall else X


def svd_power(O: Tensor, p: float) -> Tensor:
    """``U Sigma^p V^T`` of one matrix by an exact SVD (``p = 0``: the polar factor ``U V^T``)."""
    U, S, Vh = torch.linalg.svd(O.double(), full_matrices=False)
    return U @ torch.diag(S**p) @ Vh


def _spd_power(A: Tensor, q: float) -> Tensor:
    w, Q = torch.linalg.eigh(A)
    return Q @ torch.diag(w**q) @ Q.T


def _regularised(A: Tensor, eps: float = 1e-7) -> Tensor:
    """``A + (eps + 1e-4 tr(A) / d) I``: the documented damping of the coupled Newton iteration."""
    d = A.shape[0]
    return A + (eps + 1e-4 * torch.trace(A) / d) * torch.eye(d, dtype=A.dtype)


def regularised_half_power(O: Tensor) -> Tensor:
    """``Psi_{1/2}`` as the optimizer defines it (its regularisation included), by eigh.

    With ``Q = O / ||O||_F`` and the smaller Gram matrix ``G`` (``Q^T Q`` if cols <= rows)::

        S = (G + delta_G I)^{1/2},   M = (S + delta_S I)^{-1/2},   out = sqrt(||O||_F) Q M

    (``M Q`` for wide ``O``), ``delta_A = 1e-7 + 1e-4 tr(A)/d``. Without the two deltas this is
    exactly ``U Sigma^{1/2} V^T``.
    """
    norm = torch.linalg.norm(O)
    Q = O.double() / norm
    tall = O.shape[1] <= O.shape[0]
    G = Q.T @ Q if tall else Q @ Q.T
    M = _spd_power(_regularised(_spd_power(_regularised(G), 0.5)), -0.5)
    return (Q @ M if tall else M @ Q) * norm.sqrt()


def as_matrix(t: Tensor) -> Tensor:
    """``(out, in, kh, kw)`` -> ``(out, in*kh*kw)``."""
    return t.reshape(t.shape[0], -1)


class ReferenceAMUSE:
    """Groups as the optimizer takes them: dicts with ``params``, ``use_muon`` and overrides.

    ``regularised_spectral=True`` computes ``p = 1/2, 1/4`` with the optimizer's documented
    regularisation (by eigh, no Newton iteration) instead of the exact SVD power.

    ``x``, ``y``, ``z`` (and the parameter list order) are flat over all groups.
    """

    def __init__(self, groups: list[dict], regularised_spectral: bool = False, **defaults) -> None:
        self.regularised_spectral = regularised_spectral
        self.groups = []
        self.x, self.y, self.z = [], [], []
        for group in groups:
            cfg = {**DEFAULTS, **defaults, **{k: v for k, v in group.items() if k != "params"}}
            first = len(self.x)
            for p in group["params"]:
                self.x.append(p.detach().clone().double())
                self.y.append(p.detach().clone().double())
                self.z.append(p.detach().clone().double())
            index = list(range(first, len(self.x)))
            sched = dict(t=0, weights=[], c_warmup=None, beta_t=cfg["beta1"], c_t=0.0, lr_t=0.0)
            self.groups.append({"cfg": cfg, "index": index, **sched})
        self.buffers: list[dict[str, Tensor]] = [{} for _ in self.x]
        self.beta_of_y: dict[int, float] = {}  # the beta that built each parameter's y

    # -------------------------------------------------------------- schedule
    @staticmethod
    def advance(group: dict) -> tuple[float, float, float]:
        cfg = group["cfg"]
        group["t"] += 1
        t, T0 = group["t"], cfg["warmup_steps"]
        lr_t = cfg["lr"] * cfg["lr_scale"] * min(1.0, t / T0)
        w = t ** cfg["r"] * lr_t ** cfg["weight_lr_power"]
        group["weights"].append(w)  # w_1 .. w_t
        total = sum(group["weights"])
        q = w / total if total > 0 else 1.0
        if t == T0:
            group["c_warmup"] = q
        Tc = cfg["c_warmup_steps"]
        if t <= Tc:
            c = 1.0
        else:
            own = sum(group["weights"][Tc:])  # the steps after the c warm-up
            c = min(1.0, cfg["c_scale"] * (w / own if own > 0 else 1.0))
        if cfg["beta_anneal_steps"] > 0:
            A = cfg["beta_anneal_steps"]
            u = min(1.0, t / A)
            beta = 1 - (1 - cfg["beta1"]) ** (1 - u) * (1 - final_beta(cfg["beta_final"], A)) ** u
        elif t <= T0 or cfg["rho"] == 0:
            beta = cfg["beta1"]
        else:
            c_w = group["c_warmup"]
            s = q * (1 - c_w) / (c_w * (1 - q))
            beta = 1 - s ** cfg["rho"] * (1 - cfg["beta1"])
        group.update(lr_t=lr_t, c_t=c, beta_t=beta)
        return lr_t, c, beta

    # ------------------------------------------------------------ directions
    def buffer(self, i: int, name: str) -> Tensor:
        return self.buffers[i].setdefault(name, torch.zeros_like(self.x[i]))

    def momentum_input(self, i: int, g: Tensor, cfg: dict) -> Tensor:
        """EMA momentum ``m = mu m + (1 - mu) g``; Nesterov input ``(1 - mu) g + mu m``."""
        mu = cfg["momentum"]
        m = mu * self.buffer(i, "m") + (1 - mu) * g
        self.buffers[i]["m"] = m
        return (1 - mu) * g + mu * m if cfg["nesterov"] else m

    def muon(self, i: int, g: Tensor, cfg: dict) -> Tensor:
        u = as_matrix(self.momentum_input(i, g, cfg))
        rows, cols = u.shape
        if cfg["aux_update_type"] == "adamw":
            scale = 0.2 * math.sqrt(max(rows, cols))
        else:
            scale = math.sqrt(max(1.0, rows / cols))
        return scale * reference_newton_schulz(u, cfg["ns_steps"])

    def adamuon(self, i: int, g: Tensor, cfg: dict) -> Tensor:
        """``O = NS(sign(u))``, ``V = mu V + (1 - mu) O^2``, ``O_hat = O / (sqrt(V) + eps)``,
        ``U = 0.2 sqrt(rows cols) O_hat / ||O_hat||_F`` (element RMS exactly 0.2).

        This is AdaMuon as the optimizer documents it (sign before Newton-Schulz, V with the
        momentum's mu, no bias correction). The authors' public ``adamuon.py`` differs: no sign,
        V with a separate beta2 and bias correction, eps 1e-8 inside the final norm too; its
        rescale ``0.2 sqrt(max) sqrt(min) / ||O_hat||`` gives the same RMS 0.2.
        """
        mu = cfg["momentum"]
        O = reference_newton_schulz(
            torch.sign(as_matrix(self.momentum_input(i, g, cfg))), cfg["ns_steps"]
        )
        V = mu * as_matrix(self.buffer(i, "V")) + (1 - mu) * O * O
        self.buffers[i]["V"] = V.reshape(g.shape)
        O_hat = O / (V.sqrt() + cfg["eps"])
        return 0.2 * math.sqrt(O.numel()) * O_hat / torch.linalg.norm(O_hat)

    def adam_rms(self, i: int, g: Tensor, cfg: dict, t: int) -> Tensor:
        """Adam's bias-corrected ``m_hat / (sqrt(v_hat) + eps)`` with ``beta1 = momentum``."""
        mu, b2 = cfg["momentum"], cfg["beta2"]
        m = mu * self.buffer(i, "m") + (1 - mu) * g
        v = b2 * self.buffer(i, "v") + (1 - b2) * g * g
        self.buffers[i].update(m=m, v=v)
        return (m / (1 - mu**t)) / (torch.sqrt(v / (1 - b2**t)) + cfg["eps"])

    def spectral(self, i: int, g: Tensor, cfg: dict, t: int) -> Tensor:
        """``Psi_p(O) = U Sigma^p V^T``; ``p = 0`` is Muon's Newton-Schulz (not rescaled)."""
        if cfg["spectral_input"] == "momentum":
            O = as_matrix(self.momentum_input(i, g, cfg))
        else:
            O = as_matrix(self.adam_rms(i, g, cfg, t))
        p = cfg["spectral_power"]
        if p == 0:
            return reference_newton_schulz(O, cfg["ns_steps"])
        if p == 1 or not self.regularised_spectral:
            return svd_power(O, p)
        half = regularised_half_power(O)
        return half if p == 0.5 else regularised_half_power(half)

    def direction(self, i: int, g: Tensor, cfg: dict, t: int) -> Tensor:
        if cfg["use_muon"]:
            name = cfg["direction"]
            if name == "muon":
                U = self.muon(i, g, cfg)
            elif name == "adamuon":
                U = self.adamuon(i, g, cfg)
            else:
                U = self.spectral(i, g, cfg, t)
            return U.reshape(g.shape)
        if cfg["update_type"] == "sgd":
            return g
        b2 = cfg["beta2"]
        v = b2 * self.buffer(i, "v") + (1 - b2) * g * g
        self.buffers[i]["v"] = v
        return g / (torch.sqrt(v / (1 - b2**t)) + cfg["eps"])

    # ------------------------------------------------------------------ step
    def step(self, grads: list[Tensor | None]) -> None:
        """``grads[i]`` is the gradient at ``self.y[i]`` (``None``: the parameter sits out)."""
        for group in self.groups:
            lr_t, c, beta = self.advance(group)
            cfg = group["cfg"]
            for i in group["index"]:
                if grads[i] is not None:
                    self.move(i, grads[i].double(), cfg, group["t"], lr_t, c, beta)

    def move(
        self, i: int, g: Tensor, cfg: dict, t: int, lr_t: float, c: float, beta: float
    ) -> None:
        U = self.direction(i, g, cfg, t)
        wd = cfg["weight_decay"]
        if not cfg["averaging"]:
            self.x[i] = self.y[i] = self.z[i] = self.z[i] * (1 - lr_t * wd) - lr_t * U
            return
        x, y, z = self.x[i], self.y[i], self.z[i]
        wd_y = cfg["weight_decay_at_y"]
        compat = cfg["reference_compat"]
        if wd_y:
            # Exact: the beta that built y, so x = y + (1 - 1/beta)(z - y) stays put (x is kept
            # explicitly here). Public code (compat): the new beta of this step.
            beta_y = beta if compat else self.beta_of_y.get(i, cfg["beta1"])
            z = z - lr_t * wd_y * y
            y = y - lr_t * wd_y * (1 - beta_y) * y
        if compat:
            x = y + (1 - 1 / beta) * (z - y)  # the public code's recovery, with the new beta
        if not cfg["use_muon"] and cfg["update_type"] == "adamw":
            z = z - lr_t * (U + wd * z)
        else:
            z = z * (1 - lr_t * wd) - lr_t * U
        x = (1 - c) * x + c * z
        self.x[i], self.y[i], self.z[i] = x, beta * x + (1 - beta) * z, z
        self.beta_of_y[i] = beta
