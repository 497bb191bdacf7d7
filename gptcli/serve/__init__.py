"""``gptcli serve``: an OpenAI-compatible HTTP server for a gptcli model.

``engine`` decodes every request in flight together (continuous batching over generation's
step-level pieces); ``api`` is the FastAPI app that speaks OpenAI's wire format; ``page.html`` is
the chat page served at ``/``. The command layer is ``gptcli.commands.serve``.
"""
