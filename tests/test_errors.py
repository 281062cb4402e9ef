"""Bad configs and bad inputs: each fails before any work with one line naming the field (or file) and the
fix, exits non-zero, and leaves an existing run directory exactly as it was."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lm_lab.data.tokenizers import TokenizerConfig

ROOT = Path(__file__).resolve().parent.parent
BYTES = TokenizerConfig(name="bytes", vocab_size=257)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A small corpus, a latin-1 file, a hub copy whose README names files that are not there, a corrupt checkpoint."""
    root = tmp_path_factory.mktemp("inputs")
    corpus = root / "corpus"
    corpus.mkdir()
    with open(corpus / "docs.jsonl", "w") as f:
        for i in range(200):
            f.write(json.dumps({"text": f"document {i}: " + "some words of text " * 20}) + "\n")
    latin = root / "latin"
    latin.mkdir()
    (latin / "a.txt").write_bytes(b"caf\xe9\n")
    hub = root / "hub"
    (hub / "sample" / "10BT").mkdir(parents=True)
    (hub / "sample" / "10BT" / "a.jsonl").write_text('{"text": "a document"}\n')
    (hub / "README.md").write_text(
        "---\nconfigs:\n- config_name: sample-10BT\n  data_files: sample/10BT/*\n- config_name: sample-100BT\n"
        "  data_files: sample/100BT/*\n---\n"
    )
    corrupt = root / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04" + os.urandom(500))
    return {
        "corpus": corpus,
        "corrupt": corrupt,
        "latin": latin,
        "hub": hub,
    }


def cases(i):
    local = ["data=local", f"data.path={i['corpus']}", "data.val_fraction=0.01", "tokenizer=bytes"]
    return [
        (["model.n_head=3"], "error: model.n_head=3 does not divide model.d_model=64"),
        (["model.n_layer=0"], "error: model.n_layer=0 must be a positive integer"),
        (["model.dropout=1.5"], "error: model.dropout=1.5 must be a probability"),
        (["model=gpt2_huge"], "Could not find 'model/gpt2_huge'"),
        (["data=owt"], "Could not find 'data/owt'"),
        (["model.n_layer=abc"], "Value 'abc' of type 'str' could not be converted to Integer"),
        (["train.seq_len=4096"], "error: train.seq_len=4096 exceeds model.block_size=128"),
        (["train.micro_batch_size=3"], "error: train.batch_size=8 is not a multiple of train.micro_batch_size=3"),
        (["train.max_steps=0"], "error: train.max_steps=0 must be a positive integer"),
        (["train.max_steps=3"], "error: scheduler.warmup_steps=5 exceeds train.max_steps=3"),
        (["train.on_nonfinite=ignore"], "error: train.on_nonfinite='ignore' must be `stop` or `skip`"),
        (["optimizer.lr=-1"], "error: optimizer.lr=-1"),
        (["model.vocab_size=100"], "error: model.vocab_size=100 is smaller than tokenizer.vocab_size=4096"),
        (
            ["tokenizer=bytes", "tokenizer.vocab_size=300"],
            "error: tokenizer.vocab_size=300 but the bytes tokenizer has 257 ids",
        ),
        (["trainer=gpu"], "error: trainer.accelerator='gpu' but no CUDA GPU is visible"),
        (["trainer.precision=bf16-mixed"], "error: trainer.precision='bf16-mixed' needs a CUDA GPU"),
        (["model.attn_impl=flash"], "error: model.attn_impl=flash but flash-attn is not installed"),
        (["budget.name=a100_3h"], "error: budget.name='a100_3h' is unknown"),
        (["budget=flops"], "error: budget=flops needs budget.flops"),
        (
            ["budget=gpu_hours", "budget.hours=3", "budget.gpu=tpu"],
            "error: budget.gpu='tpu' is not in the device table",
        ),
        (["data=local"], "error: data.path is required"),
        (["data=local", "data.path=/nonexistent/corpus"], "error: data.path='/nonexistent/corpus' does not exist"),
        (["data.val_fraction=1.5"], "error: data.val_fraction=1.5 must be in (0, 1)"),
        (
            ["data=local", "data.path=.", "data.mode=streaming"],
            "error: data.mode=streaming needs data.val_split_tokens",
        ),
        ([*local, "data.text_field=content"], "docs.jsonl:1: data.text_field='content' is not a field of this row"),
        (["ckpt_path=/nonexistent/last.ckpt"], "error: ckpt_path='/nonexistent/last.ckpt' does not exist"),
        ([f"ckpt_path={i['corrupt']}"], f"error: checkpoint {i['corrupt']} cannot be read"),
        # (damaged token folders are no longer errors: the run rebuilds them, see test_corpus_files.py)
        (
            ["data=local", f"data.path={i['latin']}", "tokenizer=bytes"],
            "a.txt: byte 0xe9 at offset 3 is not utf-8: set data.encoding",
        ),
        (["data=local", f"data.path={i['corpus']}", "data.txt_split=sentence"], "error: data.txt_split='sentence'"),
        (
            ["data=fineweb_edu", f"data.path={i['hub']}", "data.config=sample-100BT", "tokenizer=bytes"],
            "README.md's config 'sample-100BT' names sample/100BT/* for split 'train', but no such files are here",
        ),
        (
            ["tokenizer=hf", "tokenizer.path=./no/such/tokenizer", "tokenizer.vocab_size=300"],
            "error: tokenizer.path='./no/such/tokenizer': no such file",
        ),
        (
            ["tokenizer=hf", "tokenizer.path=pyproject.toml", "tokenizer.vocab_size=300"],
            "pyproject.toml is not a tokenizer file",
        ),
        (["train.seed=-1"], "error: train.seed=-1 must be an integer in [0, 2^32)"),
        (
            ["train.seed=abc"],
            "error: Error merging override train.seed=abc (Value 'abc' of type 'str' could not be converted to Integer",
        ),
        (
            ["train.compile=maybe"],
            "error: Error merging override train.compile=maybe (Value 'maybe' is not a valid bool",
        ),
        (["trainer.devices=0"], "error: trainer.devices=0 must be a positive number"),
        (["trainer.precision=fp32"], "error: trainer.precision='fp32' is unknown"),
        (["+trainer.foo=1"], "error: trainer.foo is not a trainer setting"),
        (["+trainer.accumulate_grad_batches=2"], "the lab sets it from train.batch_size and train.micro_batch_size"),
        (["optimizer.lr=inf"], "error: optimizer.lr=inf must be a positive number"),
        (
            ["+callbacks.x._target_=callbacks.NoSuchCallback"],
            "error: callbacks.x._target_: 'callbacks.NoSuchCallback' cannot be imported",
        ),
        (["data.cache_dir=/proc/1/cache"], "error: data.cache_dir='/proc/1/cache' is not writable"),
        (["init=weights", f"init.path={i['corrupt']}"], f"error: checkpoint {i['corrupt']} cannot be read"),
        (["init=fork"], "error: init=fork needs init.path=CHECKPOINT"),
        (["init=weights", "init.path=/no/such.ckpt"], "error: init.path='/no/such.ckpt' does not exist"),
    ]


