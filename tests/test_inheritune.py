"""Inheritune's grow loop (Sanyal et al. 2024, Algorithm 1): its decisions for given losses, the stages' starting
points, the table it writes, a real loop on tiny models killed mid-way and resumed, and the baselines' runs."""

import csv
import json
import math
from dataclasses import asdict, fields, replace
from itertools import islice
from pathlib import Path

import lightning as L
import pytest
import torch

from callbacks.checkpoint import LastCheckpoint
from lm_lab.checkpoint import read_checkpoint
from lm_lab.config import DistillConfig, InitConfig, RunConfig, TrainConfig, TrainerConfig
from lm_lab.data.config import DataConfig
from lm_lab.data.embedded import embedded_documents
from lm_lab.data.tokenizers import TokenizerConfig
from lm_lab.errors import ConfigError
from lm_lab.guards import StopRequested
from lm_lab.inherit.distill import DistillModule
from lm_lab.inherit.grow import Inheritune, InherituneConfig, Stopped, decide, format_table, stage_sizes
from lm_lab.models import GPT, ModelConfig
from lm_lab.optim import SchedulerConfig
from lm_lab.results import Results
from lm_lab.train import fit

QUIET = TrainerConfig(accelerator="cpu", precision="32-true", enable_progress_bar=False, enable_model_summary=False)


def test_stage_sizes_and_decisions():
    assert stage_sizes(8, 4, 2) == [4, 6, 8]
    assert stage_sizes(8, 3, 2) == [3, 5, 7, 8]  # the last stage is the reference's depth, never beyond
    assert stage_sizes(24, 12, 2) == [12, 14, 16, 18, 20, 22, 24]
    assert stage_sizes(4, 4, 2) == [4]
    assert decide(3.0, 3.0, 4, 8) == "matched"  # "while worse than the reference": equal is a match
    assert decide(3.0001, 3.0, 4, 8) == "grow"
    assert decide(3.0001, 3.0, 4, 8, tolerance=1e-3) == "matched"
    assert decide(3.5, 3.0, 8, 8) == "full"
    assert decide(math.nan, 3.0, 4, 8) == "grow"


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="inheritune.grow_from='middle'"):
        InherituneConfig(grow_from="middle")
    with pytest.raises(ConfigError, match=r"inheritune.baselines: \['stack'\] unknown"):
        InherituneConfig(baselines=["stack"])
    with pytest.raises(ConfigError, match="inheritune.tolerance=nan"):
        InherituneConfig(tolerance=float("nan"))
    with pytest.raises(ConfigError, match="inheritune.steps=0"):
        InherituneConfig(steps=0)
    with pytest.raises(ConfigError, match="inheritune.step is not a setting"):
        InherituneConfig.from_dict({"step": 3})


def fake_reference(tmp_path: Path, n_layer: int = 8) -> Path:
    """A lab-style checkpoint file holding only what the loop reads before training: the model config and weights."""
    cfg = ModelConfig(name="ref", n_layer=n_layer, n_head=2, d_model=32, block_size=16, vocab_size=97)
    state = {f"model.{k}": v for k, v in GPT(cfg).state_dict().items()}
    path = tmp_path / "ref.ckpt"
    ckpt = {"hyper_parameters": {"model": asdict(cfg)}, "state_dict": state, "global_step": 0}
    torch.save({**ckpt, "loops": {}, "optimizer_states": []}, path)
    return path


class FakeFit:
    """Stands in for `fit`: records each call's run and returns the next loss of a given sequence."""

    def __init__(self, losses):
        self.losses, self.calls = list(losses), []

    def __call__(self, run, run_dir, **kwargs):
        self.calls.append((run, Path(run_dir)))
        r = Results(**{f.name: None for f in fields(Results)})
        return replace(
            r,
            val_loss=self.losses[len(self.calls) - 1],
            n_layer=run.model.n_layer,
            params=run.model.n_layer * 1000,
            steps=run.train.max_steps,
            tokens=run.train.max_steps * 64,
            stop_reason="max_steps",
            init=run.init.name,
        )


def loop(tmp_path, losses, reference_loss=3.0, **settings):
    ref = fake_reference(tmp_path)
    out = tmp_path / "loop"
    out.mkdir(exist_ok=True)
    (out / "reference.json").write_text(json.dumps({"path": str(ref), "val_loss": reference_loss}))
    run = RunConfig(init=InitConfig(name="inheritune", reference=str(ref)), train=TrainConfig(max_steps=7))
    fake = FakeFit(losses)
    return Inheritune(run, out, InherituneConfig(**settings), fit=fake), fake, ref, out


