"""Compute-optimal allocation laws: for a training budget of C FLOPs, the parameters N_opt and tokens D_opt.

Every law here counts compute as C = 6·N·D and parameters as Hoffmann et al. 2022 do, embeddings included
(Kaplan et al. 2020 count non-embedding parameters only; a fit from the lab's `lm-lab report` counts
`params`, every parameter). Pure functions of floats: no model is built.

- `chinchilla`: about 20 tokens per parameter (Hoffmann et al. 2022, Table 3), so N = sqrt(C / 120).
- `hoffmann`: Approach 3 as published, L(N, D) = E + A/N^α + B/D^β with E 1.69, A 406.4, B 410.7,
  α 0.34, β 0.28 (§3.3).
- `epoch`: the same form refitted by Besiroglu et al. 2024 ("Chinchilla scaling: a replication attempt", §3):
  E 1.8172, A 482.01, B 2085.43, α 0.3478, β 0.3658.
- a fit of the lab's own runs, as JSON in the formats of DESIGN.md's `lm-lab fit` (which the scaling-study work
  adds; until then any tool can write them): `--method parametric` ({"E", "A", "B", "alpha", "beta"}) or
  `--method isoflop` ({"params": {"coef", "exponent"}, "tokens": {"coef", "exponent"}}: N_opt = k·C^a).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from lm_lab.errors import ConfigError


@dataclass(frozen=True)
class TokensPerParameter:
    """D_opt = ratio x N_opt (the Chinchilla rule of thumb); with C = 6ND, N_opt = sqrt(C / (6 ratio))."""

    ratio: float = 20.0
    name: str = "chinchilla"
    source: str = "Hoffmann et al. 2022 (about 20 tokens per parameter)"

    def optimum(self, flops: float) -> tuple[float, float]:
        n = math.sqrt(flops / (6 * self.ratio))
        return n, self.ratio * n

    def loss(self, params: float, tokens: float) -> float | None:
        return None


@dataclass(frozen=True)
class Parametric:
    """L(N, D) = E + A / N^alpha + B / D^beta, minimised under C = 6ND (Hoffmann et al. 2022 Eq. 4):
    N_opt = G (C/6)^a, D_opt = (C/6)^b / G, with a = beta/(alpha+beta), b = alpha/(alpha+beta) and
    G = (alpha A / (beta B))^(1/(alpha+beta))."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    name: str = "parametric"
    source: str = ""

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))

    def optimum(self, flops: float) -> tuple[float, float]:
        a = self.beta / (self.alpha + self.beta)
        b = self.alpha / (self.alpha + self.beta)
        return self.G * (flops / 6) ** a, (flops / 6) ** b / self.G

    def loss(self, params: float, tokens: float) -> float | None:
        return self.E + self.A / params**self.alpha + self.B / tokens**self.beta


@dataclass(frozen=True)
class PowerLaws:
    """N_opt = k_N C^a and D_opt = k_D C^b, fitted to IsoFLOP minima (Hoffmann et al. 2022 Approach 2)."""

    params_coef: float
    params_exponent: float
    tokens_coef: float
    tokens_exponent: float
    name: str = "isoflop"
    source: str = ""

    def optimum(self, flops: float) -> tuple[float, float]:
        return self.params_coef * flops**self.params_exponent, self.tokens_coef * flops**self.tokens_exponent

    def loss(self, params: float, tokens: float) -> float | None:
        return None


LAWS = {
    "chinchilla": TokensPerParameter(),
    "hoffmann": Parametric(
        E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, name="hoffmann", source="Hoffmann et al. 2022, Approach 3"
    ),
    "epoch": Parametric(
        E=1.8172,
        A=482.01,
        B=2085.43,
        alpha=0.3478,
        beta=0.3658,
        name="epoch",
        source="Besiroglu et al. 2024, replication of Approach 3",
    ),
}


def law(name: str):
    """A published law by name."""
    if name not in LAWS:
        raise ConfigError(f"--law {name!r} is unknown; choose one of {sorted(LAWS)} or give --fit FIT.json")
    return LAWS[name]


def load_fit(path: str | Path):
    """The law in the JSON `lm-lab fit` prints: `--method parametric` or `--method isoflop` (either is accepted)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--fit {path}: no such file; give the JSON `lm-lab fit` printed") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--fit {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        data = {}
    source = f"fit {path.name}"
    try:
        if {"E", "A", "B", "alpha", "beta"} <= set(data):
            values = {k: float(data[k]) for k in ("E", "A", "B", "alpha", "beta")}
            fitted = Parametric(**values, name="fit (parametric)", source=source)
        elif isinstance(data.get("params"), dict) and isinstance(data.get("tokens"), dict):
            p, t = data["params"], data["tokens"]
            fitted = PowerLaws(
                float(p["coef"]),
                float(p["exponent"]),
                float(t["coef"]),
                float(t["exponent"]),
                name="fit (isoflop)",
                source=source,
            )
        else:
            raise KeyError
    except (KeyError, TypeError, ValueError):
        raise ConfigError(
            f"--fit {path} is neither `lm-lab fit --method parametric` output (E, A, B, alpha, beta) nor "
            f"`--method isoflop` output (params and tokens, each with coef and exponent)"
        ) from None
    bad = [k for k, v in vars(fitted).items() if isinstance(v, float) and not (math.isfinite(v) and v > 0)]
    if bad:
        raise ConfigError(f"--fit {path}: {bad} must be positive finite numbers")
    return fitted
