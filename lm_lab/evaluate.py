"""Zero-shot evaluation with lm-evaluation-harness (Gao et al.), the harness Inheritune (Sanyal et al. 2024, §4 and
Table 1) reports its downstream accuracies with: a lab checkpoint is exported to a temporary Hugging Face folder
(`lm_lab.hf.export`) and evaluated there by lm-eval's own `hf` model, so the numbers are the ones anyone gets
from the same folder; a Hugging Face folder is evaluated as it is.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

from lm_lab.errors import ConfigError, raise_if
from lm_lab.hf import checkpoint_file, export, export_tokenizer, is_hf_folder

PAPER_TASKS = ("arc_easy", "lambada_openai", "sciq", "hellaswag", "piqa")
"""Inheritune's zero-shot tasks (Table 1)."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def evaluate(
    path: str | Path,
    tasks: list[str],
    include_path: str | Path | None = None,
    limit: int | float | None = None,
    batch_size: int | str = 8,
    device: str = "cpu",
    num_fewshot: int = 0,
    samples: bool = False,
) -> dict:
    """lm-eval's metrics of a lab checkpoint (file or run directory) or Hugging Face folder on `tasks`, per task
    `{metric: value}` (`acc`, `acc_stderr`, `acc_norm`, ...; a filter other than lm-eval's `none` is kept as
    `metric,filter`). `include_path`: a folder of extra task YAML files; `limit`: documents per task (a count, or a
    fraction below 1), for quick checks only; `samples`: also each task's per-document responses under
    `samples[task]`, a list of `{"doc_id", "target", "resps"}` (multiple choice: one log-likelihood per choice).

    The same evaluation from the shell, on a folder written by `lm-lab export CKPT OUT` (the paper's tasks):

        lm_eval --model hf --model_args pretrained=OUT --tasks arc_easy,lambada_openai,sciq,hellaswag,piqa
    """
    problems = []
    if isinstance(tasks, str) or not tasks or not all(isinstance(t, str) and t for t in tasks):
        problems.append(f"tasks={tasks!r} must be a non-empty list of task names, e.g. {list(PAPER_TASKS)}")
    if limit is not None and not (isinstance(limit, int | float) and limit > 0):
        problems.append(f"limit={limit!r} must be a positive number of documents (or a fraction below 1), or None")
    if include_path is not None and not Path(include_path).expanduser().is_dir():
        problems.append(f"include_path={str(include_path)!r} is not a folder of lm-eval task YAML files")
    if not Path(path).expanduser().exists():
        problems.append(f"{path} does not exist; give a lab checkpoint, a run directory or a Hugging Face folder")
    missing = [m for m in ("lm_eval", "accelerate", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        problems.append(f"evaluation needs {', '.join(missing)}: pip install 'lm_eval[hf]>=0.4'")
    raise_if(problems)
    if is_hf_folder(path):
        if not any((Path(path).expanduser() / f).is_file() for f in TOKENIZER_FILES):
            raise ConfigError(
                f"{path} has no tokenizer files and lm-eval needs one: save the model's tokenizer there "
                f"(tokenizer.save_pretrained({str(path)!r}))"
            )
        return _lm_eval(Path(path).expanduser(), tasks, include_path, limit, batch_size, device, num_fewshot, samples)
    tokenizer, _, note = export_tokenizer(path)  # before any export: refuse at once what lm-eval cannot read
    if tokenizer is None:
        raise ConfigError(
            f"{checkpoint_file(path)} cannot be evaluated with lm-eval: {note}. Export it (`lm-lab export CKPT OUT`), "
            f"save a Hugging Face tokenizer with the same ids in OUT (for tiktoken gpt2: "
            f"AutoTokenizer.from_pretrained('gpt2').save_pretrained(OUT)) and evaluate OUT"
        )
    with tempfile.TemporaryDirectory(prefix="lm_lab_eval_") as tmp:
        folder = export(path, Path(tmp) / "model")
        return _lm_eval(folder, tasks, include_path, limit, batch_size, device, num_fewshot, samples)


def _task_manager(tasks: list[str], include_path: str | Path | None):
    """lm-eval's task index: with `include_path` alone when it defines every task (indexing lm-eval's thousands
    of built-in tasks takes ~10 s), else with the built-in ones too."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
    return TaskManager(include_path=None if include_path is None else str(include_path))


def _lm_eval(folder, tasks, include_path, limit, batch_size, device, num_fewshot, samples) -> dict:
    import lm_eval

    manager = _task_manager(tasks, include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks and not set("*?[") & set(t) and not t.endswith(".yaml")]
    raise_if(
        [f"lm-eval has no task {t!r}; see `lm_eval ls tasks`, or give its YAML folder as include_path" for t in unknown]
    )
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={folder}",
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        device=device,
        limit=limit,
        task_manager=manager,
        log_samples=samples,
    )
    return compact(out, samples)


def compact(out: dict, samples: bool = False) -> dict:
    """lm-eval's result object as `{task: {metric: value}}` (numbers only), with the per-document responses under
    `samples` when asked for."""
    metrics = {}
    for task, values in out["results"].items():
        metrics[task] = {}
        for key, value in values.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or "," not in key:
                continue  # alias, "N/A" standard errors
            metric, _, filter_ = key.partition(",")
            metrics[task][metric if filter_ == "none" else key] = float(value)
    if samples:
        metrics["samples"] = {
            task: [
                {
                    "doc_id": s["doc_id"],
                    "target": s["target"],
                    "resps": [r[0] if isinstance(r, list | tuple) else r for r in s["filtered_resps"]],
                }
                for s in docs
            ]
            for task, docs in out.get("samples", {}).items()
        }
    return metrics
