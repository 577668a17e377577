"""The command line."""

import json

import pytest

from lookhere.cli import main
from lookhere.models import families


def test_families(capsys):
    assert main(["families"]) == 0
    out = capsys.readouterr().out
    assert all(f in out for f in families())


def test_tiny_saves_and_refuses_overwrite(tmp_path, capsys, cli_error):
    out = tmp_path / "m"
    assert main(["tiny", "--family", "llava", "--out", str(out)]) == 0
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp folder left"
    assert "--out" in cli_error(["tiny", "--family", "llava", "--out", out])
    # the default size leaves heads to search after `heads find` skips layers 0-1
    assert json.loads((out / "config.json").read_text())["text_config"]["num_hidden_layers"] > 2
    assert "--size 'huge' is not a preset; choose from test" in cli_error(
        ["tiny", "--family", "llava", "--size", "huge", "--out", tmp_path / "x"])


def test_cli_modules_import_no_torch():
    """The command modules import without torch or transformers: the heavy layers load inside
    the commands (a table module importing the eval layer once pulled them in at import)."""
    import subprocess
    import sys

    code = ("import sys, lookhere.cli; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


#: Prints every command path of the parser (walked, not listed), those whose --help it printed
#: and whether torch or transformers were imported by then.
_WALK = """
import argparse, contextlib, io, json, sys
from lookhere.cli import main, parser

def paths(p, prefix=()):
    yield prefix
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from paths(sub, (*prefix, name))

every = list(paths(parser()))
seen = []
for path in every:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main([*path, "--help"])
        except SystemExit as stop:
            assert stop.code == 0, (path, stop.code)
    assert out.getvalue().startswith("usage: lookhere"), (path, out.getvalue())
    seen.append(" ".join(path))
print(json.dumps({"every": [" ".join(p) for p in every], "seen": seen,
                  "heavy": sorted(m for m in ("torch", "transformers") if m in sys.modules)}))
"""


def _walk() -> dict:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _WALK], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_every_help_loads_no_torch():
    """Building the parser and printing --help for every command path (the root, each group
    and each subcommand, walked from the parser; the experiment and pretraining commands
    build and check their configs' defaults, the demo's on the shipped checkpoint) imports
    neither torch nor transformers: the robust form of '--help in under 1.5 s'
    (docs/benchmarks.md has the seconds)."""
    from lookhere.cli import GROUPS

    walked = _walk()
    assert walked["heavy"] == []
    assert walked["seen"] == walked["every"]
    commands = {c for group in GROUPS for c in group.COMMANDS}
    assert commands <= set(walked["seen"])
    assert {"", "heads find", "pretrain card", "pretrain train", "experiment lens",
            "demo"} <= set(walked["seen"])


def test_version_loads_no_torch():
    import subprocess
    import sys

    from lookhere import __version__

    code = ("import sys\nfrom lookhere.cli import main\ntry:\n    main(['--version'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith(f"lookhere {__version__}\n") and out.strip().endswith("[]")


def test_unknown_command_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["nosuch"])
    err = capsys.readouterr().err
    assert "invalid choice: 'nosuch'" in err and "pretrain" in err and "families" in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error(capsys):
    from lookhere.cli.common import load_model_for_cli

    with pytest.raises(SystemExit) as e:
        load_model_for_cli("no/such/model", "cuda", "lookhere eval")
    assert e.value.code == 2
    assert "--device cuda: CUDA is not available here" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load_model_for_cli("no/such/model", "nonsense", "lookhere eval")
    assert "--device nonsense" in capsys.readouterr().err


def test_missing_local_model_says_so(tmp_path, capsys, monkeypatch):
    """A model folder that does not exist is named as such, not only as a hub failure."""
    from lookhere.cli.common import load_model_for_cli

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as e:
        load_model_for_cli(str(tmp_path / "nope"), "cpu", "lookhere eval")
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"--model {tmp_path / 'nope'}: no such local folder" in err
