"""`fit()` as a library: in-process runs, the three starting points, Results, the golden loss sequence."""

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lm_lab.checkpoint import load_model, read_checkpoint
from lm_lab.config import InitConfig, RunConfig, TrainConfig, TrainerConfig
from lm_lab.data.config import DataConfig
from lm_lab.errors import ConfigError
from lm_lab.models import GPT, ModelConfig, chinchilla_flops_per_token
from lm_lab.module import LMModule
from lm_lab.optim import OptimizerConfig, SchedulerConfig
from lm_lab.results import Results
from lm_lab.train import default_callbacks, fit
from tests.helpers import InjectNaN, step_snapshots

ROOT = Path(__file__).resolve().parent.parent
QUIET = TrainerConfig(accelerator="cpu", precision="32-true", enable_progress_bar=False, enable_model_summary=False)


def smoke(cache_dir: Path, **train) -> RunConfig:
    """`experiment=smoke` in Python: a 2-layer model on the embedded corpus."""
    train = {"max_steps": 12, "batch_size": 8, "val_every": 6, "val_tokens": 16384, **train}
    return RunConfig(
        model=ModelConfig.preset("gpt2_tiny", n_layer=2, n_head=2, d_model=64, block_size=128),
        data=DataConfig(cache_dir=str(cache_dir)),
        scheduler=SchedulerConfig(warmup_steps=min(5, train["max_steps"])),
        train=TrainConfig(**train),
        trainer=QUIET,
    )


class FirstBatch(L.Callback):
    """Records the first training batch, its loss, the step and the optimizer state before the first update."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not hasattr(self, "batch"):
            self.batch, self.step = batch.clone(), trainer.global_step
            self.optimizer_state = len(trainer.optimizers[0].state)
            self.weights = {k: v.clone() for k, v in pl_module.model.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not hasattr(self, "loss"):
            self.loss = outputs["loss"].detach().clone()


def test_fit_twice_in_one_process_on_two_run_directories(tmp_path, cache_dir):
    run = smoke(cache_dir)
    a = fit(run, tmp_path / "a")
    b = fit(replace(run, train=replace(run.train, seed=7)), tmp_path / "b")
    again = fit(run, tmp_path / "a_again")  # nothing leaks from the calls before: the same numbers
    finished = fit(run, tmp_path / "a")  # a finished run: returned as it is, with its trained model
    assert finished == a and torch.equal(finished.module.model.wte.weight, a.module.model.wte.weight)
    assert a.val_loss == again.val_loss and a.best_val_loss == again.best_val_loss
    assert a.val_loss != b.val_loss and b.seed == 7
    for results, folder in ((a, "a"), (b, "b")):
        assert results.stop_reason == "max_steps" and results.steps == 12 == results.val_step
        assert results.tokens == 12 * 8 * 128 and results.starts == 1
        assert math.isfinite(results.val_loss) and results.val_loss < math.log(4096)
        assert Results.load(tmp_path / folder) == results  # results.json is the returned record
        assert isinstance(results.module, LMModule) and results.module.global_step == 12
    # the module returned is the trained one: it scores the saved final weights
    saved = read_checkpoint(tmp_path / "a" / "checkpoints" / "last.ckpt")["state_dict"]
    assert all(torch.equal(v, saved[f"model.{k}"]) for k, v in a.module.model.state_dict().items())


def test_a_non_finite_stop_inside_fit_returns_instead_of_exiting(tmp_path, cache_dir):
    results = fit(smoke(cache_dir), tmp_path / "run", callbacks=[*default_callbacks(tmp_path / "run"), InjectNaN(8)])
    assert results.stop_reason == "non_finite" and "step 8" in results.failure and results.steps == 7
    assert Results.load(tmp_path / "run").stop_reason == "non_finite"
    last = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 6 and all(torch.isfinite(t).all() for t in last["state_dict"].values())


def test_start_from_weights_of_another_run(tmp_path, cache_dir):
    """init=weights: another run's model weights (other seed, other data), a fresh optimizer, step 0."""
    source_run = smoke(cache_dir, seed=3, max_steps=6)
    source_run = replace(source_run, data=replace(source_run.data, val_fraction=0.2))  # other data
    fit(source_run, tmp_path / "source")
    source_ckpt = tmp_path / "source" / "checkpoints" / "last.ckpt"
    probe = FirstBatch()
    run = smoke(cache_dir, max_steps=4, val_every=4)
    init = InitConfig(name="weights", path=str(source_ckpt))
    results = fit(run, tmp_path / "new", init=init, callbacks=[probe, *default_callbacks(tmp_path / "new")])
    assert results.init == "weights" and results.steps == 4 and results.stop_reason == "max_steps"
    assert probe.step == 0 and probe.optimizer_state == 0  # step 0, an empty optimizer
    _, source_model = load_model(source_ckpt)
    assert all(torch.equal(v, source_model.state_dict()[k]) for k, v in probe.weights.items())
    # the first step's loss is the source model's loss on that batch
    x, y = probe.batch[:, :-1], probe.batch[:, 1:]
    with torch.no_grad():
        expected = F.cross_entropy(source_model(x).flatten(0, 1), y.flatten())
    torch.testing.assert_close(probe.loss, expected, rtol=1e-6, atol=1e-6)
    # a checkpoint that does not fit the model is refused with the tensors named, before anything is written
    bigger = replace(run, model=replace(run.model, n_layer=3))
    with pytest.raises(ConfigError, match=r"do not fit this model .*missing tensors: blocks\.2\.ln_1\.weight"):
        fit(bigger, tmp_path / "refused", init=init)
    assert not (tmp_path / "refused").exists()


