"""The viewer's browser page (Gradio) over `lookhere.view.viewer.Viewer`: layout and event wiring
only. Imported by ``lookhere view`` alone, so gradio loads nowhere else.

Each browser session gets its own `Viewer` (its image, answer and cached forward) over the one
model; a lock lets one request at a time use the model (the probe's hooks are per model). The
page asks nothing of the network: analytics are off, there are no share links and the theme uses
the system's fonts.
"""

# no `from __future__ import annotations`: gradio reads the handlers' annotations (SelectData)

import functools
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported

import gradio as gr  # noqa: E402
from PIL import UnidentifiedImageError  # noqa: E402

from lookhere.data.image import open_rgb  # noqa: E402
from lookhere.data.sample import Sample  # noqa: E402
from lookhere.heads.selection import HeadSpec  # noqa: E402
from lookhere.view.overlay import display_image  # noqa: E402
from lookhere.view.viewer import (  # noqa: E402
    HeadsBox,
    MapView,
    TokenMap,
    Viewer,
    ViewError,
)
from lookhere.viz import draw_geometry  # noqa: E402

#: the largest upload the page accepts (the pixel limit is checked when the image is opened)
MAX_FILE_SIZE = "64mb"
MEAN = "mean"


def build_app(model: Any, processor: Any, adapter: Any, *, model_name: str,
              spec: HeadSpec | None = None, examples: list[Sample] | None = None,
              max_new_tokens: int = 32) -> gr.Blocks:
    """The page: image (upload or a synthetic sample), question and answer, the clicked token's
    attention (layer, head), the logit lens, the localization heads, and downloads."""
    examples = list(examples or [])
    lock = threading.Lock()
    n_layers, n_heads = adapter.num_layers, adapter.num_heads
    downloads = tempfile.TemporaryDirectory(prefix="lookhere-view-")  # removed at exit
    out_dir = Path(downloads.name)

    def viewer_of(state: Viewer | None) -> Viewer:
        return state if state is not None else Viewer(model, processor, adapter, spec=spec,
                                                      max_new_tokens=max_new_tokens)

    def guarded(fn: Any) -> Any:
        """One request at a time on the model; a bad request is an error box, not a trace."""
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with lock:
                try:
                    return fn(*args, **kwargs)
                except (ViewError, ValueError) as err:
                    raise gr.Error(str(err)) from None
        return run

    def shown(view: MapView) -> tuple[Any, str, str, str]:
        """(overlay, caption, PNG path, JSON path) of a map; files under a fresh name each."""
        folder = Path(tempfile.mkdtemp(dir=out_dir))
        stem = view.kind
        png, js = folder / f"{stem}.png", folder / f"{stem}.json"
        view.overlay.save(png, format="PNG")
        js.write_text(json.dumps({"model": model_name, **view.to_json()}))
        return view.overlay, caption(view), str(png), str(js)

    cleared = (None, "", None, None)  # overlay, caption, PNG, JSON

    @guarded
    def pick(state: Viewer | None, evt: gr.SelectData) -> tuple[Any, ...]:
        sample = examples[evt.index]
        viewer = viewer_of(state)
        viewer.set_image(sample.image, sample.geometry)
        return (viewer, display_image(draw_geometry(sample)), sample.question, "",
                gr.update(choices=[], value=None), *cleared)

    @guarded
    def upload(state: Viewer | None, path: str | None) -> tuple[Any, ...]:
        if path is None:
            return (gr.skip(),) * 9
        name = Path(path).name
        try:
            image = open_rgb(path, exif=True)  # the pixel limit, checked before decoding
        except (UnidentifiedImageError, OSError) as err:
            raise gr.Error(f"{name} is not an image PIL can read ({type(err).__name__}); "
                           "upload a PNG, JPEG, WebP, ...") from None
        except ValueError as err:  # over the pixel limit
            raise gr.Error(str(err).replace(path, name)) from None
        viewer = viewer_of(state)
        viewer.set_image(image)
        return (viewer, display_image(image), gr.skip(), "", gr.update(choices=[], value=None),
                *cleared)

    @guarded
    def ask(state: Viewer | None, question: str, layer: str, head: str) -> tuple[Any, ...]:
        viewer = viewer_of(state)
        ans = viewer.answer(None, question)
        if not ans.tokens:
            return (viewer, "(empty answer)", gr.update(choices=[], value=None), *cleared)
        choices = [(t, i) for i, t in enumerate(ans.tokens)]
        last = len(ans.tokens) - 1
        view = viewer.token_map(last, _choice(layer), _choice(head))
        return (viewer, ans.text, gr.update(choices=choices, value=last), *shown(view))

    @guarded
    def token(state: Viewer | None, index: int | None, layer: str, head: str
              ) -> tuple[Any, ...]:
        if state is None or index is None:
            return (gr.skip(),) * 4
        return shown(state.token_map(int(index), _choice(layer), _choice(head)))

    @guarded
    def lens(state: Viewer | None, word: str, layer: str) -> tuple[Any, ...]:
        viewer = viewer_of(state)
        return (viewer, *shown(viewer.lens_map(word, int(layer))))

    @guarded
    def load_heads(state: Viewer | None, path: str | None) -> tuple[Any, str]:
        viewer = viewer_of(state)
        if path is None:
            return viewer, gr.skip()
        try:
            loaded = HeadSpec.load(path)
        except (ValueError, TypeError, KeyError) as err:
            raise gr.Error(f"{Path(path).name} is not a HeadSpec JSON ({err})") from None
        viewer.set_spec(loaded)
        return viewer, spec_status(loaded)

    @guarded
    def heads(state: Viewer | None, expression: str) -> tuple[Any, ...]:
        viewer = viewer_of(state)
        return (viewer, *shown(viewer.heads_box(expression)))

    layer_choices = [MEAN, *map(str, range(n_layers))]
    head_choices = [MEAN, *map(str, range(n_heads))]
    with gr.Blocks(title="lookhere view", analytics_enabled=False) as app:
        state = gr.State(None)
        gr.Markdown(f"## lookhere view: `{model_name}`\n{adapter.family}, {n_layers} language "
                    f"layers x {n_heads} heads. Pick a sample (its target in magenta) or upload an "
                    "image, ask, then click an answer token.")
        with gr.Row():
            with gr.Column(scale=6, min_width=560):
                gallery = gr.Gallery(
                    [(s.image, s.id) for s in examples], label="synthetic samples (click one)",
                    columns=5, height=252, allow_preview=False, interactive=False,
                    buttons=[], elem_id="samples", visible=bool(examples))
                with gr.Row():
                    image = gr.Image(label="image", type="pil", interactive=False, height=240,
                                     buttons=["fullscreen"], elem_id="image", scale=2)
                    upload_btn = gr.UploadButton("Upload an image", file_types=["image"],
                                                 elem_id="upload", scale=1)
                question = gr.Textbox(label="question", elem_id="question")
                ask_btn = gr.Button("Ask", variant="primary", elem_id="ask")
                answer = gr.Textbox(label="answer (greedy)", interactive=False, elem_id="answer")
                tokens = gr.Radio([], label="answer tokens (click one)", type="value",
                                  elem_id="tokens")
            with gr.Column(scale=5):
                overlay = gr.Image(label="overlay", type="pil", format="png", interactive=False,
                                   height=384, buttons=["download", "fullscreen"],
                                   elem_id="overlay")
                info = gr.Markdown(elem_id="info")
                with gr.Row():
                    layer = gr.Dropdown(layer_choices, value=MEAN, label="token map: layer",
                                        elem_id="layer")
                    head = gr.Dropdown(head_choices, value=MEAN, label="head", elem_id="head")
                with gr.Row():
                    png = gr.DownloadButton("overlay PNG", elem_id="png", size="sm")
                    js = gr.DownloadButton("maps JSON", elem_id="json", size="sm")
                with gr.Tab("logit lens"):
                    with gr.Row():
                        word = gr.Textbox(label="word", elem_id="word")
                        lens_layer = gr.Dropdown(list(map(str, range(n_layers))),
                                                 value=str(n_layers - 1), label="layer",
                                                 elem_id="lens-layer")
                    lens_btn = gr.Button("Lens map", elem_id="lens")
                with gr.Tab("localization heads"):
                    spec_box = gr.Markdown(spec_status(spec), elem_id="spec")
                    spec_btn = gr.UploadButton("Load a HeadSpec JSON", file_types=[".json"],
                                               elem_id="spec-upload", size="sm")
                    expression = gr.Textbox(label="referring expression", elem_id="expression")
                    heads_btn = gr.Button("Heads box", elem_id="heads")
        shown_out = [overlay, info, png, js]
        fresh = [state, image, question, answer, tokens, *shown_out]
        gallery.select(pick, [state], fresh)
        upload_btn.upload(upload, [state, upload_btn], fresh)
        for trigger in (ask_btn.click, question.submit):
            trigger(ask, [state, question, layer, head], [state, answer, tokens, *shown_out])
        for trigger in (tokens.input, layer.input, head.input):
            trigger(token, [state, tokens, layer, head], shown_out)
        for trigger in (lens_btn.click, word.submit):
            trigger(lens, [state, word, lens_layer], [state, *shown_out])
        spec_btn.upload(load_heads, [state, spec_btn], [state, spec_box])
        for trigger in (heads_btn.click, expression.submit):
            trigger(heads, [state, expression], [state, *shown_out])
    app.downloads = downloads  # lives as long as the page
    return app


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int = 7860,
           block: bool = True) -> str:
    """Serve ``app`` on ``host:port`` (no share link, no browser opened); the page's URL.
    ``block=False`` returns at once (tests), the server running in a thread."""
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])
    app.queue(default_concurrency_limit=1)
    _, url, _ = app.launch(server_name=host, server_port=port, share=False, inbrowser=False,
                           prevent_thread_lock=True, show_error=True, quiet=True,
                           max_file_size=MAX_FILE_SIZE, ssr_mode=False, theme=theme,
                           footer_links=[])
    if block:
        app.block_thread()
    return url


def caption(view: MapView) -> str:
    """The map's title, and for a token its attention ratio and image share, for the heads
    their box."""
    text = f"**{view.title}**"
    if isinstance(view, HeadsBox):
        text += "  \nbox (x0, y0, x1, y1): " + ", ".join(f"{v:.1f}" for v in view.box) + " px"
    if isinstance(view, TokenMap):
        ratio = "n/a (no target: pick a sample)" if view.ratio is None else f"{view.ratio:.2f}"
        text += (f"  \nattention ratio on the target: {ratio}; attention on the image: "
                 f"{view.image_share:.1%} of the row")
    return text


def spec_status(spec: HeadSpec | None) -> str:
    if spec is None:
        return "No HeadSpec loaded: load one from `lookhere heads find` (or start with --heads)."
    return f"HeadSpec of `{spec.model}`: heads {[list(h) for h in spec.heads]}"


def _choice(text: str | None) -> int | None:
    """A layer or head dropdown's value: None for the mean."""
    return None if text in (None, MEAN) else int(text)
