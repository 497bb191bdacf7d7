"""gptcli: pretrain, resume, evaluate and sample GPT-2-style models from the command line."""

__version__ = "0.1.0"
