"""The shipped pretrained miniature (`lookhere:llava-mini`): its folder holds what its card
says (sha256, size within the package's 16 MiB), it loads offline, and it regenerates the
example answers its stored evaluation (eval.json, `lookhere pretrain eval`) recorded, so the
card's numbers come from these weights."""

import json

import pytest

from lookhere.eval.runner import generate_answers
from lookhere.experiment.heads import TEST_SEED_OFFSET
from lookhere.experiment.model_card import MAX_BYTES, sha256
from lookhere.experiment.pretrained import (
    BOX_TOKENS,
    SCENES_SKILLS,
    SHAPES_TYPES,
    WORD_TOKENS,
    scenes_split,
    shapes_split,
)
from lookhere.models import load_pretrained
from lookhere.models.adapter import get_adapter
from lookhere.models.pretrained import SHIPPED, WEIGHTS

FOLDER = WEIGHTS / "llava-mini"
pytestmark = pytest.mark.usefixtures("one_thread")
EVALUATION = json.loads((FOLDER / "eval.json").read_text())  # a missing file fails collection


def test_folder_matches_its_card():
    weights = FOLDER / "model.safetensors"
    card = (FOLDER / "README.md").read_text()
    assert weights.stat().st_size <= MAX_BYTES
    assert f"sha256 `{sha256(weights)}`" in card
    model, processor = load_pretrained("llava-mini")
    assert type(model).__name__ == "LlavaForConditionalGeneration" and not model.training
    assert get_adapter(model).family == "llava"


@pytest.fixture(scope="module")
def shipped():
    model, processor = load_pretrained("llava-mini")
    return model, processor


@pytest.mark.slow
@pytest.mark.parametrize("group", [*SHAPES_TYPES, *SCENES_SKILLS])
def test_regenerates_stored_answers(shipped, group):
    """The first examples of each question type, rebuilt from their seed and generated again
    (greedy) in the same first batch as the evaluation's, give the answers eval.json stored."""
    model, processor = shipped
    vision = model.config.vision_config
    seed = EVALUATION["config"]["seed"] + TEST_SEED_OFFSET
    stored = EVALUATION["vqa" if group in SHAPES_TYPES else "skills"][group]["examples"]
    n = EVALUATION["config"]["batch_size"]  # the whole first batch: the same padding
    if group in SHAPES_TYPES:
        samples = shapes_split("vqa", vision.image_size, seed, n, vqa_types=(group,))
    else:
        samples = scenes_split(group, vision.image_size, vision.patch_size, seed, n)
    budget = BOX_TOKENS if group in ("find_marker", "point") else WORD_TOKENS
    answers = generate_answers(model, processor, get_adapter(model), samples, batch_size=n,
                               max_new_tokens=budget, progress=False)
    assert {s.id: [s.question, s.answer, answers[s.id]] for s in samples[:len(stored)]} == stored


@pytest.mark.parametrize("name", SHIPPED)
def test_shape_read_without_transformers_is_transformers_shape(name):
    """A shipped checkpoint's shape comes from its config.json and `SHIPPED`'s family, without
    transformers (so the demo's config builds for `lookhere demo --help`): every value equals
    what AutoConfig and the adapters read, including the defaults AutoConfig fills in."""
    from lookhere.experiment.config import _config_shape, checkpoint_shape

    fast = checkpoint_shape.__wrapped__(f"lookhere:{name}")
    assert fast == _config_shape(str(WEIGHTS / name))
    assert fast.family == SHIPPED[name] and fast.layers > 2


def test_unknown_shipped_name_is_refused_as_init():
    from lookhere.experiment.config import checkpoint_shape

    with pytest.raises(ValueError, match="init 'lookhere:nope'.*unknown shipped checkpoint"):
        checkpoint_shape("lookhere:nope")
