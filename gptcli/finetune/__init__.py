"""Finetuning a pretrained GPT, as the book's chapters 6 (classification), 7 (instructions) and
appendix E (LoRA) do.

``instruct`` and ``classify`` turn user files into batches exactly as the book's datasets and
collate functions do; ``lora`` is appendix E's ``LinearWithLoRA`` over gptcli's fused layers;
``trainer`` is ``train_model_simple`` / ``train_classifier_simple``, resumable. The library never
prints; ``gptcli.commands.finetune`` is the command layer.
"""
