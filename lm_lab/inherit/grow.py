"""Inheritune's loop (Sanyal et al. 2024, Algorithm 1 and §4) and its baselines, as a sequence of `fit()` runs.

    reference k layers, scored on the validation split
    n = k/2: inherit the reference's first n layers, train T steps, score
    while worse than the reference and n < k: grow by 2 layers inheriting the reference's next ones, train T steps

Every stage is a run directory `DIR/stages/L{n}` that `fit` resumes, so the same command continues a killed loop
at the stage it was in; finished stages return their results without training. The baselines (§4: random init,
stacking, hybrid stacking, half width, logit and DistilBERT-style distillation) and the paper's comparisons
(same-size random init for T and 2T steps, the full-size model for T) are runs of the same kind in
`DIR/baselines/NAME`. The loop writes `inheritune.csv`, `inheritune.json` and `inheritune.png`.

Growth: by default the trained target keeps its layers and takes the reference's next two (`grow_from=target`,
Algorithm 1's "grow M_tgt by inheriting additional layers"); `grow_from=reference` re-inherits the first n + 2
layers from the reference instead (§4's "repeat steps 2-3").
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from lm_lab.config import InitConfig, RunConfig
from lm_lab.errors import ConfigError, raise_if
from lm_lab.fileio import atomic_write_text
from lm_lab.results import Results

log = logging.getLogger(__name__)

GROW_FROM = ("target", "reference")
# the paper's comparisons and baselines, by name (README: Inheritune)
BASELINES = (
    "random",  # same size as the loop's final model, random init, T steps (Table 1)
    "random_2x",  # the same for 2T steps (Table 1)
    "full",  # the full k-layer model from random init, T steps (Table 1)
    "stacking",  # n/2 random layers trained T steps, stacked to n, T steps (Gong et al. 2019; Table 2)
    "hybrid_stacking",  # the reference's first n/2 layers stacked to n, T steps (Table 2)
    "half_width",  # all k layers at half the width, sliced from the reference, T steps (Table 2)
    "logit_kd",  # n random layers distilled from the reference's logits, T steps (Fig. 3, App. C.1)
    "distilbert",  # every other reference layer, distilled with logits + hidden-state cosine, T steps (Fig. 3)
)
# init=NAME on the command line runs that baseline alone
INIT_BASELINES = ("random", "stacking", "hybrid_stacking", "half_width")
# what a target shares with its reference (model= must name the reference's architecture)
ARCH_FIELDS = ("d_model", "n_head", "n_kv_head", "norm", "mlp", "positions", "bias", "tie_embeddings")


@dataclass
class InherituneConfig:
    """The `inheritune:` node of `conf/experiment/inheritune.yaml`."""

    steps: int | None = None
    """T: training steps of every stage (null: `train.max_steps`)."""
    start_layers: int | None = None
    """n of the first stage (null: k/2, the paper's choice)."""
    grow_by: int = 2
    """Layers added per stage (the paper: 2)."""
    grow_from: str = "target"
    """`target`: the trained target keeps its layers and inherits the reference's next ones; `reference`: each
    stage inherits its first n layers from the reference afresh."""
    tolerance: float = 0.0
    """The target matches the reference when its validation loss is at most the reference's + this (nats; a
    negative tolerance asks it to beat the reference by that much)."""
    baselines: list[str] = field(default_factory=list)
    """Runs to compare after the loop (names in BASELINES), at the loop's final size n."""
    layers: int | None = None
    """The size of the baselines (null: the size the loop ended at; without a loop, k/2)."""

    def __post_init__(self) -> None:
        p = []
        if self.steps is not None and (
            isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1
        ):
            p.append(f"inheritune.steps={self.steps!r} must be a positive integer or null (train.max_steps)")
        for name in ("start_layers", "layers"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                p.append(f"inheritune.{name}={v!r} must be a positive integer or null")
        if isinstance(self.grow_by, bool) or not isinstance(self.grow_by, int) or self.grow_by < 1:
            p.append(f"inheritune.grow_by={self.grow_by!r} must be a positive integer (the paper grows by 2)")
        if self.grow_from not in GROW_FROM:
            p.append(f"inheritune.grow_from={self.grow_from!r} must be one of {list(GROW_FROM)}")
        if (
            isinstance(self.tolerance, bool)
            or not isinstance(self.tolerance, int | float)
            or not math.isfinite(self.tolerance)
        ):
            p.append(
                f"inheritune.tolerance={self.tolerance!r} must be a number of nats (negative: beat the reference by that)"
            )
        self.baselines = list(self.baselines or [])
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            p.append(f"inheritune.baselines: {unknown} unknown; choose from {list(BASELINES)}")
        raise_if(p)

    @classmethod
    def from_dict(cls, values: dict) -> InherituneConfig:
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(values) - known)
        if extra:
            raise ConfigError(f"inheritune.{extra[0]} is not a setting; known: {sorted(known)}")
        return cls(**values)


@dataclass
class Stage:
    """One row of the loop's table."""

    name: str
    layers: int
    params: int
    steps: int
    tokens: int
    val_loss: float
    reference_val_loss: float
    decision: str
    init: str
    run_dir: str

    @classmethod
    def of(cls, name: str, r: Results, reference: float, decision: str, run_dir: Path) -> Stage:
        return cls(name, r.n_layer, r.params, r.steps, r.tokens, r.val_loss, reference, decision, r.init, str(run_dir))


def decide(val_loss: float, reference: float, layers: int, k: int, tolerance: float = 0.0) -> str:
    """Algorithm 1's test after a stage: `matched` (val loss ≤ the reference's + tolerance), `full` (n = k:
    nothing left to inherit), else `grow`."""
    if math.isfinite(val_loss) and val_loss <= reference + tolerance:
        return "matched"
    return "full" if layers >= k else "grow"


def stage_sizes(k: int, start: int, grow_by: int) -> list[int]:
    """The sizes the loop may visit: start, start + grow_by, ..., ending at k exactly."""
    sizes = [start]
    while sizes[-1] < k:
        sizes.append(min(sizes[-1] + grow_by, k))
    return sizes


FitFn = Callable[..., Results]


class Inheritune:
    """The loop over `fit`: `Inheritune(run, out_dir, cfg).run()` returns the table's rows.

    `run`: the composed run (`init.reference` is the reference model, whose architecture every run takes;
    `train.max_steps` or `inheritune.steps` is T). `init`: `inheritune` (the loop, the default) or the baseline to
    run alone (`random`, `stacking`, `hybrid_stacking`, `half_width`). `fit_kwargs(run_dir)` gives each stage's callbacks and loggers
    (run.py: instantiated from the config, per stage)."""

    def __init__(
        self,
        run: RunConfig,
        out_dir: str | Path,
        cfg: InherituneConfig,
        *,
        fit_kwargs: Callable[[Path], dict] | None = None,
        overrides: Sequence[str] = (),
        fit: FitFn | None = None,
        init: str | None = None,
    ):
        from lm_lab.checkpoint import read_source

        self.run, self.out, self.cfg = run, Path(out_dir), cfg
        self.init = init or run.init.name  # what to run: `inheritune` (the loop) or a baseline init
        self.fit_kwargs = fit_kwargs or (lambda run_dir: {})
        self.overrides = list(overrides)
        if fit is None:
            from lm_lab.train import fit
        self._fit = fit
        self.last_results: Results | None = None
        problems = []
        reference = run.init.reference
        if not reference:
            problems.append("experiment=inheritune needs init.reference=PATH (the trained reference model)")
        raise_if(problems)
        self.reference_path = str(Path(reference).expanduser())
        ref_cfg, _ = read_source(self.reference_path)
        self.ref_cfg = ref_cfg
        self.k = ref_cfg.n_layer
        self.steps = cfg.steps or run.train.max_steps
        self.start = cfg.start_layers or max(1, self.k // 2)
        if self.start > self.k:
            raise ConfigError(
                f"inheritune.start_layers={self.start} exceeds the reference's {self.k} layers; use at most {self.k}"
            )
        # the targets are the reference's architecture at another depth; model= (e.g. gpt2_medium) names it
        self.model = ref_cfg
        differ = [f for f in ARCH_FIELDS if getattr(run.model, f) != getattr(ref_cfg, f)]
        if differ:
            log.warning(
                "model=%s differs from the reference in %s: every run here takes the reference's architecture",
                run.model.name,
                ", ".join(f"{f} ({getattr(run.model, f)} vs {getattr(ref_cfg, f)})" for f in differ),
            )

    # -- the runs ----------------------------------------------------------------------------------------------

    def _train(self, name: str, run_dir: Path, layers: int, init: InitConfig, steps: int, **run_changes) -> Results:
        model = replace(self.model, n_layer=layers, name=f"{self.run.model.name}_L{layers}")
        model = run_changes.pop("model", model)
        run = replace(self.run, model=model, init=init, train=replace(self.run.train, max_steps=steps), **run_changes)
        log.info("inheritune %s: %d layers, init=%s, %d steps -> %s", name, layers, init.name, steps, run_dir)
        overrides = [*self.overrides, f"model.n_layer={model.n_layer}", f"init={init.name}", f"train.max_steps={steps}"]
        results = self._fit(run, run_dir, overrides=overrides, **self.fit_kwargs(run_dir))
        if results.stop_reason not in ("max_steps", "budget"):
            raise Stopped(results)
        self.last_results = results
        return results

    def reference_loss(self) -> float:
        """The reference's validation loss on the tokens every stage is scored on (cached in reference.json)."""
        cache = self.out / "reference.json"
        if cache.is_file():
            saved = json.loads(cache.read_text())
            if saved.get("path") == self.reference_path:
                return saved["val_loss"]
        from lm_lab.inherit.scoring import score

        loss = score(replace(self.run, model=self.ref_cfg), self.reference_path)
        atomic_write_text(cache, json.dumps({"path": self.reference_path, "val_loss": loss, "layers": self.k}) + "\n")
        log.info("reference %s: %d layers, val_loss %.4f", self.reference_path, self.k, loss)
        return loss

    def grow(self, reference: float) -> list[Stage]:
        """Algorithm 1: the stages until the target matches the reference or has all k layers."""
        rows, previous = [], None
        for n in stage_sizes(self.k, self.start, self.cfg.grow_by):
            run_dir = self.out / "stages" / f"L{n:02d}"
            grows = previous is not None and self.cfg.grow_from == "target"
            init = InitConfig(
                name="inheritune",
                reference=self.reference_path,
                path=str(previous / "checkpoints" / "last.ckpt") if grows else None,
                modules=self.run.init.modules,
            )
            results = self._train(f"stage L{n}", run_dir, n, init, self.steps)
            decision = decide(results.val_loss, reference, n, self.k, self.cfg.tolerance)
            rows.append(Stage.of(f"inheritune L{n}", results, reference, decision, run_dir))
            self._write(rows, reference)
            if decision != "grow":
                break
            previous = run_dir
        return rows

    def baseline(self, name: str, layers: int, reference: float) -> list[Stage]:
        """One of BASELINES at `layers` layers (the full model and half width at k)."""
        T, ref, base = self.steps, self.reference_path, self.out / "baselines"
        init = InitConfig()
        steps, n, extra, rows = T, layers, {}, []
        if name == "random_2x":
            steps = 2 * T
        elif name == "full":
            n = self.k
        elif name == "stacking":  # round 1: n/2 layers from random init; round 2: stacked to n
            if layers % 2:
                raise ConfigError(f"stacking needs an even number of layers (inheritune.layers={layers})")
            first = self._train("stacking round 1", base / "stacking_round1", layers // 2, InitConfig(), T)
            rows.append(Stage.of("stacking round 1", first, reference, "baseline", base / "stacking_round1"))
            init = InitConfig(name="stacking", path=str(base / "stacking_round1" / "checkpoints" / "last.ckpt"))
        elif name == "hybrid_stacking":
            init = InitConfig(name="hybrid_stacking", reference=ref)
        elif name == "half_width":
            from lm_lab.inherit.surgery import half_width_config

            n = self.k
            extra["model"] = replace(
                half_width_config(replace(self.model, n_layer=self.k)), name=f"{self.run.model.name}_half"
            )
            init = InitConfig(name="half_width", reference=ref)
        elif name in ("logit_kd", "distilbert"):
            from lm_lab.inherit.distill import DistillConfig

            kind = "logit" if name == "logit_kd" else "distilbert"
            extra["distill"] = DistillConfig(kind=kind, teacher=ref)
            if kind == "distilbert":
                n = max(1, (self.k + 1) // 2)  # every other teacher layer
                init = InitConfig(name="every_other", reference=ref)
        run_dir = base / name
        results = self._train(name, run_dir, n, init, steps, **extra)
        rows.append(Stage.of(name, results, reference, "baseline", run_dir))
        return rows

    def run_all(self) -> list[Stage]:
        """The loop (init=inheritune) or the one baseline init= names, then `inheritune.baselines`."""
        reference = self.reference_loss()
        rows: list[Stage] = []
        name = self.init
        if name == "inheritune":
            rows = self.grow(reference)
            size = self.cfg.layers or rows[-1].layers
        elif name in INIT_BASELINES:
            size = self.cfg.layers or self.start
            rows = self.baseline(name, size, reference)
        else:
            raise ConfigError(
                f"experiment=inheritune runs init=inheritune (the loop) or a baseline init "
                f"({', '.join(INIT_BASELINES)}), not init={name}"
            )
        for b in self.cfg.baselines:
            rows += self.baseline(b, size, reference)
            self._write(rows, reference)
        self._write(rows, reference)
        return rows

    # -- evidence ----------------------------------------------------------------------------------------------

    def _write(self, rows: list[Stage], reference: float) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        table = [asdict(r) for r in rows]
        with (self.out / "inheritune.csv.tmp").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(table[0]))
            w.writeheader()
            w.writerows(table)
        (self.out / "inheritune.csv.tmp").replace(self.out / "inheritune.csv")
        summary = {
            "reference": {"path": self.reference_path, "layers": self.k, "val_loss": reference},
            "steps_per_stage": self.steps,
            "rows": table,
        }
        atomic_write_text(self.out / "inheritune.json", json.dumps(summary, indent=2) + "\n")
        plot(rows, reference, self.k, self.out / "inheritune.png")


class Stopped(Exception):
    """A stage ended without finishing (interrupted, non-finite, failed): the loop stops with its results."""

    def __init__(self, results: Results):
        super().__init__(results.stop_reason)
        self.results = results


def format_table(rows: Sequence[Stage]) -> str:
    """The loop's table as aligned text."""
    head = ("run", "layers", "params", "steps", "tokens", "val_loss", "ref_val_loss", "decision")
    body = [
        (r.name, str(r.layers), f"{r.params:,}", str(r.steps), f"{r.tokens:,}", f"{r.val_loss:.4f}",
         f"{r.reference_val_loss:.4f}", r.decision)
        for r in rows
    ]  # fmt: skip
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in [head, *body])


def plot(rows: Sequence[Stage], reference: float, k: int, path: Path) -> None:
    """Validation loss against layers: the loop's stages as a line, the baselines as points, the reference as a
    horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    stages = [r for r in rows if r.decision != "baseline"]
    if stages:
        ax.plot([r.layers for r in stages], [r.val_loss for r in stages], "o-", label="Inheritune stages")
    for r in rows:
        if r.decision == "baseline":
            ax.scatter([r.layers], [r.val_loss], marker="x")
            ax.annotate(r.name, (r.layers, r.val_loss), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(reference, color="k", linestyle="--", label=f"reference ({k} layers)")
    ax.set_xlabel("layers")
    ax.set_ylabel("validation loss (nats)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


__all__ = ["BASELINES", "Inheritune", "InherituneConfig", "Stage", "Stopped", "decide", "format_table", "stage_sizes"]
