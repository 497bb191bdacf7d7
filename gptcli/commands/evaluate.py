"""``gptcli eval``: loss and perplexity of a model over a text: the book's ``calc_loss_loader``
over its stride = context windows by default, a sliding window with ``--stride``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptcli import console
from gptcli.data import corpus_tokens
from gptcli.device import set_threads
from gptcli.errors import SaveError, UsageError
from gptcli.evaluation import evaluate_tokens
from gptcli.inference import LoadedModel, load_model_for_inference
from gptcli.settings.evaluate import LM_EVAL_PREFIX, EvalSettings, lm_eval_task_names


def _load(checkpoint: Path | None, model: str | None, device: str, dtype: str = "fp32") -> LoadedModel:
    loaded = load_model_for_inference(checkpoint, model, device=device, dtype=dtype, warn=console.warn)
    if loaded.note:  # which run was picked, when none was named
        console.info(loaded.note)
    return loaded


def _print_result(result: dict[str, Any], head: list[str], row: list[str], *, json_out: bool) -> dict[str, Any]:
    """One JSON object on stdout with ``--json``, else a one-row table; returns ``result``."""
    if json_out:
        console.print_result(json.dumps(result))
    else:
        console.print_table(head, [row], left={0, 1})
    return result


def hellaswag_command(
    paths: list[Path], *, checkpoint: Path | None, model: str | None, device: str, json_out: bool, dtype: str = "fp32"
) -> dict[str, Any]:
    """HellaSwag accuracy (``gptcli.hellaswag``) of the model over the examples of the files."""
    from gptcli import hellaswag

    examples = [ex for p in paths for ex in hellaswag.read_examples(p)]
    loaded = _load(checkpoint, model, device, dtype)
    with console.step_progress("hellaswag", None) as prog:
        task = prog.add_task("hellaswag", total=len(examples))
        res = hellaswag.evaluate(
            loaded.net,
            examples,
            device=loaded.device,
            on_progress=lambda d, t: prog.update(task, completed=d, total=t),
        )
    result = {
        "checkpoint": str(loaded.path),
        "files": [str(p) for p in paths],
        "task": "hellaswag",
        "dtype": dtype,
        "examples": res.examples,
        "acc": res.acc,
        "acc_norm": res.acc_norm,
        "acc_norm_by": hellaswag.NORMALISATION,
    }
    head = ["checkpoint", "task", "examples", "acc", "acc_norm"]
    row = [str(loaded.path), "hellaswag", f"{res.examples:,}", f"{res.acc:.4f}", f"{res.acc_norm:.4f}"]
    if dtype != "fp32":
        head.insert(2, "dtype")
        row.insert(2, dtype)
    return _print_result(result, head, row, json_out=json_out)


def lm_eval_command(s: EvalSettings) -> dict[str, Any]:
    """lm-evaluation-harness tasks (``--task lm-eval:arc_easy,piqa``) on the model, through
    ``gptcli.lm_harness``: the harness's table on stdout (or ``--json``), both also written to
    ``<run>/eval/``."""
    from gptcli import lm_harness

    if s.quiet:
        import logging
        import os

        os.environ["TQDM_DISABLE"] = "1"  # the harness's and the datasets' bars (read when tqdm is imported)
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
    lm_harness.require_harness()
    names = lm_eval_task_names(s.task)
    loaded = _load(
        s.checkpoint, s.model, s.device, s.dtype
    )  # first: a missing model is said before the registry's seconds
    console.info("lm-eval: reading the harness's task registry")
    manager = lm_harness.task_manager(s.include_path)
    lm_harness.check_tasks(names, manager)
    from gptcli.lm_harness_bridge import GptcliLM

    settings = {"checkpoint": str(loaded.path), "batch_size": s.batch_size, "dtype": s.dtype}
    if s.include_path is not None:
        settings["include_path"] = str(s.include_path)
    with console.step_progress("lm-eval {task.description}", None) as prog:
        bars: dict[str, Any] = {}

        def on_progress(kind: str, done: int, total: int) -> None:
            if kind not in bars:
                bars[kind] = prog.add_task(kind, total=total)
            prog.update(bars[kind], completed=done, total=total)

        lm = GptcliLM(loaded.net, batch_size=s.batch_size, checkpoint=str(loaded.path), on_progress=on_progress)
        run = lm_harness.run_tasks(lm, names, manager, num_fewshot=s.num_fewshot, limit=s.limit, extra=settings)
    try:
        json_path, table_path = lm_harness.write_results(run, lm_harness.results_dir(loaded.path))
    except SaveError:  # the figures are not lost with the files: on stdout first, then the error
        console.print_result(lm_harness.to_json(run.summary) if s.json_out else run.table)
        raise
    result = {**run.summary, "written": [str(json_path), str(table_path)]}
    console.print_result(lm_harness.to_json(result) if s.json_out else run.table)
    console.info(f"lm-eval: results written to {json_path} and {table_path}")
    return result


def finetune_split_command(checkpoint: Path | None, split: str, *, device: str, json_out: bool) -> dict[str, Any]:
    """A finetune run's loss on one split of its data (the book's ``calc_loss_loader``), and a
    classifier's accuracy (``calc_accuracy_loader``), with the run's batch size."""
    from gptcli.checkpoint import load_checkpoint, resolve_checkpoint
    from gptcli.device import resolve_device
    from gptcli.finetune.trainer import evaluate_checkpoint_split
    from gptcli.tasks import FINETUNE_RECORDED as KINDS

    path = resolve_checkpoint(checkpoint, warn=console.warn)
    obj = load_checkpoint(path)
    if obj.get("kind") not in KINDS:
        raise UsageError(
            f"invalid --split: {path} is not a finetune run (kind {obj.get('kind')!r}); evaluate it on text files"
        )
    res = {"checkpoint": str(path), **evaluate_checkpoint_split(obj, path, split, device=resolve_device(device))}
    head = ["checkpoint", "split", "examples", "loss"] + (["accuracy"] if "accuracy" in res else [])
    row = [str(path), split, f"{res['examples']:,}", f"{res['loss']:.4f}"]
    row += [f"{res['accuracy'] * 100:.2f}%"] if "accuracy" in res else []
    return _print_result(res, head, row, json_out=json_out)


def eval_command(s: EvalSettings) -> dict[str, Any]:
    """``gptcli eval``: a finetune run's split (``--split``), HellaSwag (``--task hellaswag``),
    lm-evaluation-harness tasks (``--task lm-eval:...``), or the loss and perplexity of the text files, printed as a table or JSON and returned."""
    console.set_quiet(s.quiet)
    set_threads(s.threads)
    if s.judge:
        return judge_command(s)
    if s.split is not None:
        return finetune_split_command(s.checkpoint, s.split, device=s.device, json_out=s.json_out)
    paths, checkpoint, model, device, stride = s.paths, s.checkpoint, s.model, s.device, s.stride
    if s.task.startswith(LM_EVAL_PREFIX):
        return lm_eval_command(s)
    if s.task == "hellaswag":
        return hellaswag_command(
            paths, checkpoint=checkpoint, model=model, device=device, json_out=s.json_out, dtype=s.dtype
        )
    if s.text_field is not None:  # given: some input must hold records (formats.check_text_field)
        from gptcli.data import input_format
        from gptcli.formats import check_text_field, resolve_inputs

        check_text_field(resolve_inputs(paths, format=input_format(s.format)), s.text_field)
    from gptcli.shards import is_shard_input

    sharded = next((p for p in paths if is_shard_input(p)), None)
    if sharded is not None:
        raise UsageError(
            f"{sharded}: holds token shards (.bin); eval takes text files (their loss and perplexity); a run "
            f"trained on shards reports its validation loss: gptcli train {sharded}"
        )
    tokens = corpus_tokens(paths, errors=s.encoding_errors, format=s.format, text_field=s.text_field or "text")
    if len(tokens) < 2:
        raise UsageError(f"{paths[0]}: needs at least 2 tokens to evaluate, has {len(tokens)}")
    loaded = _load(checkpoint, model, device, s.dtype)
    T = loaded.net.cfg.context_length
    if stride is not None and stride > T:
        raise UsageError(f"invalid --stride: {stride} (at most the model's context length, {T})")
    if stride is None and len(tokens) <= T:
        raise UsageError(
            f"{paths[0]}: {len(tokens)} tokens, too short for one of the book's windows of {T} tokens "
            f"(needs {T + 1}); --stride {T} scores a shorter text"
        )
    with console.step_progress("evaluating", None) as prog:
        task = prog.add_task("eval", total=None)
        res = evaluate_tokens(
            loaded.net,
            tokens,
            batch_size=s.batch_size,
            stride=stride,
            device=loaded.device,
            on_progress=lambda d, t: prog.update(task, completed=d, total=t),
        )
    result = {
        "checkpoint": str(loaded.path),
        "files": [str(p) for p in paths],
        "method": res.method,
        "dtype": s.dtype,
        "context_length": T,
        "stride": res.stride,
        "batch_size": s.batch_size,
        "tokens": res.tokens,
        "windows": res.windows,
        "loss": res.loss,
        "perplexity": res.perplexity,
    }
    head = ["checkpoint", "method", "tokens", "loss", "perplexity"]
    row = [str(loaded.path), res.method, f"{res.tokens:,}", f"{res.loss:.4f}", f"{res.perplexity:.2f}"]
    if s.dtype != "fp32":  # a faster mode's figures say so
        head.insert(2, "dtype")
        row.insert(2, s.dtype)
    return _print_result(result, head, row, json_out=s.json_out)


# ---------------------------------------------------------------------------------------------
# eval --judge: the book's LLM-as-judge (section 7.8), gptcli.judge


def judge_command(s: EvalSettings) -> dict[str, Any]:
    """Score an instruct run's answers (its test split, answered by the run, or ``--responses
    FILE``) with the judge, and print the book's two lines: the count of integer scores and their
    average. Each verdict goes to a JSON Lines file beside the run as it arrives, so a run that
    stops (Ctrl-C, a judge gone) goes on where it stopped when started again."""
    from gptcli import judge as jd

    judge = s.judge_client()
    if s.responses is not None:
        records, source = jd.read_responses(s.responses), s.responses
        run = _judged_run(s.checkpoint) if s.checkpoint is not None else None
        name = f"judge-{_file_word(judge.model)}"
        out = run / "eval" / f"{name}-{source.stem}.jsonl" if run else source.with_name(f"{source.stem}.{name}.jsonl")
    else:
        source = _run_test_responses(s)
        records = jd.read_responses(source)
        out = source.parent / f"judge-{_file_word(judge.model)}.jsonl"
    n = len(records)
    console.info(
        f"judging {n} response{'s' if n != 1 else ''} with {judge.model} at {judge.endpoint}; verdicts in {out}"
    )
    kept = 0

    def on_verdict(i: int, verdict: dict[str, Any]) -> None:
        nonlocal kept
        kept += 1
        prog.advance(task)
        if verdict["score"] is None:
            console.warn(f"record {i}: Could not convert score: {verdict['reply']}")  # the book's words

    def on_resume(n: int) -> None:
        nonlocal kept
        kept = n
        console.info(f"resuming: {n} of {len(records)} already judged in {out}")
        prog.update(task, completed=n)

    with console.step_progress("judging", None) as prog:
        task = prog.add_task("judge", total=len(records))
        try:
            res = jd.judge_records(
                records, judge, out, on_verdict=on_verdict, on_resume=on_resume, on_retry=console.warn
            )
        except KeyboardInterrupt:
            console.info(f"{kept} of {len(records)} verdicts kept in {out}; the same command goes on from there")
            raise
        except jd.JudgeError as e:
            if kept:
                e.hint = f"{kept} of {len(records)} verdicts kept in {out}; the same command goes on from there"
            raise
    return _print_judged(res, judge, source, json_out=s.json_out)


def _print_judged(res: Any, judge: Any, source: Path, *, json_out: bool) -> dict[str, Any]:
    from gptcli.judge import JudgeError

    result = {
        "judge": {"model": judge.model, "api": judge.api, "url": judge.endpoint},
        "responses": str(source),
        "verdicts": str(res.path),
        "records": res.records,
        "scores": len(res.scores),
        "average": res.average,
        "unscored": [{"index": i, "reply": reply} for i, reply in res.unscored],
        "asked": res.asked,
    }
    if json_out:
        console.print_result(json.dumps(result))
    else:  # as the book prints them
        console.print_result(f"Number of scores: {len(res.scores)} of {res.records}")
        if res.average is not None:
            console.print_result(f"Average score: {res.average:.2f}")
    if res.average is None:
        first = res.unscored[0][1] if res.unscored else ""
        raise JudgeError(
            f"none of the judge's {res.records} replies is an integer (the first: {first[:80]!r}); "
            f"is {judge.model} a model that follows instructions? the replies are in {res.path}"
        )
    return result


def _file_word(text: str) -> str:
    """``text`` as part of a file name: llama3:8b-instruct -> llama3_8b-instruct."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def _judged_run(checkpoint: Path) -> Path:
    """The run directory of ``-c`` (a checkpoint's own folder when it is not in a run)."""
    from gptcli.errors import CheckpointError
    from gptcli.rundir import run_dir_of

    p = Path(checkpoint)
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint or run directory not found")
    if p.is_dir():
        return p
    return run_dir_of(p) or p.parent


