"""``gptcli download``'s and ``gptcli convert``'s settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gptcli import settings as shared
from gptcli.settings import flag, invalid
from gptcli.weights import GGUF_OUTTYPES, READERS, SIZES, SOURCES, TARGETS

# Where ``gptcli download`` fetches from: OpenAI's files, or the Hugging Face Hub.
DOWNLOAD_SOURCES = ("openai", "hf")


@dataclass
class DownloadSettings:
    """``gptcli download``: one of OpenAI's GPT-2 models, from OpenAI's files or (``--source hf``)
    the Hugging Face Hub, or any Hub repository of a GPT-2 model (``repo``); converted for gptcli
    unless ``no_convert``."""

    repo: str | None = flag(
        None,
        argument=True,
        metavar="REPO",
        help="A Hugging Face Hub repository of a GPT-2 model (distilgpt2, OWNER/NAME) instead of --size.",
        show_default=False,
    )
    size: str | None = flag(
        None,
        choices=SIZES,
        help="Which of OpenAI's four GPT-2 models [default: 124M].",
        show_default=False,
    )
    directory: Path | None = flag(
        None,
        flags=("--dir", "-d"),
        metavar="DIR",
        help="Folder for the files [default: $GPTCLI_HOME/gpt2/<size>, i.e. ~/.cache/gptcli/gpt2/<size>].",
    )
    base_url: str | None = flag(
        None,
        metavar="URL",
        help="Mirror serving <size>/<file> [default: $GPTCLI_GPT2_BASE_URL, else OpenAI's host, then the book's "
        "mirror].",
    )
    no_convert: bool = flag(False, flags=("--no-convert",), help="Only download; skip the conversion to model.pth.")
    reader: str = flag(
        "builtin",
        choices=READERS,
        help="Read the TensorFlow checkpoint with: builtin (no TensorFlow needed) or tensorflow.",
    )
    quiet: bool = shared.quiet_flag()
    source: str = flag(
        "openai",
        choices=DOWNLOAD_SOURCES,
        help="--size from OpenAI's files, or from the Hugging Face Hub (openai-community/gpt2 etc.; "
        "HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE apply).",
    )
    revision: str | None = flag(
        None,
        metavar="REV",
        help="Hub downloads: the branch, tag or commit [default: main; a re-run keeps the commit it downloaded].",
    )

    def __post_init__(self) -> None:
        shared.check_flags(self)  # --size, --reader, --source
        if self.repo is not None:
            if self.size is not None:
                raise invalid("--size", f"{self.size} with REPO {self.repo!r} (give one or the other)")
            self.source = "hf"
        if self.size is None:
            self.size = "124M"
        if self.source == "hf":
            if self.base_url is not None:
                raise invalid("--base-url", "is for OpenAI's files; for a mirror of the Hub set HF_ENDPOINT")
            if self.reader != "builtin":
                raise invalid("--reader", f"{self.reader} reads OpenAI's TensorFlow files, not the Hub's")
        elif self.revision is not None:
            raise invalid("--revision", "is for the Hub (--source hf or a REPO)")


@dataclass
class ConvertSettings:
    """``gptcli convert``: weights from one format to another (``gptcli.weights.convert``)."""

    src: str = flag(
        argument=True,
        metavar="SRC",
        help="OpenAI checkpoint folder, Hugging Face folder or weights file, the book's .pth, or (with --to hf, "
        "gguf or safetensors, or --weights-only) a gptcli checkpoint, run or gpt2-124M.",
        show_default=False,
    )
    output: Path | None = shared.output_flag(
        "Output .pth (--to gptcli), folder (--to hf) or file (--to gguf, --to safetensors) [default: beside SRC; "
        "with --merge-lora, <run>/merged.pth].",
        metavar="PATH",
    )
    source: str | None = flag(None, flags=("--from",), choices=SOURCES, help="The format of SRC [default: detected].")
    target: str = flag("gptcli", flags=("--to",), choices=TARGETS, help="The format to write.")
    reader: str = flag(
        "builtin", choices=READERS, help="TensorFlow checkpoints: builtin (no TensorFlow needed) or tensorflow."
    )
    n_heads: int | None = flag(
        None,
        metavar="N",
        help="Book checkpoints: attention heads (not stored in the file) [default: GPT-2's count for its four "
        "sizes; other shapes need it].",
    )
    drop_rate: float = flag(0.1, metavar="X", help="Book checkpoints: dropout rate for further training.")
    data: list[Path] | None = flag(
        None,
        flags=("--data",),
        metavar="FILE",
        help="Book checkpoints with optimizer state: the training text, so 'gptcli resume' can continue and the "
        "epochs the notebook ran are known (repeatable).",
    )
    force: bool = flag(
        False,
        flags=("--force",),
        help="Replace an existing output file or folder (a run's checkpoints are never replaced).",
    )
    quiet: bool = shared.quiet_flag()
    merge_lora: bool = flag(
        False,
        flags=("--merge-lora",),
        help="A finetune run: fold its LoRA adapters into the weights and write a file that needs no base "
        "(with --to hf, always merged).",
    )

    # The Hugging Face Hub (gptcli.weights.hub): upload the --to hf export.
    push: str | None = flag(
        None,
        flags=("--push",),
        metavar="REPO",
        help="With --to hf: also upload the export, with a model card, to this Hub repository (created if "
        "missing; the token is HF_TOKEN or the cached login).",
    )
    private: bool = flag(False, flags=("--private",), help="With --push: create the repository private.")
    weights_only: bool = flag(
        False,
        flags=("--weights-only",),
        help="A gptcli checkpoint or run: write only the model and its config (no optimizer state), which "
        "sample, eval and --init take (a LoRA run merged; --to safetensors always is weights-only).",
    )
    outtype: str = flag(
        "f32",
        choices=GGUF_OUTTYPES,
        help="--to gguf: the type of the weight matrices (norms, biases and the position embedding stay f32).",
    )
    ollama: bool = flag(
        False, flags=("--ollama",), help="--to gguf: also write an Ollama Modelfile beside the GGUF file."
    )

    def __post_init__(self) -> None:
        shared.check_flags(self)  # --from, --to, --reader, --outtype
        self.src = str(self.src)
        self._check_push()
        if self.target != "gguf":
            if self.outtype != "f32":
                raise invalid("--outtype", f"{self.outtype} is for --to gguf (this writes --to {self.target})")
            if self.ollama:
                raise invalid("--ollama", f"a Modelfile goes with --to gguf (this writes --to {self.target})")
        if self.n_heads is not None and self.n_heads < 1:
            raise invalid("--n-heads", f"{self.n_heads} (must be an integer >= 1)")
        if not 0.0 <= self.drop_rate < 1.0:
            raise invalid("--drop-rate", f"{self.drop_rate} (must be in [0, 1))")

    def _check_push(self) -> None:
        if self.push is not None and self.target != "hf":
            raise invalid("--push", f"{self.push!r} uploads a Hugging Face export: add --to hf")
        if self.push is not None:  # before the export is written, not after
            from gptcli.weights.hub import check_repo_id

            check_repo_id(self.push, "--push")
        if self.private and self.push is None:
            raise invalid("--private", "applies to --push REPO")
