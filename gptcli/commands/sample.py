"""``gptcli sample``: continuations of prompts, as text, a stream or JSON; and ``sample -i``, a
prompt loop that keeps the model loaded."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from gptcli import console
from gptcli.device import set_threads
from gptcli.errors import UsageError
from gptcli.generation import generate_with
from gptcli.inference import TEXT_KINDS, LoadedModel, load_model_for_inference, long_prompt_warning
from gptcli.settings.sample import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_PROMPT,
    INSTRUCT_MAX_NEW_TOKENS,
    SampleConfig,
    SampleSettings,
    check_sample_rows,
)
from gptcli.tasks import KIND_INFO
from gptcli.tokenizer import EOT_ID, decode, encode


def _load(
    checkpoint: Path | None, model: str | None, *, device: str, dtype: str, kinds: tuple[str | None, ...] = TEXT_KINDS
) -> LoadedModel:
    loaded = load_model_for_inference(
        checkpoint, model, device=device, dtype=dtype, fallback_gpt2=True, warn=console.warn, kinds=kinds
    )
    if loaded.note:
        console.info(loaded.note)
    return loaded


def _token_printer(*, echo: bool):
    """An ``on_token`` callback for one row that collects its tokens and, with ``echo``, prints
    each complete UTF-8 piece as it arrives; also returns its state (ids, text printed so far)."""
    state: dict[str, Any] = {"ids": [], "printed": ""}

    def on_token(tok) -> None:
        t = int(tok[0, 0])
        if t == EOT_ID:
            return
        state["ids"].append(t)
        text = decode(state["ids"])
        if echo and not text.endswith("\ufffd"):  # wait for a complete UTF-8 character
            console.print_result(text[len(state["printed"]) :], end="")
            state["printed"] = text

    return on_token, state


def _encode_prompt(prompt: str, context_length: int) -> list[int]:
    ids = encode(prompt)
    if (warning := long_prompt_warning(len(ids), context_length)) is not None:
        console.warn(warning)
    return ids


def piped_prompt() -> str | None:
    """The prompt piped in on standard input (``echo "I had" | gptcli sample``), without the one
    newline that ends it; None when stdin is a terminal or gives nothing (``< /dev/null``)."""
    stdin = sys.stdin
    if stdin is None or stdin.isatty():
        return None
    text = stdin.read()
    if not text:
        return None
    return text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")


def warn_filters_without_temperature(scfg: SampleConfig) -> None:
    """--top-k and --top-p choose among tokens to sample; greedy decoding (temperature 0) ignores them."""
    if scfg.temperature == 0 and (scfg.top_k is not None or scfg.top_p is not None):
        given = [f for f, v in (("--top-k", scfg.top_k), ("--top-p", scfg.top_p)) if v is not None]
        console.warn(
            f"{' and '.join(given)} {'applies' if len(given) == 1 else 'apply'} only when sampling: give --temperature "
            "(e.g. 1.0); at --temperature 0, the default, every token is the most likely one"
        )


def run_sample(s: SampleSettings) -> Any:
    """``gptcli sample``: an instruct run's answers (--instruction, --responses), a prompt loop
    (-i), or continuations of the prompts (PROMPT, --prompt, else stdin piped in), as the settings
    say."""
    if s.instruct:
        return instruct_command(s)
    common = dict(
        checkpoint=s.checkpoint,
        model=s.model,
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p,
        seed=s.seed,
        device=s.device,
        dtype=s.dtype,
        use_cache=not s.no_cache,
        stream=s.stream,
        quiet=s.quiet,
        threads=s.threads,
    )
    if s.interactive:
        return interactive_sample(**common)
    prompts = s.prompt
    if prompts is None:
        piped = piped_prompt()
        prompts = [piped if piped is not None else DEFAULT_PROMPT]
    return sample_command(prompts=prompts, num_samples=s.num_samples, json_out=s.json_out, **common)


def sample_command(
    *,
    checkpoint: Path | None = None,
    model: str | None = None,
    prompts: list[str],
    max_new_tokens: int = 50,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    num_samples: int = 1,
    device: str = "auto",
    dtype: str = "fp32",
    use_cache: bool = True,
    json_out: bool = False,
    stream: bool | None = None,
    quiet: bool = False,
    threads: int | None = None,
) -> list[str]:
    """Sample ``num_samples`` continuations of each prompt; returns the texts (prompt included),
    prompt by prompt. Several texts on stdout each follow a ``--- sample I of N ---`` line, since a
    blank line can be part of a sample; ``--json`` groups them by prompt. An empty prompt starts
    from <|endoftext|> alone, as GPT-2's unconditional samples do (the text leaves it out)."""
    console.set_quiet(quiet)
    set_threads(threads)
    scfg = SampleConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        num_samples=num_samples,
    )
    check_sample_rows(scfg.num_samples, len(prompts))
    warn_filters_without_temperature(scfg)
    if scfg.num_samples > 1 and scfg.temperature == 0:
        console.warn(
            f"--num-samples {scfg.num_samples} with --temperature 0 (greedy) gives {scfg.num_samples} identical "
            "samples of each prompt; a --temperature above 0 makes them differ"
        )
    loaded = _load(checkpoint, model, device=device, dtype=dtype)
    net = loaded.net
    encoded = []
    for p in prompts:
        encoded.append(_encode_prompt(p, net.cfg.context_length) if p else [EOT_ID])
    if scfg.seed is not None:  # the global RNG, as the book's generate uses, so a seed gives its samples
        torch.manual_seed(scfg.seed)
    # Every sample of every prompt is one row of one batch, prompt by prompt: rows of different
    # lengths are left-padded (generate falls back to one batch per length only when a padded row
    # would not fit in the context with its new tokens).
    rows = [(i, ids) for i, ids in enumerate(encoded) for _ in range(scfg.num_samples)]
    streaming = (sys.stdout.isatty() if stream is None else stream) and len(rows) == 1 and not json_out
    on_token = None
    if streaming:
        console.print_result(prompts[0], end="")
        on_token, _ = _token_printer(echo=True)
    new = generate_with(net, [ids for _, ids in rows], scfg, use_cache=use_cache, on_token=on_token)
    grouped: list[list[str]] = [[] for _ in prompts]
    for (i, ids), toks in zip(rows, new):
        grouped[i].append(decode(ids + toks) if prompts[i] else decode(toks))
    texts = [t for group in grouped for t in group]
    if json_out:
        samples = [{"prompt": p, "samples": group} for p, group in zip(prompts, grouped)]
        console.print_result(json.dumps({"checkpoint": str(loaded.path), "samples": samples}))
    elif streaming:
        console.print_result("")
    elif len(texts) == 1:
        console.print_result(texts[0])
    else:
        for i, group in enumerate(grouped):
            for j, text in enumerate(group):
                console.print_result(sample_header(i, len(prompts), j, len(group)))
                console.print_result(text)
    return texts


