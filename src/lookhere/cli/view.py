"""``lookhere view``: a local web page over a model: ask about an image, click an answer token to
see where it looks (any layer, any head), read the logit lens of any word, and ground an
expression with localization heads.

The page is served on --host:--port (127.0.0.1 by default: this machine only) until Ctrl-C; no
share link is made, no browser is opened, analytics are off. Needs the ``view`` extra
(``pip install 'lookhere[view]'``: gradio).
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import socket
from pathlib import Path

from lookhere.cli.common import (
    add_device,
    fail,
    load_model_for_cli,
    load_spec,
    positive_int,
    read_data,
)

PROG = "lookhere view"

#: the commands this module adds, with their one-line help (`lookhere --help`)
COMMANDS = {"view": "a local web page: answers, attention per token, logit lens, heads"}


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("view", help=COMMANDS["view"], description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lookhere:llava-mini", metavar="PATH",
                   help="model folder, hub name or shipped name (default lookhere:llava-mini)")
    p.add_argument("--heads", type=Path, metavar="FILE",
                   help="a HeadSpec JSON (`lookhere heads find`) for the heads' boxes; the page "
                        "can also load one")
    p.add_argument("--heads-data", type=Path, metavar="FOLDER",
                   help="instead of --heads: find the localization heads on this REC dataset "
                        "folder at start (`lookhere heads find`'s defaults; --heads-limit "
                        "samples)")
    p.add_argument("--heads-limit", type=positive_int, default=64, metavar="N",
                   help="samples of --heads-data the search reads (default 64)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1; 0.0.0.0 opens it to the "
                        "network, with no login)")
    p.add_argument("--port", type=_port, default=7860, help="port (default 7860)")
    p.add_argument("--max-new-tokens", type=positive_int, default=32, metavar="N",
                   help="answer length cap (default 32)")
    p.add_argument("--sample-size", type=positive_int, metavar="PX",
                   help="side of the synthetic samples (default: the model's input size)")
    add_device(p)
    p.set_defaults(run=_view)


def _view(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("gradio") is None:
        raise fail("gradio is not installed: pip install 'lookhere[view]'", PROG)
    if args.sample_size is not None and args.sample_size < 32:
        raise fail(f"--sample-size must be >= 32, got {args.sample_size}", PROG)
    if args.heads is not None and args.heads_data is not None:
        raise fail("give --heads or --heads-data, not both", PROG)
    check_port(args.host, args.port)
    samples = None if args.heads_data is None else read_data(args.heads_data, args.heads_limit,
                                                                 PROG)
    model, processor, adapter = load_model_for_cli(args.model, args.device, PROG)
    spec = None if args.heads is None else load_spec(args.heads, adapter, PROG)
    if samples is not None:
        spec = _find_heads(model, processor, adapter, samples, args.model)

    from lookhere.view.app import build_app, launch
    from lookhere.view.examples import example_samples, model_image_size

    size = args.sample_size or model_image_size(processor)
    app = build_app(model, processor, adapter, model_name=args.model, spec=spec,
                    examples=example_samples(size), max_new_tokens=args.max_new_tokens)
    print(f"lookhere view: {args.model} on http://{args.host}:{args.port} (Ctrl-C stops)",
          flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` closes the server as Ctrl-C does
    launch(app, args.host, args.port)
    return 0


def _find_heads(model: object, processor: object, adapter: object, samples: list,
                model_id: str) -> object:
    """The HeadSpec of `heads.search.find_heads` (the paper's defaults) on ``samples``."""
    from lookhere.heads.search import find_heads

    try:
        spec = find_heads(model, processor, adapter, samples, model_id=model_id)
    except ValueError as err:  # e.g. too few layers left after skip_layers
        raise fail(f"--heads-data: {err}", PROG) from None
    print(f"lookhere view: heads {spec.heads} found on {len(samples)} samples", flush=True)
    return spec


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def check_port(host: str, port: int) -> None:
    """Exit 2 before the model loads when ``host:port`` cannot be served (in use, no such
    address)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
    except OSError as err:
        raise fail(f"--host {host} --port {port}: cannot serve there ({err.strerror or err})",
                   PROG) from None


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port in 1-65535, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 1-65535, got {value}")
    return value
