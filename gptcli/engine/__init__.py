"""The one training engine: a loop (``loop.Engine``) that pretraining and every finetune share,
with the task (``gptcli.tasks``) plugged in for what differs: data, model preparation, the loss,
the records written at an epoch's end, and what a checkpoint must remember beyond the shared
state."""