def sample_header(prompt: int, prompts: int, sample: int, samples: int) -> str:
    """The line above each of several samples on stdout (0-based indices in, 1-based out), such as
    ``--- sample 2 of 4 ---`` or ``--- prompt 1 of 2, sample 2 of 2 ---``."""
    parts = ([f"prompt {prompt + 1} of {prompts}"] if prompts > 1 else []) + (
        [f"sample {sample + 1} of {samples}"] if samples > 1 else []
    )
    return f"--- {', '.join(parts)} ---"


# ---------------------------------------------------------------------------------------------
# sample --interactive

_INTERACTIVE_HELP = """\
Type a prompt and press Enter to continue it. Settings for the next prompts:
  /temperature 1.4    /top-k 25    /top-p 0.9    /max-new-tokens 100    /seed 123
  /top-k off and /top-p off turn a filter off; /settings shows them all.
Ctrl-C stops a generation; Ctrl-D or /quit leaves."""

_SETTINGS = {"temperature": float, "top_k": int, "top_p": float, "max_new_tokens": int, "seed": int}


def _shown(value: Any) -> str:
    """A setting as ``/settings`` shows it: "off" for a filter or seed not set, as /top-k off sets it."""
    return "off" if value is None else str(value)


def _apply_setting(settings: SampleConfig, word: str, value: str) -> SampleConfig:
    """``/word value`` applied to the settings (a warning and no change for a bad value)."""
    key = word.replace("-", "_")
    raw = value.strip()
    try:
        parsed = None if raw.lower() in ("off", "none") and key in ("top_k", "top_p", "seed") else _SETTINGS[key](raw)
    except ValueError:  # int("2**70"), int("1e99"), float("x")
        console.warn(f"/{word} needs {'an integer' if _SETTINGS[key] is int else 'a number'}, got {raw!r}")
        return settings
    if isinstance(parsed, float) and not math.isfinite(parsed):
        # nan or inf would reach softmax and end the session
        console.warn(f"/{word} needs a finite number, got {raw!r}")
        return settings
    try:
        new = dataclasses.replace(settings, **{key: parsed})
        if key == "seed" and parsed is not None:
            torch.manual_seed(parsed)  # before the settings change, so a refused seed changes nothing
    except UsageError as e:
        console.warn(str(e).replace("--", "/"))
        return settings
    except (ValueError, OverflowError, RuntimeError):  # torch.manual_seed beyond 64 bits
        console.warn(f"/{word} must be an integer from {-(2**63)} to {2**64 - 1}, got {raw}")
        return settings
    console.info(f"{word} = {_shown(parsed)}")
    return new


