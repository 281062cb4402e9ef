"""PNG figures of the fits in `lm_lab.scaling.fits`, drawn with matplotlib's Figure API (no pyplot, no global
state, no display needed): `isoflop`, `parametric`, `hyperparams`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from lm_lab.scaling.fits import BUDGET_RTOL
from lm_lab.scaling.laws import Parametric


def isoflop(fit: dict, table: dict[str, np.ndarray], path: str | Path) -> None:
    """Left: loss against N per budget, its runs, its parabola in ln N and its vertex. Right: N_opt and D_opt
    against C, the budgets' optima and the power laws, extrapolated to the predicted budgets."""
    fig = Figure(figsize=(12, 5), layout="constrained")
    left, right = fig.subplots(1, 2)
    colours = _colours(len(fit["per_budget"]))
    flops = np.asarray(table["flops"], dtype=float)
    for colour, budget in zip(colours, fit["per_budget"], strict=True):
        runs = np.isclose(flops, budget["flops"], rtol=BUDGET_RTOL, atol=0)
        n, loss = np.asarray(table["params"])[runs], np.asarray(table["loss"])[runs]
        left.scatter(n, loss, color=colour, s=18, label=f"C = {budget['flops']:.3g}")
        # the parabola through the fitted vertex; its curvature by least squares given that vertex
        u = np.log(n / budget["params"])
        curvature = float(((loss - budget["loss"]) * u * u).sum() / (u**4).sum())
        grid = np.linspace(u.min(), u.max(), 100)
        left.plot(budget["params"] * np.exp(grid), budget["loss"] + curvature * grid**2, color=colour, lw=1)
        left.scatter([budget["params"]], [budget["loss"]], color=colour, marker="*", s=120, edgecolor="black", lw=0.5)
    left.set(xscale="log", xlabel="parameters N", ylabel="loss", title="IsoFLOP profiles (star: N_opt)")
    from matplotlib.ticker import NullFormatter

    left.xaxis.set_minor_formatter(NullFormatter())  # a narrow range labels every minor tick, overlapping
    left.legend(fontsize="small")

    c = np.array([b["flops"] for b in fit["per_budget"]])
    predicted = np.array([p["flops"] for p in fit["predictions"]])
    span = np.geomspace(c.min(), max(c.max(), *predicted) if len(predicted) else c.max(), 100)
    for key, colour, name in (("params", "tab:blue", "N_opt"), ("tokens", "tab:orange", "D_opt")):
        law = fit[key]
        right.scatter(c, [b[key] for b in fit["per_budget"]], color=colour, label=f"{name} per budget")
        right.plot(
            span,
            law["coef"] * span ** law["exponent"],
            color=colour,
            label=f"{name} = {law['coef']:.3g} C^{law['exponent']:.3f}",
        )
        if len(predicted):
            values = [p[key] for p in fit["predictions"]]
            right.scatter(predicted, values, color=colour, marker="x", s=60, label=f"{name} predicted")
    right.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel="N_opt, D_opt", title="Optima vs compute")
    right.legend(fontsize="small")
    fig.savefig(path, dpi=110)


def parametric(fit: dict, table: dict[str, np.ndarray], path: str | Path) -> None:
    """Left: the fitted L(N, D) as contours over (N, D), the runs coloured by their loss, and the compute-optimal
    frontier. Right: the law's loss against each run's, on the line y = x when the law fits."""
    law = Parametric(E=fit["E"], A=fit["A"], B=fit["B"], alpha=fit["alpha"], beta=fit["beta"])
    n, d, loss = (np.asarray(table[k], dtype=float) for k in ("params", "tokens", "loss"))
    fig = Figure(figsize=(12, 5), layout="constrained")
    left, right = fig.subplots(1, 2)
    grid_n = np.geomspace(n.min() / 2, n.max() * 2, 200)
    grid_d = np.geomspace(d.min() / 2, d.max() * 2, 200)
    mesh_n, mesh_d = np.meshgrid(grid_n, grid_d)
    surface = law.E + law.A / mesh_n**law.alpha + law.B / mesh_d**law.beta
    levels = np.quantile(surface, np.linspace(0.02, 0.98, 15))
    contours = left.contour(mesh_n, mesh_d, surface, levels=levels, cmap="viridis", linewidths=0.8)
    left.clabel(contours, fontsize="x-small", fmt="%.2f")
    points = left.scatter(n, d, c=loss, cmap="viridis", s=16, edgecolor="black", lw=0.3, label="runs")
    fig.colorbar(points, ax=left, label="run loss")
    budgets = np.geomspace((6 * n * d).min(), (6 * n * d).max(), 50)
    frontier = np.array([law.optimum(c) for c in budgets])
    left.plot(frontier[:, 0], frontier[:, 1], color="tab:red", lw=1.5, label="compute-optimal N, D")
    left.set(
        xscale="log",
        yscale="log",
        xlim=(grid_n[0], grid_n[-1]),
        ylim=(grid_d[0], grid_d[-1]),
        xlabel="parameters N",
        ylabel="tokens D",
        title=f"L = {law.E:.3f} + {law.A:.4g}/N^{law.alpha:.3f} + {law.B:.4g}/D^{law.beta:.3f}",
    )
    left.legend(fontsize="small")
    predicted = law.E + law.A / n**law.alpha + law.B / d**law.beta
    right.scatter(loss, predicted, s=16, label="runs")
    bounds = [min(loss.min(), predicted.min()), max(loss.max(), predicted.max())]
    right.plot(bounds, bounds, color="black", lw=1, label="y = x")
    right.set(xlabel="run loss", ylabel="fitted law's loss", title="Fitted vs actual")
    right.legend(fontsize="small")
    fig.savefig(path, dpi=110)


def hyperparams(fit: dict, path: str | Path) -> None:
    """One panel per fitted quantity: the best run's value per budget, its power law, and the predictions."""
    names = list(fit["laws"])
    columns = 3
    rows = -(-len(names) // columns)
    fig = Figure(figsize=(4.5 * columns, 3.6 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    c = np.array([b["flops"] for b in fit["budgets"]])
    predicted = np.array([p["flops"] for p in fit["predictions"]])
    span = np.geomspace(c.min(), max(c.max(), *predicted) if len(predicted) else c.max(), 100)
    for ax, name in zip(axes, names, strict=False):
        law = fit["laws"][name]
        ax.scatter(c, [b[name] for b in fit["budgets"]], label="best run per budget")
        ax.plot(span, law["coef"] * span ** law["exponent"], label=f"{law['coef']:.3g} C^{law['exponent']:.3f}")
        if len(predicted):
            ax.scatter(predicted, [p["raw"][name] for p in fit["predictions"]], marker="x", s=60, label="predicted")
            if name in fit["predictions"][0]["model"]:
                values = [p["model"][name] for p in fit["predictions"]]
                ax.scatter(predicted, values, marker="+", s=80, label="rounded model")
        ax.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel=name, title=name)
        ax.legend(fontsize="x-small")
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    fig.savefig(path, dpi=110)


def _colours(count: int) -> list:
    from matplotlib import colormaps

    return [colormaps["viridis"](x) for x in np.linspace(0, 0.9, max(count, 1))]
