"""The parametric fit's time and accuracy: 240 runs drawn from Besiroglu et al. 2024's law (E 1.8172, A 482.01,
B 2085.43, α 0.3478, β 0.3658), N log-uniform in [1e6, 1e9], D in [1e8, 1e11], loss times e^ε with ε ~ N(0, noise),
fitted by `fits.parametric` from the paper's full grid of 4500 starts (and, for comparison, from the grid's best
`--starts` only).

    python benchmarks/fits.py [--runs 240] [--noise 0.01] [--starts 300] [--seed 0]

One core: the script sets OMP_NUM_THREADS (and its kin) to 1 before numpy loads; on a shared machine also pin it,
`taskset -c 0 python benchmarks/fits.py`. It prints the seconds of each fit and the recovered parameters against
the truth; wall-clock seconds and the process's CPU seconds (what one core costs when other work shares it).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from lm_lab.scaling.fits import GRID, parametric  # noqa: E402
from lm_lab.scaling.laws import LAWS  # noqa: E402

TRUTH = LAWS["epoch"]


def runs(count: int, noise: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = np.exp(rng.uniform(np.log(1e6), np.log(1e9), count))
    d = np.exp(rng.uniform(np.log(1e8), np.log(1e11), count))
    loss = (TRUTH.E + TRUTH.A / n**TRUTH.alpha + TRUTH.B / d**TRUTH.beta) * np.exp(rng.normal(0, noise, count))
    return {"params": n, "tokens": d, "loss": loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=240)
    parser.add_argument("--noise", type=float, default=0.01, help="standard deviation of ln L's noise (0.01: 1%%)")
    parser.add_argument("--starts", type=int, default=300, help="the comparison fit's L-BFGS starts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    table = runs(args.runs, args.noise, args.seed)
    points = int(np.prod([len(v) for v in GRID.values()]))
    truth = {"E": TRUTH.E, "A": TRUTH.A, "B": TRUTH.B, "alpha": TRUTH.alpha, "beta": TRUTH.beta}
    truth["a"] = TRUTH.beta / (TRUTH.alpha + TRUTH.beta)
    print(f"{args.runs} runs, noise {args.noise:g}, affinity {sorted(os.sched_getaffinity(0))}")
    print(f"{'fit':28s} {'wall s':>7s} {'CPU s':>7s} " + " ".join(f"{k:>17s}" for k in truth) + f" {'huber_loss':>12s}")
    print(f"{'truth':28s} {'':>7s} {'':>7s} " + " ".join(f"{v:17.4f}" for v in truth.values()))
    for label, starts in ((f"full grid ({points} starts)", None), (f"best {args.starts} of the grid", args.starts)):
        start, cpu = time.perf_counter(), time.process_time()
        fit = parametric(**table, starts=starts)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        got = {k: fit[k] for k in ("E", "A", "B", "alpha", "beta")} | {"a": fit["allocation"]["a"]}
        cells = " ".join(f"{got[k]:9.4f} ({got[k] / truth[k] - 1:+5.1%})" for k in truth)
        print(f"{label:28s} {seconds:7.2f} {cpu:7.2f} {cells} {fit['huber_loss']:12.6e}", flush=True)


if __name__ == "__main__":
    main()
