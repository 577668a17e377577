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


@pytest.mark.parametrize("argv", [["--help"], ["eval", "--help"], ["heads", "find", "--help"],
                                  ["--version"]])
def test_help_and_version_load_no_torch(argv):
    """`lookhere --help` (and the help of commands whose options need no torch) is quick: only
    the chosen command's group builds its full parser; every command still shows in the list."""
    import subprocess
    import sys

    code = ("import sys\nfrom lookhere.cli import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
    if argv == ["--help"]:
        for command in ("families", "tiny", "data", "eval", "heads", "ground", "demo",
                        "experiment", "pretrain"):
            assert f"    {command} " in out
    if argv == ["--version"]:
        from lookhere import __version__

        assert out.startswith(f"lookhere {__version__}")


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