def _run_test_responses(s: EvalSettings) -> Path:
    """The run's answers to its test split, as ``sample --responses test`` writes them, kept in
    ``<run>/eval/`` (reused while newer than the checkpoint, so a resumed judging answers nothing again)."""
    from gptcli.checkpoint import resolve_checkpoint
    from gptcli.commands.sample import instruct_command
    from gptcli.inference import latest_checkpoint
    from gptcli.settings.sample import SampleSettings
    from gptcli.tasks import KIND_INFO

    if s.checkpoint is None:
        path, note = latest_checkpoint((KIND_INFO["instruct"].recorded,), warn=console.warn)
        console.info(note)
    else:
        path = resolve_checkpoint(s.checkpoint, warn=console.warn)
    out = _judged_run(path) / "eval" / f"test-responses-{_file_word(path.stem)}.json"
    if out.is_file() and out.stat().st_mtime >= path.stat().st_mtime:
        console.info(f"the run's answers to its test split: {out}")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    sample = SampleSettings(
        checkpoint=path, responses="test", output=out, force=True, device=s.device, threads=s.threads, quiet=s.quiet
    )
    try:
        instruct_command(sample)
    except UsageError as e:  # worded for sample's flags
        raise UsageError(str(e).replace("--responses: ", "--judge: ", 1)) from None
    return out