@pytest.mark.parametrize(
    ("losses", "layers", "last"),
    [([3.5, 2.9], [4, 6], "matched"), ([3.5, 3.2, 3.1], [4, 6, 8], "full"), ([3.0], [4], "matched")],
)
def test_the_loop_stops_at_the_right_stage(tmp_path, losses, layers, last):
    lp, fake, ref, out = loop(tmp_path, losses)
    rows = lp.run_all()
    assert [r.layers for r in rows] == layers == [run.model.n_layer for run, _ in fake.calls]
    assert [r.decision for r in rows] == ["grow"] * (len(layers) - 1) + [last]
    assert all(r.reference_val_loss == 3.0 and r.steps == 7 for r in rows)
    # stage 1 inherits from the reference alone; each later stage grows the trained previous stage
    inits = [run.init for run, _ in fake.calls]
    assert all(i.name == "inheritune" and i.reference == str(ref) for i in inits)
    assert inits[0].path is None
    for i, (_, run_dir) in zip(inits[1:], fake.calls, strict=False):
        assert i.path == str(run_dir / "checkpoints" / "last.ckpt")
    assert [d for _, d in fake.calls] == [out / "stages" / f"L{n:02d}" for n in layers]
    table = list(csv.DictReader((out / "inheritune.csv").open()))
    assert [int(r["layers"]) for r in table] == layers and [float(r["val_loss"]) for r in table] == losses
    summary = json.loads((out / "inheritune.json").read_text())
    assert summary["reference"] == {"path": str(ref), "layers": 8, "val_loss": 3.0}
    assert (out / "inheritune.png").stat().st_size > 1000
    assert format_table(rows).splitlines()[0].split() == [
        "run", "layers", "params", "steps", "tokens", "val_loss", "ref_val_loss", "decision"
    ]  # fmt: skip


def test_grow_from_reference_re_inherits_and_baselines_follow_the_final_size(tmp_path):
    lp, fake, ref, out = loop(
        tmp_path, [3.5, 2.9, 3.3, 3.2, 3.1], grow_from="reference", baselines=["random", "random_2x", "full"]
    )
    rows = lp.run_all()
    assert [(r.name, r.layers, r.steps) for r in rows] == [
        ("inheritune L4", 4, 7),
        ("inheritune L6", 6, 7),
        ("random", 6, 7),
        ("random_2x", 6, 14),
        ("full", 8, 7),
    ]
    assert [run.init.path for run, _ in fake.calls[:2]] == [None, None]  # every stage from the reference
    assert [run.init.name for run, _ in fake.calls[2:]] == ["random"] * 3
    assert [d.name for _, d in fake.calls[2:]] == ["random", "random_2x", "full"]


def test_the_initialisation_and_distillation_baselines_start_as_their_definitions_say(tmp_path):
    names = ["stacking", "hybrid_stacking", "half_width", "logit_kd", "distilbert"]
    lp, fake, ref, out = loop(tmp_path, [3.5, 2.9] + [4.0] * 6, baselines=names)
    rows = lp.run_all()
    assert [(r.name, r.layers) for r in rows[2:]] == [
        ("stacking round 1", 3),  # n/2 random layers, then stacked to n = 6 (Gong et al. 2019)
        ("stacking", 6),
        ("hybrid_stacking", 6),
        ("half_width", 8),  # every layer of the reference, half its width
        ("logit_kd", 6),
        ("distilbert", 4),  # every other layer of the 8-layer teacher
    ]
    runs = {d.name: run for run, d in fake.calls}
    assert runs["stacking_round1"].init.name == "random"
    assert runs["stacking"].init == InitConfig(
        name="stacking", path=str(out / "baselines" / "stacking_round1" / "checkpoints" / "last.ckpt")
    )
    assert runs["hybrid_stacking"].init == InitConfig(name="hybrid_stacking", reference=str(ref))
    half = runs["half_width"].model
    assert (half.d_model, half.n_head, half.n_layer) == (16, 1, 8) and runs["half_width"].init.name == "half_width"
    assert (
        runs["logit_kd"].distill == DistillConfig(kind="logit", teacher=str(ref))
        and runs["logit_kd"].init.name == "random"
    )
    assert runs["distilbert"].distill.kind == "distilbert" and runs["distilbert"].init == InitConfig(
        name="every_other", reference=str(ref)
    )
    assert all(run.distill.kind == "none" for n, run in runs.items() if n not in ("logit_kd", "distilbert"))


