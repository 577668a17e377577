"""``lookhere lens`` end to end on a saved tiny LLaVA: the maps it writes for one image and for a
dataset folder equal the logit lens computed here from ``output_hidden_states`` in float64 (the
final norm and the LM head applied by hand, the probabilities reshaped to the grid), the overlay
and mask PNGs are there, and bad input exits 2 with one line, before anything is written."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from lookhere.cli import main
from lookhere.data.concepts import concept_ids, sample_concepts
from lookhere.data.disk import read_samples
from lookhere.lens import LensMapSet, lens_file
from lookhere.maps import segment
from lookhere.models import build_tiny
from lookhere.models.loading import load_model
from lookhere.models.tiny import save_tiny

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A saved 2-layer tiny LLaVA (loaded back), a Shapes folder and a Grid Patch folder (whose
    samples carry no concept words)."""
    root = tmp_path_factory.mktemp("cli_lens")
    save_tiny(*build_tiny("llava", size="test", seed=0), root / "model")
    grid = ["--set", "grid_rows=4", "--set", "grid_cols=4"]
    for name, task, extra in [("shapes", "shapes", []), ("grid", "grid_patch", grid)]:
        assert main(["data", "make", task, "--n", "3", "--out", str(root / name),
                     "--set", "image_size=112", *extra]) == 0
    return root, load_model(str(root / "model"))


def reference(model, processor, image, prompt, word_id, layer):
    """``p(word | h)`` of every visual token at the output of decoder layer ``layer``, as a
    (rows, cols) float64 array: HF's hidden states, then the final norm and the LM head in
    float64, then a softmax; visual tokens from the image token id, in row-major grid order
    on LLaVA's (image size / patch size)^2 grid."""
    batch = processor(text=[prompt], images=[image], return_tensors="pt")
    lm_config = model.model.language_model.config
    lm_config.tie_last_hidden_states = False  # hidden_states[-1]: the final norm's input
    try:
        with torch.no_grad():
            out = model(**batch, output_hidden_states=True)
    finally:
        del lm_config.tie_last_hidden_states
    visual = batch["input_ids"][0] == model.config.image_token_index  # (L,)
    h = out.hidden_states[layer + 1][0, visual].double()  # (K, D); [0] is the embeddings
    norm = copy.deepcopy(model.model.language_model.norm).double()
    head = copy.deepcopy(model.lm_head).double()
    with torch.no_grad():
        p = torch.softmax(head(norm(h)), dim=-1)[:, word_id]  # (K,)
    vision = model.config.vision_config
    side = vision.image_size // vision.patch_size  # LLaVA: one square grid, row-major tokens
    return p.reshape(side, side).numpy()


def check_maps(saved, model, processor, images):
    """Every map in ``saved`` equals `reference`; ``images``: name -> PIL image."""
    tok = processor.tokenizer
    for m in saved.maps:
        assert saved.ids[m.word] == concept_ids(tok, m.word, saved.rule)
        want = reference(model, processor, images[m.image], saved.prompt, saved.ids[m.word][0],
                         m.layer)
        assert m.grid == list(want.shape)
        np.testing.assert_allclose(np.array(m.probs), want, rtol=1e-4, atol=1e-7)


def test_one_image(env, tmp_path, capsys):
    root, (model, processor, adapter) = env
    image_path = root / "shapes" / "images" / "0000001.png"
    out = tmp_path / "out"
    assert main(["lens", "--model", str(root / "model"), "--image", str(image_path),
                 "--question", "Where is the circle?", "--words", "circle", "red",
                 "--layers", "0", "-1", "--masks", "--out", str(out)]) == 0
    assert "wrote 4 maps" in capsys.readouterr().out
    saved = LensMapSet.load(out / "maps.json")
    assert saved.model == str(root / "model") and saved.rule == "first"
    assert "Where is the circle?" in saved.prompt and saved.layers == [0, 1]
    assert [(m.image, m.word, m.layer) for m in saved.maps] == [
        ("0000001", w, layer) for w in ("circle", "red") for layer in (0, 1)]
    image = Image.open(image_path).convert("RGB")
    check_maps(saved, model, processor, {"0000001": image})
    # the maps differ across layers and words: the comparison above is not of constants
    assert len({tuple(np.ravel(m.probs)) for m in saved.maps}) == 4
    from lookhere.lens import lens_maps

    geometry = lens_maps(model, processor, adapter, [image], ["circle"], [0]).geometries[0][0]
    for m in saved.maps:
        overlay = Image.open(out / "overlays" / lens_file(m.image, m.word, m.layer))
        assert overlay.format == "PNG" and min(overlay.size) > 100
        mask = np.asarray(Image.open(out / "masks" / lens_file(m.image, m.word, m.layer)))
        assert mask.shape == (112, 112) and set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask == 255,
                                      segment(np.array(m.probs), geometry).pixel_mask)
    assert not [p for p in out.rglob(".*")], "temporary files left"


