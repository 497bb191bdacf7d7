"""What each command does, as plain typed functions: ``cli.py`` parses flags (into the command's
settings, ``gptcli.settings``, for all but train and finetune) and calls them, and tests and
scripts can call them too.

One module per command family: ``train`` (train, resume), ``sample`` (sample, sample -i),
``evaluate`` (eval), ``runs`` (info, runs, plot), ``weights`` (download, convert). They print
results to stdout and progress to stderr through ``gptcli.console``; the library below them
never prints.
"""