def test_a_stage_that_does_not_finish_stops_the_loop(tmp_path):
    lp, fake, _, _ = loop(tmp_path, [3.5, 3.4])
    interrupted = fake.__call__

    def stop_second(run, run_dir, **kw):
        r = interrupted(run, run_dir, **kw)
        return replace(r, stop_reason="interrupted") if len(fake.calls) == 2 else r

    lp._fit = stop_second
    with pytest.raises(Stopped) as e:
        lp.run_all()
    assert e.value.results.stop_reason == "interrupted" and len(fake.calls) == 2


def test_a_missing_reference_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="init.reference"):
        Inheritune(RunConfig(init=InitConfig(name="inheritune", reference=None)), tmp_path, InherituneConfig())


# -- a real loop on tiny models ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> DataConfig:
    """60 standard-library documents as .txt files, read byte by byte: prepared in a moment."""
    root = tmp_path_factory.mktemp("corpus")
    for i, doc in enumerate(islice(embedded_documents(), 60)):
        (root / f"doc{i:03d}.txt").write_text(doc.text[:1500], encoding="utf-8")
    cache = tmp_path_factory.mktemp("tokens")  # outside the corpus folder, whose files fingerprint the corpus
    return DataConfig(name="inh", source="local", path=str(root), val_fraction=0.2, cache_dir=str(cache), num_proc=1)


def tiny(data: DataConfig, n_layer: int, steps: int) -> RunConfig:
    return RunConfig(
        model=ModelConfig.preset("gpt2_tiny", n_layer=n_layer, n_head=2, d_model=32, block_size=32),
        tokenizer=TokenizerConfig(name="bytes", vocab_size=257),
        data=data,
        scheduler=SchedulerConfig(warmup_steps=2),
        train=TrainConfig(max_steps=steps, batch_size=4, val_every=steps, val_tokens=2048, seq_len=32),
        trainer=QUIET,
    )


