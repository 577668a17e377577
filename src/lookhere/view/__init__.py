"""``lookhere view``: an interactive viewer of where a VLM looks. `lookhere.view.viewer` is the
model side (UI-free, testable), `lookhere.view.app` the Gradio page over it (gradio is imported
only there), `lookhere.view.examples` the synthetic samples one click away."""

from lookhere.view.examples import example_samples
from lookhere.view.viewer import AnswerView, HeadsBox, MapView, TokenMap, Viewer, ViewError

__all__ = ["AnswerView", "HeadsBox", "MapView", "TokenMap", "ViewError", "Viewer",
           "example_samples"]
