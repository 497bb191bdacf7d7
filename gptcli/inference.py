"""Using a trained model: loading it from a checkpoint or a GPT-2 download and preparing it for
``--device``/``--dtype`` (generating with a ``SampleConfig`` is ``generation.generate_with``).

Shared by ``sample``, ``sample -i``, ``eval`` and the benchmarks; none of them imports the
training loop. Never prints: a note for the user comes back in ``LoadedModel.note``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from gptcli import rundir, weights
from gptcli.checkpoint import load_checkpoint, resolve_checkpoint
from gptcli.device import DTYPES, resolve_device, resolve_dtype
from gptcli.errors import CheckpointError, UsageError
from gptcli.model import GPT
from gptcli.paths import display_path, shell_path
from gptcli.run import Run
from gptcli.tasks import KIND_INFO, TEXT_KINDS, model_from_checkpoint, recorded_kind


@dataclass
class LoadedModel:
    net: GPT
    path: Path  # the checkpoint it came from
    device: torch.device
    note: str | None = None  # something the user should be told about the choice of model
    finetune: dict | None = None  # an instruct finetune's settings (template, LoRA, base), else None


_WANTED = {  # kinds asked for -> (what the note calls such a run, how to make one)
    TEXT_KINDS: ("run that generates text", KIND_INFO["lm"].make),
    **{(k.recorded,): (k.title.split(" ", 1)[1], k.make) for k in KIND_INFO.values() if k.section == "finetune"},
}


def find_latest_run(
    kinds: tuple[str | None, ...] = TEXT_KINDS, *, root: Path = rundir.RUNS_ROOT
) -> tuple[Path | None, str, str]:
    """The most recent run under ``root`` that is one of ``kinds`` (``Run.kind``), so that
    ``sample`` with no ``-c`` never picks a classifier; why it was picked ("the most recent run",
    or which newer run it passed over); and where there is none, None, why and the fix."""
    want, make = _WANTED.get(kinds, ("run", "give one with -c RUN"))
    latest = Run.latest(root)
    if latest is None:
        return None, f"no run under {root}/", make
    found = Run.latest(root, kinds=kinds)
    newest, newest_kind = latest.path, recorded_kind(latest.kind)
    a_kind = newest_kind.title if newest_kind is not None else "a run of another kind"
    if found is None:
        fix = f"give one with -c RUN, or {make}"
        if newest_kind is not None and not newest_kind.generates_text:
            fix += f"; to label texts with the classifier: gptcli classify -c {shell_path(newest)} TEXT"
        return None, f"no {want} under {root}/ (the most recent run, {display_path(newest)}, is {a_kind})", fix
    if found.path == newest:
        return found.path, "the most recent run", ""
    return found.path, f"the most recent {want}; the newer {display_path(newest)} is {a_kind}", ""


def latest_checkpoint(kinds: tuple[str | None, ...], *, warn: Callable[[str], None] | None = None) -> tuple[Path, str]:
    """The newest checkpoint of the most recent run of one of ``kinds`` and the note that names
    it for the user; a CheckpointError saying why there is none, and the fix, otherwise."""
    run, reason, fix = find_latest_run(kinds)
    if run is None:
        raise CheckpointError(f"{reason}; {fix}")
    path = resolve_checkpoint(run, warn=warn)
    return path, f"using {display_path(path)} ({reason})"


def load_model_for_inference(
    checkpoint: Path | None,
    model: str | None,
    *,
    device: str,
    dtype: str = "fp32",
    fallback_gpt2: bool = False,
    warn: Callable[[str], None] | None = None,
    kinds: tuple[str | None, ...] = TEXT_KINDS,
) -> LoadedModel:
    """The model of ``--checkpoint`` (a file or run directory, default the latest run of one of
    ``kinds``: one that generates text unless told otherwise) or of ``--model`` (a converted file
    or a downloaded GPT-2 name). With ``fallback_gpt2`` and no such run under runs/, the downloaded
    GPT-2 124M is used. When neither was given, ``note`` names what was loaded instead."""
    if checkpoint is not None and model is not None:
        raise UsageError("give either --checkpoint or --model, not both")
    note = None
    if model is not None:
        path = weights.resolve_model(model)
    elif checkpoint is not None:
        path = resolve_checkpoint(checkpoint, warn=warn)
    else:
        run, reason, fix = find_latest_run(kinds)
        if run is not None or not (fallback_gpt2 and KIND_INFO["lm"].recorded in kinds):
            path, note = latest_checkpoint(kinds, warn=warn)
        else:
            fallback = weights.downloaded_default()
            if fallback is None:
                raise CheckpointError(
                    f"nothing to load: {reason} and no downloaded GPT-2 (download it with: gptcli download "
                    f"--size 124M); {fix}"
                )
            note = f"{reason}; using the downloaded GPT-2 124M ({fallback})"
            path = fallback
    if dtype not in DTYPES:
        raise UsageError(f"invalid --dtype: {dtype!r} (choose from {', '.join(DTYPES)})")
    obj = load_checkpoint(path, model_only=True)  # the weights only: never the AdamW state
    kind = recorded_kind(obj.get("kind"))
    if kind is not None and not kind.generates_text:
        run = rundir.run_dir_of(path) or path
        raise UsageError(f"{display_path(path)}: is a classifier: use gptcli classify -c {display_path(run)} TEXT")
    net, finetune = model_from_checkpoint(obj, path)  # a finetune's unmerged: the model as trained
    dev = resolve_device(device)
    prepare_for_inference(net, dtype=dtype, device=dev)
    return LoadedModel(net, path, dev, note, finetune)


def prepare_for_inference(net: GPT, *, dtype: str, device: torch.device) -> GPT:
    """Move a model to ``device``, cast it for ``--dtype`` and set eval mode.

    fp32 on CPU also stores every Linear weight column-major (the same values and state dict):
    ``F.linear`` computes ``x @ W.t()``, and with ``W.t()`` contiguous MKL's batch-1 kernels stream
    the weights about 1.4x faster (benchmarks/bench_sample_cpu.py); and its products of a few rows
    run on all threads, one block of columns each, with the same bits (gptcli.quantize.SplitLinear).
    bf16 kernels are fastest with the usual row-major layout, and on CPU are prepacked for oneDNN
    once (the same products, faster at batch 1: gptcli.quantize). int8 (CPU only) is bf16 with
    every Linear replaced by a weight-only int8 one (gptcli.quantize).
    """
    if dtype == "int8" and device.type != "cpu":
        raise UsageError(f"invalid --dtype: 'int8' runs on the CPU only (not on {device.type}); use bf16 there")
    net.to(device)
    if resolve_dtype(dtype, device) == torch.bfloat16:
        net.to(torch.bfloat16)
        if dtype == "int8":
            from gptcli.quantize import quantize_linears_int8

            quantize_linears_int8(net)
        elif device.type == "cpu":
            from gptcli.quantize import pack_linears_bf16, packing_supported

            if packing_supported():
                pack_linears_bf16(net)
    elif device.type == "cpu":
        from gptcli.quantize import split_linears_fp32

        for m in net.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.data = m.weight.data.t().contiguous().t()
        split_linears_fp32(net)
    return net.eval()


def long_prompt_warning(n_tokens: int, context_length: int) -> str | None:
    """What to tell the user about a prompt longer than the context (its start is dropped)."""
    if n_tokens <= context_length:
        return None
    return (
        f"prompt of {n_tokens} tokens is longer than the context ({context_length}); keeping its last {context_length}"
    )