class KillAndRecord(L.Callback):
    """Records the weights training starts from; stops the run (as SIGTERM does) before step `stop_at`."""

    def __init__(self, stop_at: int):
        self.stop_at, self.start = stop_at, None

    def on_train_start(self, trainer, pl_module):
        self.start = {k: v.clone() for k, v in pl_module.model.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.stop_at:
            raise StopRequested("test: stopped")


def test_a_real_loop_inherits_resumes_mid_loop_and_scores_like_fit(tmp_path, corpus):
    ref_dir = tmp_path / "ref"
    reference = fit(tiny(corpus, 4, 6), ref_dir)
    run = replace(tiny(corpus, 4, 3), init=InitConfig(name="inheritune", reference=str(ref_dir)))
    killer, calls = KillAndRecord(stop_at=2), []

    def kill_stage_two(run, run_dir, **kw):  # the loop stopped in stage 2, after its step-2 checkpoint
        calls.append(Path(run_dir).name)
        if len(calls) == 2:
            kw["callbacks"] = [LastCheckpoint(dirpath=str(Path(run_dir) / "checkpoints"), every_n_steps=1), killer]
        return fit(run, run_dir, **kw)

    out = tmp_path / "loop"
    settings = InherituneConfig(start_layers=2, tolerance=-10.0)  # never matched: grows to all 4 layers
    with pytest.raises(Stopped):
        Inheritune(run, out, settings, fit=kill_stage_two).run_all()
    assert calls == ["L02", "L04"]
    # the reference is scored on the tokens every run's final evaluation uses: its own run's final val_loss
    assert json.loads((out / "reference.json").read_text())["val_loss"] == pytest.approx(reference.val_loss, abs=1e-5)
    rows = Inheritune(run, out, settings).run_all()  # the same command again: stage 2 resumes, stage 1 is not rerun
    assert [r.layers for r in rows] == [2, 4]
    one, two = (Results.load(out / "stages" / f"L{n:02d}") for n in (2, 4))
    assert one.starts == 1 and two.starts == 2 and two.steps == 3 and one.init == two.init == "inheritune"
    assert one.init_reference == two.init_reference == str(ref_dir) and one.init_path is None
    assert two.init_path == str(out / "stages" / "L02" / "checkpoints" / "last.ckpt") and one.distill is None
    assert [r.decision for r in rows] == ["grow", "full"]
    # stage 2 started from stage 1's trained layers 0-1, embeddings, positions, final norm and head, and the
    # reference's layers 2-3
    ref = {
        k.removeprefix("model."): v
        for k, v in read_checkpoint(ref_dir / "checkpoints" / "last.ckpt")["state_dict"].items()
    }
    stage1 = {
        k.removeprefix("model."): v
        for k, v in read_checkpoint(out / "stages" / "L02" / "checkpoints" / "last.ckpt")["state_dict"].items()
    }
    assert killer.start.keys() == ref.keys()
    for k, v in killer.start.items():
        source = ref if k.startswith(("blocks.2.", "blocks.3.")) else stage1
        assert torch.equal(v, source[k]), k
    assert not torch.equal(stage1["wte.weight"], ref["wte.weight"])  # stage 1 trained: the sources differ
    # `lm-lab analyze` on the reference: the table, analysis.json equal to `analyze` on the first validation windows
    from lm_lab.analysis.command import _windows
    from lm_lab.analysis.report import analyze
    from lm_lab.checkpoint import load_model
    from lm_lab.cli import main

    assert main(["analyze", str(ref_dir), "--batch", "2", "--seq-len", "16", "--out", str(tmp_path / "an")]) == 0
    record = json.loads((tmp_path / "an" / "analysis.json").read_text())
    cfg, model = load_model(ref_dir)
    expected = analyze(model, _windows(str(ref_dir), cfg, 2, 16, [])[:, :-1])
    assert record["k_star"] == expected["k_star"].tolist() and record["m_star"] == expected["m_star"].tolist()
    assert len(record["rows"]) == 4 and (record["seq_len"], record["batch_size"]) == (16, 2)
    assert all((tmp_path / "an" / f).stat().st_size > 1000 for f in ("heatmap.png", "attention_maps.png"))
    # init=weights takes a run directory as the README says: the reference's final weights, as they are
    w = fit(replace(run, init=InitConfig(name="weights", path=str(ref_dir))), tmp_path / "w", callbacks=[killer])
    assert w.init_path == str(ref_dir) and all(torch.equal(v, ref[k]) for k, v in killer.start.items())
    # distill= in the run config trains the distillation module against the frozen reference
    kd = fit(
        replace(run, init=InitConfig(), distill=DistillConfig(kind="logit", teacher=str(ref_dir))), tmp_path / "kd"
    )
    assert isinstance(kd.module, DistillModule) and kd.module.teacher_config.n_layer == 4 and kd.steps == 3
    assert kd.distill == f"logit:{ref_dir}" and Results.load(tmp_path / "kd").distill == kd.distill


@pytest.mark.parametrize("init", ["inheritune", "random", "stacking", "hybrid_stacking", "half_width"])
def test_experiment_inheritune_runs_the_loop_or_the_baseline_that_init_names(monkeypatch, tmp_path, init):
    from lm_lab import launch
    from lm_lab.config import compose

    seen = {}

    class Recorder:
        def __init__(self, run, out, settings, *, fit_kwargs, overrides, init):
            seen.update(run=run, out=out, init=init, settings=settings, stage=fit_kwargs(tmp_path / "stage"))
            self.last_results = "the last run's results"

        def run_all(self):
            return []

    monkeypatch.setattr("lm_lab.inherit.grow.Inheritune", Recorder)
    cfg = compose(
        ["experiment=inheritune", f"init={init}", "init.reference=REF", "inheritune.steps=5", f"run_dir={tmp_path}"]
    )
    assert launch.fit_from_config(cfg) == "the last run's results"
    assert seen["init"] == init and seen["out"] == str(tmp_path) and seen["settings"].steps == 5
    assert seen["run"].init == InitConfig(name="inheritune", reference="REF")  # each run's init is the loop's
    assert seen["run"].model.attn_scale_by_layer and not seen["run"].model.bias  # the paper's recipe
    dirs = {getattr(c, "dirpath", None) for c in seen["stage"]["callbacks"]}
    assert str(tmp_path / "stage" / "checkpoints") in dirs  # callbacks point at each stage's own directory
    assert seen["stage"]["loggers"][0].save_dir == str(tmp_path / "stage")
    with pytest.raises(ConfigError, match="init.reference=PATH"):
        launch.fit_from_config(compose(["experiment=inheritune", f"run_dir={tmp_path}"]))