# refusals by Hydra itself (composition): one line too
HYDRA_LEVEL = ("model=gpt2_huge", "data=owt", "model.n_layer=abc", "train.seed=abc", "train.compile=maybe")


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_bad_configs_and_inputs_fail_cleanly_and_touch_nothing(inputs, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "previous_run"  # the outputs of an earlier run in the same directory
    (run_dir / "checkpoints").mkdir(parents=True)
    for name, text in [
        ("results.json", '{"val_loss": 3.0}'),
        ("config.yaml", "name: earlier\n"),
        ("run.log", "log\n"),
        ("checkpoints/last.ckpt", "x"),
    ]:
        (run_dir / name).write_text(text)
    before = snapshot(run_dir)
    monkeypatch.setenv("LM_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(ROOT)
    all_cases = cases(inputs)
    assert len(all_cases) >= 40
    for overrides, message in all_cases:
        args = ["experiment=smoke", "ckpt_path=null", *overrides, f"hydra.run.dir={run_dir}"]
        if any(o.startswith("ckpt_path=") for o in overrides):
            args.remove("ckpt_path=null")
        code, stderr = run_in_process(args, capsys, monkeypatch)
        assert code == 2, (overrides, stderr[-1500:])
        assert message in stderr, (overrides, stderr[-1500:])
        assert "Traceback" not in stderr, (overrides, stderr[-1500:])
        if any(o in HYDRA_LEVEL for o in overrides):
            assert len(stderr.strip().splitlines()) == 1, (overrides, stderr)
        assert snapshot(run_dir) == before, overrides
    assert not (tmp_path / "cache").exists()  # no corpus was read or prepared


def run_in_process(args: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """`python run.py ARGS` in this process (as its `__main__` block runs it): exit status and stderr. A real
    process each would cost seconds of imports per case; `test_a_refused_first_start...` runs real ones."""
    import run as entry

    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["run.py", *args])
    try:
        entry.register_schemas()
        entry.check_command_line(args)
        entry.main()
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_a_refused_first_start_leaves_no_run_directory(tmp_path):
    env = {**os.environ, "LM_LAB_CACHE": str(tmp_path / "cache"), "CUDA_VISIBLE_DEVICES": ""}
    for bad in (["model.n_head=3"], ["model=gpt2_huge"], ["optimizer.lr=nan"]):
        run_dir = tmp_path / "fresh"
        proc = subprocess.run(
            [sys.executable, "run.py", "experiment=smoke", *bad, f"hydra.run.dir={run_dir}"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr
        assert not run_dir.exists(), bad
    proc = subprocess.run(
        [sys.executable, "run.py", "hydra.run.dir=/proc/1/run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "error: run directory (hydra.run.dir)='/proc/1/run' is not writable" in proc.stderr


def test_cli_refuses_bad_arguments(tmp_path, capsys):
    from lm_lab.cli import main

    with pytest.raises(SystemExit) as e:
        main(["count", "--seq-len=-5"])
    assert e.value.code == 2 and "'-5': give a positive integer" in capsys.readouterr().err
    (tmp_path / "notarun").mkdir()
    assert main(["cooldowns", str(tmp_path / "notarun"), "--step", "10", "--lengths", "4"]) == 2
    assert "is not a run directory of the lab" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "notarun")]) == 2
    assert "not found; give a lab checkpoint" in capsys.readouterr().err
