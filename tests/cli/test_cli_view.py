"""``lookhere view``'s command line: a light --help, and bad input refused in one line before the
model loads or a server starts (the page itself: tests/view/test_view_browser.py)."""

import json
import socket
import subprocess
import sys

import pytest


def test_view_help_loads_no_torch_and_no_gradio():
    code = ("import contextlib, io, sys\nfrom lookhere.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try:\n        main(['view', '--help'])\n    except SystemExit:\n        pass\n"
            "assert '--port' in out.getvalue() and 'lookhere:llava-mini' in out.getvalue()\n"
            "print(sorted(m for m in ('torch', 'transformers', 'gradio') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_bad_port(cli_error, port):
    assert "--port: expected a port in 1-65535" in cli_error(["view", "--port", port])


def test_port_in_use(cli_error):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        line = cli_error(["view", "--port", port])
    assert line.startswith(f"lookhere view: error: --host 127.0.0.1 --port {port}: cannot serve")


def test_unsupported_model_is_named(cli_error, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = cli_error(["view", "--model", tmp_path, "--port", port])
    assert f"--model {tmp_path}: no lookhere adapter for model_type 'bert'" in line


def test_small_samples_and_missing_gradio(cli_error, monkeypatch):
    assert "--sample-size must be >= 32" in cli_error(["view", "--sample-size", "8"])
    import lookhere.cli.view as view

    real = view.importlib.util.find_spec
    monkeypatch.setattr(view.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gradio" else real(name, *a))
    assert "gradio is not installed: pip install 'lookhere[view]'" in cli_error(["view"])


def test_heads_found_at_start(cli_error, tmp_path, monkeypatch):
    """--heads-data: the page gets the HeadSpec `lookhere heads find` writes for that folder."""
    from lookhere.cli import main
    from lookhere.heads.selection import HeadSpec
    from lookhere.models.tiny import build_tiny, save_tiny

    save_tiny(*build_tiny("llava", {"layers": 4}, seed=0), tmp_path / "model")
    assert main(["data", "make", "shapes", "--n", "6", "--out", str(tmp_path / "rec"), "--set",
                 "image_size=112", "--set", "mode=rec"]) == 0
    assert main(["heads", "find", "--model", str(tmp_path / "model"), "--data",
                 str(tmp_path / "rec"), "--out", str(tmp_path / "heads.json"), "--quiet"]) == 0
    import lookhere.view.app as app

    given = {}
    monkeypatch.setattr(app, "build_app", lambda *a, spec=None, **kw: given.update(spec=spec))
    monkeypatch.setattr(app, "launch", lambda *a: None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["view", "--model", str(tmp_path / "model"), "--heads-data",
                 str(tmp_path / "rec"), "--port", str(port)]) == 0
    expected = HeadSpec.load(tmp_path / "heads.json")
    assert given["spec"].heads == expected.heads and len(expected.heads) == 3
    line = cli_error(["view", "--heads", tmp_path / "heads.json", "--heads-data",
                      tmp_path / "rec", "--port", port])
    assert "give --heads or --heads-data, not both" in line