def first_layer_only(state, source, target):
    """A weight-surgery map for the test: keep the source's first `target.n_layer` blocks."""
    return {k: v for k, v in state.items() if not k.startswith("blocks.") or int(k.split(".")[1]) < target.n_layer}


def test_start_from_weights_through_a_map(tmp_path, cache_dir):
    fit(smoke(cache_dir, max_steps=6), tmp_path / "source")
    source = tmp_path / "source" / "checkpoints" / "last.ckpt"
    shallow = smoke(cache_dir, max_steps=2, val_every=2)
    shallow = replace(shallow, model=replace(shallow.model, n_layer=1))
    with pytest.raises(ConfigError, match=r"unexpected tensors: blocks\.1\.ln_1\.weight"):
        fit(shallow, tmp_path / "plain", init=InitConfig(name="weights", path=str(source)))
    probe = FirstBatch()
    init = InitConfig(name="weights", path=str(source), map=first_layer_only)
    fit(shallow, tmp_path / "mapped", init=init, callbacks=[probe, *default_callbacks(tmp_path / "mapped")])
    _, big = load_model(source)
    assert torch.equal(probe.weights["blocks.0.attn.qkv.weight"], big.state_dict()["blocks.0.attn.qkv.weight"])
    assert "blocks.1.attn.qkv.weight" not in probe.weights
    # by name from the command line, too
    named = InitConfig(name="weights", path=str(source), map="tests.test_fit.first_layer_only")
    mapped = named.map_fn()({"blocks.0.w": 0, "blocks.1.w": 1, "wte.weight": 2}, None, shallow.model)
    assert mapped == {"blocks.0.w": 0, "wte.weight": 2}


def test_a_fork_with_another_optimizer_is_refused_unless_allowed(tmp_path, cache_dir):
    fit(smoke(cache_dir, max_steps=6), tmp_path / "stable")
    ckpt = str(tmp_path / "stable" / "checkpoints" / "last.ckpt")
    run = replace(smoke(cache_dir, max_steps=8), optimizer=OptimizerConfig(lr=2e-3))
    with pytest.raises(ConfigError, match=r"changes the optimizer \(optimizer\.lr: source 0\.001, fork 0\.002\)"):
        fit(run, tmp_path / "fork", init=InitConfig(name="fork", path=ckpt))
    assert not (tmp_path / "fork").exists()
    results = fit(run, tmp_path / "fork", init=InitConfig(name="fork", path=ckpt, allow_optimizer_change=True))
    assert results.steps == 8 and results.init == "fork"
    # the old name of fork still works
    assert InitConfig(name="checkpoint", path=ckpt).name == "fork"


