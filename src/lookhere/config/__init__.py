"""Torch-free facts about models that configs check before anything is built: the tiny size
presets (`sizes`), layer indices (`layers`) and the checkpoints shipped in the package
(`shipped`). Nothing here imports torch or transformers, so building a config, and printing a
command's ``--help`` with its defaults, stays quick; the models layer re-exports each name
where it was first defined (`lookhere.models.tiny`, `.adapter`, `.pretrained`)."""
