"""``gptcli download`` and ``gptcli convert`` as plain typed functions.

Owns how these two commands report: progress bars driven by ``gptcli.weights``' callbacks, the
log lines, and the hint at what to run next. The work itself is ``gptcli.weights``, which never
prints.
"""

from __future__ import annotations

from pathlib import Path

from gptcli import console
from gptcli.checkpoint import load_checkpoint
from gptcli.errors import CheckpointError
from gptcli.paths import shell_path
from gptcli.settings.weights import ConvertSettings, DownloadSettings
from gptcli.tasks import KIND_INFO, recorded_kind
from gptcli.weights import CONVERTED_NAME, gpt2_dir
from gptcli.weights.convert import convert as convert_weights
from gptcli.weights.download import DATA_FILE, DownloadCallbacks, download_gpt2
from gptcli.weights.openai import convert_openai


def _mb(n: int | None) -> str:
    return "unknown size" if n is None else f"{n / 1e6:,.1f} MB"


class _DownloadDisplay(DownloadCallbacks):
    """A bar per file and one overall (on a terminal); a log line per file otherwise."""

    def __init__(self, progress):
        self.progress = progress
        self.tasks: dict[str, object] = {}
        self.done: dict[str, int] = {}
        self.total: dict[str, int | None] = {}
        self.planned: dict[str, int | None] = {}
        self.overall = progress.add_task("all files", total=None)
        self.interactive = console.interactive()

    def _refresh(self) -> None:
        totals = [self.total.get(n) or self.planned.get(n) or 0 for n in self.planned]
        self.progress.update(self.overall, completed=sum(self.done.values()), total=sum(totals) or None)

    def _task(self, name: str, total: int | None, done: int):
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total, completed=done)
        else:
            self.progress.reset(self.tasks[name], total=total, completed=done)
        return self.tasks[name]

    def on_plan(self, files):
        self.planned = dict(files)
        self._refresh()

    def on_file_start(self, name, total, done):
        self.total[name], self.done[name] = total, done
        self._task(name, total, done)
        self._refresh()
        if not self.interactive:
            console.info(f"{name}: downloading {_mb(total)}" + (f", resuming at {_mb(done)}" if done else ""))

    def on_bytes(self, name, n):
        self.done[name] = self.done.get(name, 0) + n
        self.progress.advance(self.tasks[name], n)
        self.progress.update(self.overall, completed=sum(self.done.values()))

    def on_file_done(self, name, path, *, skipped):
        size = path.stat().st_size
        self.total[name] = self.done[name] = size
        self._task(name, size, size)
        self._refresh()
        if skipped and not self.interactive:
            console.info(f"{name}: already complete")

    def on_restart(self, name, reason):
        console.warn(f"{name}: {reason}")

    def on_retry(self, url, reason, delay):
        console.warn(f"{url}: {reason}; retrying in {delay:.1f}s")

    def on_fallback(self, failed_url, reason, next_url):
        console.warn(f"{reason}; trying {next_url}")

    def on_wait(self, lock):
        console.info(f"waiting for another download into {lock.parent} to finish")


def _convert_bar(description: str):
    prog = console.step_progress(description, None)
    task = prog.add_task(description, total=None)

    def on_progress(done: int, total: int) -> None:
        prog.update(task, completed=done, total=total)

    return prog, on_progress


def download_command(s: DownloadSettings) -> Path:
    size, directory, base_url = s.size, s.directory, s.base_url
    console.set_quiet(s.quiet)
    with console.byte_progress(7) as prog:
        out = download_gpt2(size, directory, base_url=base_url, callbacks=_DownloadDisplay(prog))
    console.info(f"downloaded GPT-2 {size} to {out}")
    if s.no_convert:
        console.info(f"convert it with: gptcli convert {shell_path(out)}")
        return out
    target = out / CONVERTED_NAME
    if target.is_file() and target.stat().st_mtime >= (out / DATA_FILE).stat().st_mtime:
        console.info(f"already converted: {target}")
    else:
        prog, on_progress = _convert_bar("converting")
        try:
            with prog:
                convert_openai(out, target, reader=s.reader, on_progress=on_progress)
        except CheckpointError as e:  # a downloaded file that does not parse will not heal on a rerun
            raise CheckpointError(
                f"{e}; the downloaded files may be damaged: delete the file named here (or all of {out}) "
                f"and run 'gptcli download --size {size}{' --base-url ' + base_url if base_url else ''}' again, "
                "or fetch it yourself"
            ) from None
        console.info(f"wrote {target}")
    in_cache = directory is None or Path(directory).resolve() == gpt2_dir(size).resolve()
    console.info(f"sample with: gptcli sample --model {'gpt2-' + size if in_cache else shell_path(target)}")
    return target


def convert_command(s: ConvertSettings) -> Path:
    console.set_quiet(s.quiet)
    prog, on_progress = _convert_bar("converting")
    with prog:
        out = convert_weights(
            s.src,
            s.output,
            source=s.source,
            target=s.target,
            reader=s.reader,
            n_heads=s.n_heads,
            drop_rate=s.drop_rate,
            data=[str(p) for p in s.data] if s.data else None,
            on_progress=on_progress,
            merge_lora=s.merge_lora,
            force=s.force,
            on_note=console.info,
            weights_only=s.weights_only,
            outtype=s.outtype,
            ollama=s.ollama,
        )
    console.info(f"wrote {out}")
    if s.target == "gguf":
        if s.ollama:
            console.info(f"wrote {out.with_name('Modelfile')}")
            console.info(
                f"run it with: cd {shell_path(out.parent)} && ollama create NAME -f Modelfile && ollama run NAME"
            )
        console.info(f"run it with: llama-cli -m {shell_path(out)}")
    elif s.target == "safetensors" or s.weights_only:
        console.info(f"use it with: gptcli sample --model {shell_path(out)}  (or eval, or train --init)")
    elif s.target == "gptcli" and out.is_file():
        # Just written and renamed into place: no need to check its CRCs again.
        obj = load_checkpoint(out, verify=False)
        kind = recorded_kind(obj.get("kind"))
        if kind is not None and not kind.generates_text:  # convert --merge-lora of a classifier
            console.info(f"use it with: gptcli classify -c {shell_path(out)} TEXT")
        elif kind is KIND_INFO["lm"]:
            if obj["train_config"].get("data"):
                done = int(obj["progress"].get("epoch", 0))  # the notebook's epochs, from AdamW's step count
                more = f" --epochs {done + 1}" if done >= int(obj["train_config"].get("epochs", 1)) else ""
                console.info(f"continue training with: gptcli resume {shell_path(out)}{more}")
            else:
                console.warn(
                    f"{out} holds optimizer state but no training text, so 'gptcli resume' cannot continue it; "
                    f"convert again with --data FILE (the text the notebook trained on), "
                    f"or start a new run with: gptcli train FILE --init {shell_path(out)}"
                )
        else:
            console.info(f"use it with: gptcli sample --model {shell_path(out)}  (or train --init {shell_path(out)})")
    return out