def test_final_evaluation_on_the_whole_held_out_split(tmp_path, cache_dir):
    small = fit(smoke(cache_dir, val_tokens=4096), tmp_path / "small")
    full = fit(smoke(cache_dir, val_tokens=4096, final_val_tokens=None), tmp_path / "full")
    assert small.val_tokens == 4096 and full.val_tokens == 204_032  # every whole window of the 204,148 tokens
    assert small.best_val_loss == full.best_val_loss  # the periodic validations are the same cheap ones
    assert small.val_loss != full.val_loss and abs(small.val_loss - full.val_loss) < 0.5
    module = full.module
    assert module.last_val_step == 12


# -- the golden loss sequence ----------------------------------------------------------------------------------
# The main job's configuration (`RunConfig()`, i.e. `python run.py`) for its 40 warmup steps with validation at
# the end, recorded before the library refactor (run.py of commit 5b59d66 + `train.max_steps=40`). Any change to
# the numerics (model, init, data order, optimizer, schedule) changes these.
GOLDEN_LOSSES = [
    8.330571174621582,
    8.33326244354248,
    8.301750183105469,
    8.28032398223877,
    8.234127044677734,
    8.210987091064453,
    8.162501335144043,
    8.17557430267334,
    8.151466369628906,
    8.138845443725586,
    8.04710578918457,
    8.03228759765625,
    8.03585147857666,
    8.020796775817871,
    7.969435214996338,
    7.893877983093262,
    7.857842922210693,
    7.8275837898254395,
    7.805881500244141,
    7.766688346862793,
    7.719902992248535,
    7.62105655670166,
    7.617245197296143,
    7.5368428230285645,
    7.456954002380371,
    7.414466381072998,
    7.414216995239258,
    7.323061466217041,
    7.230900287628174,
    7.2067413330078125,
    7.193188667297363,
    7.081920146942139,
    7.132078647613525,
    6.981170177459717,
    6.97585916519165,
    6.919224739074707,
    6.881758213043213,
    6.734852313995361,
    6.688117504119873,
    6.7119364738464355,
]
GOLDEN_VAL_LOSS = 6.67238712310791


