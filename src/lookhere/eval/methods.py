"""The REC methods `lookhere.eval.rec` compares (what each one is: that module's docstring):
the localization heads and the baselines. Names only, torch-free, so that configs that choose
among them (an experiment's, shown by ``--help``) build without torch."""

#: the methods that ground through attention maps (each has heads)
ATTENTION_METHODS = ("heads", "all_heads", "random_heads")
#: every baseline one may ask for
BASELINES = ("all_heads", "random_heads", "centre", "text", "ceiling")
#: those compared by default (``ceiling`` is a measure of the grid and the rule, not a method)
DEFAULT_BASELINES = ("all_heads", "random_heads", "centre", "text")
METHODS = ("heads", *BASELINES)