def interactive_sample(
    *,
    checkpoint: Path | None = None,
    model: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    device: str = "auto",
    dtype: str = "fp32",
    use_cache: bool = True,
    stream: bool | None = None,
    quiet: bool = False,
    threads: int | None = None,
    input_fn=input,
) -> int:
    """Read prompts until end of input and print a continuation of each; returns how many ran.

    The model is loaded once. On a terminal the tokens stream as they are generated; with input
    piped in, each continuation is printed whole, so ``gptcli sample -i < prompts.txt`` works too.
    An instruct run's model takes each line as an instruction, formatted with the run's template,
    and prints only its response (``max_new_tokens`` default: the book's 256 there, else 50).
    """
    # Here -q drops only the banner: answers to /help and /settings must print, whatever an
    # earlier command in this process set.
    console.set_quiet(False)
    set_threads(threads)
    loaded = _load(checkpoint, model, device=device, dtype=dtype)
    net, dev = loaded.net, loaded.device
    template = _instruct_template(loaded)
    if max_new_tokens is None:
        max_new_tokens = INSTRUCT_MAX_NEW_TOKENS if template is not None else DEFAULT_MAX_NEW_TOKENS
    settings = SampleConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    warn_filters_without_temperature(settings)
    if seed is not None:
        torch.manual_seed(seed)
    tty = sys.stdin.isatty()
    streaming = sys.stdout.isatty() if stream is None else stream
    if not quiet:  # quiet drops the banner; answers to /help and /settings still print
        console.info(
            f"loaded {loaded.path} ({net.cfg.num_params():,} parameters, context {net.cfg.context_length}) on {dev}"
        )
        if template is not None:
            console.info("an instruct finetune: each line is an instruction, formatted with the run's template")
    if tty and not quiet:
        what = "an instruction" if template is not None else "a prompt"
        console.info(f"type {what} and press Enter; /help for settings; Ctrl-D or /quit to leave")
    done = 0
    for prompt in typed_lines(input_fn, tty=tty):
        if prompt.startswith("/"):
            settings = _slash_command(prompt, settings)
            if settings is None:
                return done
            continue
        if template is not None:  # the response alone, printed whole (it is cut out of the text)
            try:
                console.print_result(
                    _answer(loaded, template, {"instruction": prompt, "input": ""}, settings, use_cache)
                )
            except KeyboardInterrupt:
                console.print_result("")
                console.info("(stopped)")
                continue
            done += 1
            continue
        ids = _encode_prompt(prompt, net.cfg.context_length)
        on_token, state = _token_printer(echo=streaming)
        if streaming:
            console.print_result(prompt, end="")
        try:
            generate_with(net, torch.tensor([ids], device=dev), settings, use_cache=use_cache, on_token=on_token)
        except KeyboardInterrupt:
            if not streaming:
                console.print_result(prompt + decode(state["ids"]), end="")
            console.print_result("")
            console.info("(stopped)")
            continue
        if streaming:
            console.print_result(decode(state["ids"])[len(state["printed"]) :])
        else:
            console.print_result(prompt + decode(state["ids"]))
        done += 1
    return done


def typed_lines(input_fn: Callable[[str], str], *, tty: bool) -> Iterator[str]:
    """The non-blank lines typed at the ``>>>`` prompt of ``sample -i`` and ``chat``, until Ctrl-D;
    a Ctrl-C at the prompt (not during an answer) only says how to leave."""
    if tty:
        try:
            import readline  # noqa: F401  (line editing and history for input(); optional, so lazy)
        except ImportError:
            pass
    while True:
        try:
            line = input_fn(">>> " if tty else "")
        except EOFError:
            if tty:
                console.print_result("")
            return
        except KeyboardInterrupt:
            console.print_result("")
            console.info("(Ctrl-D or /quit to leave)")
            continue
        text = line.rstrip("\n")
        if text.strip():
            yield text


def _slash_command(line: str, settings: SampleConfig) -> SampleConfig | None:
    """``sample -i``'s ``/command``: the settings it leaves (None for /quit)."""
    word, _, value = line[1:].strip().partition(" ")
    key = word.replace("-", "_")
    if key in ("quit", "exit", "q"):
        return None
    if key in ("help", "h", "?"):
        console.info(_INTERACTIVE_HELP)
    elif key == "settings":
        console.info(", ".join(f"{k.replace('_', '-')} {_shown(getattr(settings, k))}" for k in _SETTINGS))
    elif key in _SETTINGS:
        return _apply_setting(settings, word, value)
    else:
        console.warn(f"unknown command /{word}; /help lists them")
    return settings