class Losses(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def golden_run(cache_dir: Path) -> RunConfig:
    main = RunConfig()
    return replace(
        main,
        data=replace(main.data, cache_dir=str(cache_dir)),
        train=replace(main.train, max_steps=40, val_every=40, val_tokens=16384),
        trainer=QUIET,
    )


@pytest.mark.slow
def test_golden_loss_sequence_of_the_main_job(tmp_path, cache_dir):
    recorder = Losses()
    results = fit(golden_run(cache_dir), tmp_path / "run", callbacks=[recorder, *default_callbacks(tmp_path / "run")])
    assert len(recorder.losses) == 40
    assert recorder.losses == pytest.approx(GOLDEN_LOSSES, rel=0, abs=2e-5)  # bit-equal on the CI machine
    assert results.val_loss == pytest.approx(GOLDEN_VAL_LOSS, rel=0, abs=2e-5)


def test_the_readme_notebook_example_runs(tmp_path, cache_dir, monkeypatch):
    """The README's five-line example of `fit` from Python, run as written (with a tiny model and short run)."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- notebook example -->\n```python\n(.*?)```", readme, re.S)
    assert block, "the README has no notebook example"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 6
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LM_LAB_CACHE", str(cache_dir))
    # shrink the run the example makes (the same code path; only the numbers differ)
    code = code.replace(
        "RunConfig()",
        "RunConfig(model=ModelConfig.preset('gpt2_tiny', n_layer=1, d_model=32, n_head=2, block_size=64), train=TrainConfig(max_steps=3, batch_size=4, val_every=3, val_tokens=2048), scheduler=SchedulerConfig(warmup_steps=1), trainer=QUIET)",
    )
    scope = {"ModelConfig": ModelConfig, "TrainConfig": TrainConfig, "SchedulerConfig": SchedulerConfig, "QUIET": QUIET}
    exec(compile(code, "README.md", "exec"), scope)
    results = scope["results"]
    assert results.steps == 3 and (tmp_path / "runs" / "notebook" / "results.json").exists()
    assert json.loads((tmp_path / "runs" / "notebook" / "results.json").read_text())["val_loss"] == results.val_loss


def schedule_free(cache_dir: Path, max_steps: int) -> RunConfig:
    run = smoke(cache_dir, max_steps=max_steps, val_every=6)
    return replace(
        run,
        optimizer=OptimizerConfig(name="schedule_free", lr=2e-3, warmup_steps=2),
        scheduler=SchedulerConfig(name="constant", warmup_steps=0),
    )


def sf_callbacks(run_dir: Path) -> list:
    return [*default_callbacks(run_dir), step_snapshots(run_dir, 4)]


def test_schedule_free_checkpoints_hold_the_evaluation_weights_and_resume_exactly(tmp_path, cache_dir):
    pytest.importorskip("schedulefree")
    whole = fit(schedule_free(cache_dir, 12), tmp_path / "whole", callbacks=sf_callbacks(tmp_path / "whole"))
    # a step checkpoint (saved in train mode) and last.ckpt (saved after a validation, in eval mode) alike
    for name in ("step4.ckpt", "step8.ckpt", "last.ckpt"):
        ckpt = read_checkpoint(tmp_path / "whole" / "checkpoints" / name)
        x = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
        y = ckpt["schedule_free_train_weights"]
        beta1 = ckpt["optimizer_states"][0]["param_groups"][0]["betas"][0]
        z = ckpt["optimizer_states"][0]["state"][0]["z"]  # the first parameter: the token embedding
        torch.testing.assert_close(x["wte.weight"], torch.lerp(y["wte.weight"], z, 1 - 1 / beta1))
        assert not torch.equal(x["wte.weight"], y["wte.weight"])
        _, model = load_model(tmp_path / "whole" / "checkpoints" / name)  # what tools read is x
        assert torch.equal(model.state_dict()["wte.weight"], x["wte.weight"])
    # the final weights scored in results are x: load_model's model scores val_loss
    # resumed from the checkpoint written after the validation at step 6: the same run, bit for bit
    fit(schedule_free(cache_dir, 6), tmp_path / "resumed", callbacks=sf_callbacks(tmp_path / "resumed"))
    resumed = fit(schedule_free(cache_dir, 12), tmp_path / "resumed", callbacks=sf_callbacks(tmp_path / "resumed"))
    assert resumed.starts == 2 and resumed.val_loss == whole.val_loss
    a, b = (read_checkpoint(tmp_path / d / "checkpoints" / "last.ckpt") for d in ("whole", "resumed"))
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert all(
        torch.equal(a["schedule_free_train_weights"][k], b["schedule_free_train_weights"][k])
        for k in a["schedule_free_train_weights"]
    )


def test_sample_from_a_checkpoint(tmp_path, cache_dir, capsys):
    from lm_lab.cli import main
    from lm_lab.sample import checkpoint_tokenizer, generate

    fit(smoke(cache_dir, max_steps=6), tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert main(["sample", str(ckpt), "--prompt", "def main(", "--tokens", "12", "--temperature", "0"]) == 0
    greedy = capsys.readouterr().out.rstrip("\n")
    cfg, model = load_model(ckpt)
    tokenizer = checkpoint_tokenizer(ckpt)
    ids = generate(
        model, tokenizer.encode("def main("), 12, vocab_size=cfg.vocab_size, block_size=cfg.block_size, temperature=0
    )
    assert greedy == tokenizer.decode(ids) and len(ids) == 12
    # top-k 1 is greedy whatever the temperature; seeds make sampling reproducible, and different
    assert generate(
        model, [1, 2, 3], 8, vocab_size=cfg.vocab_size, block_size=cfg.block_size, temperature=2.0, top_k=1
    ) == generate(model, [1, 2, 3], 8, vocab_size=cfg.vocab_size, block_size=cfg.block_size, temperature=0)
    assert main(["sample", str(tmp_path / "run"), "--seed", "1", "--tokens", "20", "--temperature", "1.5"]) == 0
    first = capsys.readouterr().out
    assert main(["sample", str(tmp_path / "run"), "--seed", "1", "--tokens", "20", "--temperature", "1.5"]) == 0
    assert capsys.readouterr().out == first
    assert main(["sample", str(tmp_path / "run"), "--seed", "2", "--tokens", "20", "--temperature", "1.5"]) == 0
    assert capsys.readouterr().out != first


def test_the_readme_lists_exactly_the_results_keys():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("### `results.json`")[1].split("\n## ")[0]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    listed = [key for cell in rows for key in re.findall(r"`([a-z_]+)`", cell)]
    assert sorted(listed) == sorted(Results.json_keys()) and len(listed) == len(set(listed))


def test_default_callbacks_and_loggers_are_the_yaml_ones(tmp_path):
    """What `fit` uses from Python without callbacks= is what `python run.py` instantiates from conf/."""
    from hydra.utils import instantiate

    from lm_lab.config import compose
    from lm_lab.train import default_loggers

    cfg = compose([f"run_dir={tmp_path}"])
    yaml_callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    mine = default_callbacks(tmp_path)

    def settings(cb):
        keep = {"path", "every_n_steps", "every_minutes", "dirpath", "filename", "monitor", "mode", "save_top_k"}
        keep |= {"window_size", "refresh_rate"}
        state = {k: v for k, v in vars(cb).items() if k in keep or k.lstrip("_") in keep}
        if hasattr(cb, "detector"):
            state["detector"] = vars(cb.detector)
        return type(cb), {k: str(v) for k, v in state.items()}

    assert [settings(c) for c in mine] == [settings(c) for c in yaml_callbacks]
    yaml_loggers = [instantiate(lg) for lg in cfg.logger.values()]
    assert [(type(lg), lg.log_dir) for lg in default_loggers(tmp_path)] == [
        (type(lg), lg.log_dir) for lg in yaml_loggers
    ]


def hand_loss(logits: torch.Tensor, windows: torch.Tensor) -> float:
    """Mean over every (row, position) of -log softmax(logits[row, t])[windows[row, t + 1]], written out."""
    logp = logits.double().log_softmax(-1)
    terms = [
        -logp[b, t, windows[b, t + 1]].item() for b in range(windows.shape[0]) for t in range(windows.shape[1] - 1)
    ]
    return sum(terms) / len(terms)


def test_the_loss_is_next_token_cross_entropy_by_hand(tmp_path, cache_dir):
    """The first training step's loss, recomputed from its batch and the initial weights: each position predicts
    the next token of a contiguous window (a loss on unshifted targets would be the model copying its input)."""
    first = FirstBatch()
    run = smoke(cache_dir, max_steps=2, val_every=2)
    fit(run, tmp_path / "run", callbacks=[first])
    batch = first.batch
    assert batch.shape == (8, 129)  # micro-batch of seq_len + 1 tokens
    model = GPT(run.derive().model)
    model.load_state_dict(first.weights)
    with torch.no_grad():
        expected = hand_loss(model(batch[:, :-1]), batch)
    assert first.loss.item() == pytest.approx(expected, rel=1e-6)
    module = LMModule(replace(run.model, vocab_size=256), OptimizerConfig(), SchedulerConfig(), 10)
    module.configure_model()
    windows = torch.randint(0, 256, (3, 9))
    with torch.no_grad():
        assert module.loss(windows).item() == pytest.approx(hand_loss(module.model(windows[:, :-1]), windows), rel=1e-6)


def test_validation_loss_is_the_token_mean_over_every_window(tmp_path, cache_dir):
    """13 validation windows in micro-batches of 8: the reported loss weighs every target token once (a mean of
    the two batch means would weigh the 5-window batch's tokens 8/5 times as much)."""
    from lm_lab.data.datamodule import LMDataModule
    from lm_lab.data.windows import ValWindows

    run = smoke(cache_dir, val_tokens=13 * 128)
    results = fit(run, tmp_path / "run")
    derived = run.derive()
    dm = LMDataModule(
        derived.data,
        derived.tokenizer,
        seq_len=128,
        micro_batch_size=8,
        batch_size=8,
        val_tokens=derived.train.val_tokens,
        seed=0,
    )
    dm.setup()
    val = ValWindows(dm.val, 128, derived.train.val_tokens)
    windows = torch.stack([val[i] for i in range(len(val))])
    assert windows.shape == (13, 129)
    model = results.module.model.eval()
    with torch.no_grad():
        per_window = F.cross_entropy(model(windows[:, :-1]).transpose(1, 2), windows[:, 1:], reduction="none").mean(1)
    token_mean = per_window.mean().item()
    batch_means = (per_window[:8].mean() + per_window[8:].mean()).item() / 2
    assert abs(token_mean - batch_means) > 1e-3  # the two averages are told apart
    assert results.val_loss == pytest.approx(token_mean, abs=1e-5)
    assert results.val_tokens == 13 * 128
    # the bookkeeping of results.json, from first principles
    assert results.steps == 12 and results.tokens == 12 * 8 * 128 == results.steps * results.tokens_per_step
    assert results.params == sum(p.numel() for p in model.parameters())  # the tied head counted once
    assert results.params - results.params_non_embedding == model.wte.weight.numel() + model.wpe.weight.numel()
    assert results.flops_per_token == 6 * (results.params_non_embedding + model.wte.weight.numel()) + 12 * 2 * 128 * 64
    assert results.flops == results.tokens * results.flops_per_token
    assert results.flops_chinchilla == results.tokens * chinchilla_flops_per_token(derived.model, 128)
    assert results.val_ppl == pytest.approx(math.exp(results.val_loss), rel=1e-12)
    n_bytes = int(dm.tokenizer.token_bytes()[windows[:, 1:].numpy()].sum())
    text_bytes = sum(len(dm.tokenizer.decode(w[1:].tolist()).encode()) for w in windows)  # edges may split a char
    assert results.val_bytes == n_bytes and abs(n_bytes - text_bytes) <= 3 * 13 and n_bytes > 2 * 13 * 128
    assert results.val_bpb == pytest.approx(results.val_loss * 13 * 128 / n_bytes / math.log(2), rel=1e-12)
    assert results.val_step == 12 and results.stop_reason == "max_steps"


class GradNorms(L.Callback):
    """The global gradient norm before clipping (callbacks' hook runs before the module's, which clips) and as
    the optimizer used it (still in place when the next step zeroes the gradients)."""

    def __init__(self):
        self.before, self.after = [], []

    @staticmethod
    def norm(module) -> float:
        return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.parameters()])).item()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before.append(self.norm(pl_module))

    def on_before_zero_grad(self, trainer, pl_module, optimizer):
        if pl_module.model.wte.weight.grad is not None:
            self.after.append(self.norm(pl_module))