def test_folder_with_each_samples_words(env, tmp_path):
    root, (model, processor, _) = env
    out = tmp_path / "out"
    assert main(["lens", "--model", str(root / "model"), "--data", str(root / "shapes"),
                 "--limit", "2", "--batch-size", "1", "--quiet", "--out", str(out)]) == 0
    saved = LensMapSet.load(out / "maps.json")
    samples = list(read_samples(root / "shapes"))[:2]
    want = [(s.id, w, 1) for s in samples
            for w in dict.fromkeys(w for w, _ in sample_concepts(s))]
    assert [(m.image, m.word, m.layer) for m in saved.maps] == want and len(want) > 4
    assert not (out / "masks").exists()
    assert len(list((out / "overlays").rglob("*.png"))) == len(want)
    check_maps(saved, model, processor, {s.id: s.image for s in samples})


def test_folder_with_given_words(env, tmp_path, capsys):
    """--words on every sample, also on a folder without concept words; a word of several
    tokens is read at its first token, as the lens does, with a note saying so."""
    root, (model, processor, _) = env
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["lens", "--model", str(root / "model"), "--data", str(root / "grid"),
                 "--words", "zzqx", "  circle ", "--layers", "-2", "--out", str(out)]) == 0
    assert "note: 'zzqx' is 4 tokens" in capsys.readouterr().err
    saved = LensMapSet.load(out / "maps.json")
    samples = list(read_samples(root / "grid"))
    assert [(m.image, m.word) for m in saved.maps] == [
        (s.id, w) for s in samples for w in ("zzqx", "circle")]
    check_maps(saved, model, processor, {s.id: s.image for s in samples})
    assert main(["lens", "--model", str(root / "model"), "--data", str(root / "grid"),
                 "--words", "red", "--out", str(out), "--overwrite"]) == 0
    assert {m.word for m in LensMapSet.load(out / "maps.json").maps} == {"red"}


BAD = [
    (["--image", "{R}/shapes/images/0000000.png", "--words", "<image>"],
     "--words: concept '<image>' encodes to special token"),
    (["--image", "{R}/shapes/images/0000000.png", "--words", " "],
     "--words: concept must be a non-empty word"),
    (["--image", "{R}/shapes/images/0000000.png", "--words", "red", "--layers", "2"],
     "--layers: 2 is not a layer of this 2-layer language model (valid: -2..1)"),
    (["--image", "{R}/nope.png", "--words", "red"], "--image {R}/nope.png: "),
    (["--image", "{R}/shapes/lookhere.json", "--words", "red"], "--image {R}/shapes/lookhere.j"),
    (["--image", "{R}/shapes/images/0000000.png"], "--image needs --words"),
    (["--image", "{R}/shapes/images/0000000.png", "--words", "red", "--limit", "1"],
     "--limit only applies with --data"),
    (["--data", "{R}/grid"], "--data: sample 'grid_patch-s0-0000000' (3 in all) has no concept"),
    (["--data", "{R}/nope"], "--data {R}/nope is not a folder"),
    (["--data", "{R}/shapes", "--masks", "--threshold", "high"], "--threshold: threshold must"),
    (["--data", "{R}/shapes", "--out", "{R}/shapes"],
     "--out {R}/shapes exists and is not empty; pass --overwrite"),
    (["--data", "{R}/shapes", "--out", "{R}/shapes/lookhere.json"],
     "--out {R}/shapes/lookhere.json is a file; give a folder"),
    (["--data", "{R}/shapes", "--out", "/proc/nowhere/lens"],
     "--out /proc/nowhere/lens: cannot create its folder"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[m[:24] for _, m in BAD])
def test_bad_input(env, tmp_path, cli_error, args, message):
    root = env[0]
    args = [a.replace("{R}", str(root)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    line = cli_error(["lens", "--model", root / "model", *args])
    assert line.startswith("lookhere lens: error: ") and message.replace("{R}", str(root)) in line
    assert not (tmp_path / "out").exists()