# ---------------------------------------------------------------------------------------------
# sample --instruction / --responses: a model from `gptcli finetune instruct`


def instruct_command(s: SampleSettings) -> list[dict[str, Any]]:
    """Answer an instruction (``--instruction``, ``--input``) with an instruct run's model, its
    prompt formatted by the run's template, printing only the response (greedy and stopping at
    <|endoftext|> by default, as the book's chapter 7); or answer every record of a split
    (``--responses test -o FILE``) and write the book's ``instruction-data-with-response.json``:
    each record plus its ``model_response``."""
    from gptcli.finetune.config import no_split_error
    from gptcli.finetune.instruct import split_of
    from gptcli.tasks.finetune import check_split_data

    console.set_quiet(s.quiet)
    set_threads(s.threads)
    output, responses = s.output, s.responses
    if output is not None and output.is_dir():  # found before the model loads and answers
        raise UsageError(f"{output}: is a directory; give a file name (e.g. -o {output / 'responses.json'})")
    if output is not None:
        from gptcli.outputs import check_output_file

        check_output_file(output, force=s.force)
    scfg = dataclasses.replace(s.sampling(), num_samples=1)
    warn_filters_without_temperature(scfg)
    # no -c: the newest instruct run
    loaded = _load(s.checkpoint, None, device=s.device, dtype=s.dtype, kinds=(KIND_INFO["instruct"].recorded,))
    if loaded.finetune is None:
        what = "--instruction" if s.instruction is not None else "--responses"
        raise UsageError(
            f"{what}: {loaded.path} is not an instruction-finetuned model (make one with: gptcli finetune instruct)"
        )
    template = _instruct_template(loaded)
    cfg = loaded.finetune["config"]
    if s.instruction is not None:
        records = [{"instruction": s.instruction, "input": s.input_text or ""}]
    elif cfg is None:  # a weights-only file: the template came along, the data settings did not
        raise UsageError(
            f"--responses: {loaded.path} holds an instruct run's weights but not its data settings; give the run "
            "itself with -c RUN"
        )
    else:
        check_split_data(loaded.finetune)
        records = split_of(cfg["data"], cfg["split"], responses, seed=cfg.get("split_seed"))
        if not records:
            raise no_split_error("--responses", responses, data=cfg["data"], split=cfg["split"])
    if scfg.seed is not None:
        torch.manual_seed(scfg.seed)
    out = []
    with console.step_progress("responding", None) as prog:
        task = prog.add_task("responses", total=len(records))
        for r in records:
            out.append({**r, "model_response": _answer(loaded, template, r, scfg, not s.no_cache)})
            prog.advance(task)
    if responses is not None:
        _write_json(output, out)
        console.info(f"wrote {len(out)} response{'s' if len(out) != 1 else ''} to {output}")
    elif s.json_out:
        console.print_result(json.dumps({"checkpoint": str(loaded.path), **out[0]}))
    else:
        console.print_result(out[0]["model_response"])
    return out


def _instruct_template(loaded: LoadedModel) -> Any:
    """The prompt template of an instruct run's model (``gptcli.finetune.instruct.Template``),
    None for any other model."""
    if loaded.finetune is None:
        return None
    from gptcli.finetune.instruct import Template

    return Template(loaded.finetune.get("template"))


def _answer(loaded: LoadedModel, template: Any, record: dict[str, Any], scfg: SampleConfig, use_cache: bool) -> str:
    """An instruct model's response to one record (instruction and input), formatted by ``template``."""
    from gptcli.finetune.instruct import response_text

    prompt = template.prompt(record)
    ids = _encode_prompt(prompt, loaded.net.cfg.context_length)
    new = generate_with(loaded.net, torch.tensor([ids], device=loaded.device), scfg, use_cache=use_cache)[0]
    return response_text(template, prompt, decode(ids + new))


def _write_json(path: Path, obj: Any) -> None:
    """The book's ``json.dump(test_data, file, indent=4)``, written to a temporary file and renamed
    into place, so a failure never leaves half a file."""
    from gptcli import fsutil
    from gptcli.errors import SaveError, os_error_reason

    try:
        fsutil.atomic_write(path, json.dumps(obj, indent=4))
    except OSError as e:
        raise SaveError(f"{path}: could not write the responses ({os_error_reason(e)})") from None