def test_gradients_are_clipped_to_the_configured_norm(tmp_path, cache_dir):
    norms = GradNorms()
    run = replace(smoke(cache_dir, max_steps=6, val_every=6), optimizer=OptimizerConfig(grad_clip=0.05))
    fit(run, tmp_path / "run", callbacks=[norms])
    assert len(norms.before) == 6 and len(norms.after) == 5  # the last step's gradients are never zeroed
    assert min(norms.before) > 0.1  # every step's gradient is beyond the clip ...
    assert norms.after == pytest.approx([0.05] * 5, rel=1e-5)  # ... and the optimizer used it clipped to 0.05
    unclipped = GradNorms()
    run = replace(run, optimizer=OptimizerConfig(grad_clip=None))
    fit(run, tmp_path / "unclipped", callbacks=[unclipped])
    assert unclipped.after == pytest.approx(unclipped.before[:5], rel=1e-6)


class MockClock:
    """Seconds that pass only when told (a `Tick` callback tells it; here 1 s per training micro-batch, 100 s per
    validation batch)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Tick(L.Callback):
    def __init__(self, clock: MockClock):
        self.clock = clock

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.clock.now += 1.0

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.clock.now += 100.0


def test_throughput_excludes_validation_time(tmp_path, cache_dir):
    """Two micro-batches of 4 x 128 tokens per step at 1 s each: 512 tokens/s at every logging step, before and
    after the validations (which take 100 s a batch on this clock)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from callbacks import TokenThroughput

    clock = MockClock()
    throughput = TokenThroughput(window_size=2)
    throughput.clock = clock
    run = smoke(cache_dir, max_steps=12, val_every=4, micro_batch_size=4, log_every=1)
    fit(run, tmp_path / "run", callbacks=[Tick(clock), throughput])
    assert clock.now > 12 * 2 + 100  # validations did take time on this clock
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    rates = {e.step: e.value for e in acc.Scalars("throughput/tokens_per_sec")}
    # from the second update on (a window needs two), under Lightning's step index (one behind the global step)
    assert sorted(rates) == list(range(1, 12))
    assert list(rates.values()) == pytest.approx([512.0] * 11, rel=1e-6)
    tokens = [e.value for e in acc.Scalars("train/tokens")]
    assert tokens == [s * 8 * 128 for s in range(1, 13)]
