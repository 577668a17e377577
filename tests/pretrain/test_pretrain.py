"""The pretraining recipe on the "test" size: stages, what each trains, resume, the config pin,
next-token prediction only, the CLI's errors and the model card."""

import dataclasses
import json

import pytest
import torch

import lookhere.train.objective as objective
from lookhere.cli import main
from lookhere.collate import AUX_PREFIX, GroundingCollator
from lookhere.data.synthetic import make_task
from lookhere.models import build_tiny, get_adapter
from lookhere.pretrain.conversation import ConversationCollator
from lookhere.pretrain.recipe import (
    STAGES,
    PretrainConfig,
    StageConfig,
    load_stage_model,
    run,
    stage_dataset,
)
from lookhere.pretrain.vision import DensePatchCollator, DensePatchObjective

CFG = PretrainConfig(size="test", vision=StageConfig(3, 1e-3, 2), align=StageConfig(3, 1e-3, 2),
                     instruct=StageConfig(3, 1e-3, 2), save_steps=2, tower_stages=("align",),
                     projector_init="random",  # the "test" LM is narrower than the heads' logits
                     attribute_layer=-1)  # and its tower has one layer


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    records = run(CFG, out, progress=False)
    return out, records


def _params(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_stages_train_what_they_should(finished):
    out, records = finished
    assert [r.stage for r in records] == list(STAGES)
    init, _ = build_tiny("llava", "test", seed=0)
    models = {s: load_stage_model(out / s / "final")[0] for s in STAGES}
    tower = {s: _params(m.model.vision_tower) for s, m in models.items()}
    proj = {s: _params(m.model.multi_modal_projector) for s, m in models.items()}
    lm = {s: _params(m.model.language_model) for s, m in models.items()}
    init_tower = _params(init.model.vision_tower)
    # vision: the tower moves, nothing else does
    assert any(not torch.equal(tower["vision"][k], init_tower[k]) for k in init_tower)
    assert all(torch.equal(proj["vision"][k], v)
               for k, v in _params(init.model.multi_modal_projector).items())
    # align and instruct: projector and language model move; the tower in align only here
    assert CFG.tower_stages == ("align",)
    assert any(not torch.equal(tower["align"][k], tower["vision"][k]) for k in init_tower)
    assert all(torch.equal(tower["instruct"][k], tower["align"][k]) for k in init_tower)
    for prev, stage in (("vision", "align"), ("align", "instruct")):
        assert any(not torch.equal(proj[stage][k], proj[prev][k]) for k in proj[prev])
        assert any(not torch.equal(lm[stage][k], lm[prev][k]) for k in lm[prev])


def test_rerun_skips_finished_stages_and_pins_settings(finished):
    out, _ = finished
    assert run(CFG, out, progress=False) == []
    with pytest.raises(ValueError, match="other settings"):
        run(dataclasses.replace(CFG, seed=1), out, progress=False)


@pytest.mark.slow
def test_resumes_from_last_checkpoint(finished, tmp_path, monkeypatch):
    """Killed after checkpoint-2, the rerun trains only step 3 and logs what an uninterrupted
    run logs (the data are a function of the index; the Trainer restores its RNG states)."""
    import transformers

    calls = {"n": 0}
    step = transformers.Trainer.training_step

    def dies_at_step_3(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed after checkpoint-2 was written
        return step(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run(CFG, tmp_path, stages=["vision"], progress=False)
    assert not (tmp_path / "vision" / "final").exists()
    monkeypatch.setattr(transformers.Trainer, "training_step", step)
    (record,) = run(CFG, tmp_path, stages=["vision"], progress=False)
    assert record.resumed_from is not None and record.resumed_from.endswith("checkpoint-2")
    assert [r["step"] for r in record.log] == [1, 2, 3]  # the history survives the kill
    uninterrupted = finished[1][0].log
    assert record.log[-1]["loss"] == pytest.approx(uninterrupted[-1]["loss"], rel=1e-5)
    assert (tmp_path / "vision" / "final" / "model.safetensors").is_file()


def test_later_stage_needs_the_earlier_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the earlier stages first"):
        run(CFG, tmp_path, stages=["align"], progress=False)


@pytest.mark.slow
def test_next_token_prediction_only(tmp_path, monkeypatch):
    """No KLAL or LLL term can enter pretraining: their entry points fail if called, and the
    batches carry no lookhere_ entries (targets, regions) to compute them from."""
    def forbidden(*args, **kwargs):
        raise AssertionError("an auxiliary loss was computed in pretraining")

    for name in ("klal_term", "lll_term", "klal_probe", "lll_capture"):
        monkeypatch.setattr(objective, name, forbidden)
    run(dataclasses.replace(CFG, instruct=StageConfig(1, 1e-3, 2)), tmp_path, progress=False)
    model, processor = build_tiny("llava", "test")
    collate = ConversationCollator(processor, get_adapter(model))
    data = stage_dataset(dataclasses.replace(CFG, turns=3), "instruct")
    batch = collate([data[0], data[1]])
    assert not [k for k in batch if k.startswith(AUX_PREFIX)]
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values", "labels"}


def test_single_turns_collate_as_the_grounding_collator():
    """A one-question sample becomes exactly `GroundingCollator`'s inputs and labels (the
    collator every fine-tune uses), so pretraining and fine-tuning see one prompt format."""
    model, processor = build_tiny("llava", "test")
    adapter = get_adapter(model)
    data = stage_dataset(dataclasses.replace(CFG, turns=1), "instruct")
    samples = [data[i] for i in range(4)]
    assert all(len(s.meta["turns"]) == 1 for s in samples)
    ours = ConversationCollator(processor, adapter)(samples)
    ref = GroundingCollator(processor, adapter, targets=False)(samples)
    for key in ("input_ids", "attention_mask", "labels", "pixel_values"):
        assert torch.equal(ours[key], ref[key]), key


def test_every_turn_is_labelled_and_only_the_answers():
    """Multi-turn conversations: the labelled tokens decode to exactly the answers and their
    ends, turn by turn; the questions and the image are never labelled."""
    model, processor = build_tiny("llava", "test")
    tok = processor.tokenizer
    data = stage_dataset(dataclasses.replace(CFG, turns=4), "instruct")
    samples = [data[i] for i in range(6)]
    assert any(len(s.meta["turns"]) > 1 for s in samples)
    batch = ConversationCollator(processor, get_adapter(model))(samples)
    for b, s in enumerate(samples):
        labels = batch["labels"][b]
        runs, cur = [], []
        for t, lab in zip(batch["input_ids"][b].tolist(), labels.tolist(), strict=True):
            if lab == -100:
                if cur:
                    runs.append(cur)
                cur = []
            else:
                assert lab == t
                cur.append(t)
        runs += [cur] if cur else []
        want = [f" {t['answer']}</s>" for t in s.meta["turns"]]
        assert [tok.decode(r) for r in runs] == want
        text = tok.decode(batch["input_ids"][b][batch["attention_mask"][b].bool()])
        for t in s.meta["turns"]:
            assert f"USER: \n{t['question']} ASSISTANT: {t['answer']}</s>" in text \
                or f"{t['question']} ASSISTANT: {t['answer']}</s>" in text


def test_stage_data_are_disjoint_and_on_the_fly():
    ids = {s: {stage_dataset(CFG, s)[i].id for i in range(5)} for s in STAGES}
    assert not (ids["vision"] & ids["align"]) and not (ids["align"] & ids["instruct"])
    assert len(stage_dataset(CFG, "instruct")) == 3 * 2


@pytest.mark.parametrize("box_weight", [1.0, 0.25, 0.0])
def test_dense_loss_weighs_the_box_maps(box_weight):
    """The vision stage's loss is each map's cross-entropy, recomputed here in float64 from the
    heads' logits, the four box-edge maps times ``box_weight`` and the others times 1."""
    model, processor = build_tiny("llava", "test", seed=0)
    tower = model.model.vision_tower
    side = tower.config.image_size // tower.config.patch_size
    torch.manual_seed(0)
    obj = DensePatchObjective(tower, tower.config.hidden_size, box_weight).eval()
    task = make_task("scenes", seed=0, mode="vision", image_size=tower.config.image_size,
                     patch_size=tower.config.patch_size)
    batch = DensePatchCollator(processor.image_processor, side * side)([task.sample(i)
                                                                       for i in range(2)])
    with torch.no_grad():
        got = obj(**batch)["loss"]
        feats = tower(batch["pixel_values"], output_hidden_states=True).hidden_states[-1][:, 1:]
        want = torch.zeros((), dtype=torch.float64)
        for name, head in obj.heads.items():
            logp = head(feats).double().log_softmax(-1)  # (B, K, classes)
            gold = batch[f"labels_{name}"]
            ce = -logp.gather(-1, gold[..., None]).mean()
            want += (box_weight if name.startswith("box_") else 1.0) * ce
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert sum(name.startswith("box_") for name in obj.heads) == 4


def test_config_errors():
    with pytest.raises(ValueError, match="steps"):
        StageConfig(0, 1e-3)
    with pytest.raises(ValueError, match="lr"):
        StageConfig(10, float("nan"))
    with pytest.raises(ValueError, match="size"):
        PretrainConfig(size="huge")
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="box_weight"):
            PretrainConfig(box_weight=bad)
    with pytest.raises(ValueError, match="tower_stages must be among"):
        PretrainConfig(tower_stages=("vision",))
    assert PretrainConfig(tower_stages=("none",)).tower_stages == ()
    with pytest.raises(ValueError, match="unknown PretrainConfig fields"):
        PretrainConfig.from_json({"sizes": "mini"})
    assert PretrainConfig.from_json(json.loads(json.dumps(CFG.to_json()))) == CFG


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "train", "--out", str(tmp_path / "r"), "--size", "test",
              "--vision-steps", "0"])
    assert e.value.code == 2 and "steps must be an int >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "train", "--out", str(tmp_path / "r"), "--stages", "instruct",
              "--size", "test"])
    assert e.value.code == 2 and "attribute_layer must be" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "train", "--out", str(tmp_path / "r"), "--stages", "instruct",
              "--size", "test", "--attribute-layer", "-1"])
    assert e.value.code == 2 and "needs a language model of" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "train", "--out", str(tmp_path / "r"), "--stages", "instruct",
              "--size", "test", "--projector-init", "random", "--attribute-layer", "-1"])
    assert e.value.code == 2 and "earlier stages" in capsys.readouterr().err
    existing = tmp_path / "e.json"
    existing.write_text("{}")
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "eval", "--model", "x", "--out", str(existing)])
    assert e.value.code == 2 and "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "card", "--run", str(tmp_path), "--eval", str(existing), "--out",
              str(tmp_path / "card")])
    assert e.value.code == 2 and "not a `pretrain eval` result" in capsys.readouterr().err


def test_model_card(finished, tmp_path):
    from lookhere.experiment.model_card import sha256, write_card
    from lookhere.experiment.pretrained import PretrainedEval, PretrainedEvalConfig

    out, _ = finished
    stored = {"config": dataclasses.asdict(PretrainedEvalConfig()), "model": "m",
              "vqa": {"colour": {"n": 4, "accuracy": 0.5, "ci95": [0.1, 0.9],
                                 "parse_failure_rate": 0.0, "missing": 0,
                                 "examples": {"s0": ["Q?", "red", "red"]}}},
              "skills": {}, "heads": {"heads": [[2, 1]], "settings": {}},
              "rec": {"n": 4, "methods": {"heads": {"n": 4, "acc@0.5": 0.25, "mean_iou": 0.3,
                                                    "pointing": 0.5, "mIoU": 0.2}}}}
    evaluation = PretrainedEval.from_json(stored)
    assert evaluation.to_json() == stored
    card = write_card(out, evaluation, tmp_path / "card", command="CMD", machine="M")
    text = (card / "README.md").read_text()
    digest = sha256(card / "model.safetensors")
    assert digest == sha256(out / "instruct" / "final" / "model.safetensors")
    assert digest in text and "CMD" in text and "| colour | 4 | 50.0 |" in text
    assert "its box; tower trained)" in text and "skill mix; tower frozen)" in text
    assert '"tower_stages": ["align"]' in text
    assert "tower layer -1, the box" in text and "projector_init='random'" in text
    assert "| heads | 25.0 | 50.0 | 20.0 | 30.0 |" in text
    from lookhere.experiment.model_card import render_card

    recipe = json.loads((out / "config.json").read_text())
    records = {"vision": {"seconds": 6.0, "log": [], "resumed_from": "r/vision/checkpoint-3"}}
    resumed = render_card(recipe, records, evaluation, "d", 1, None, None)
    assert "| vision | 3 | 2 | 0.001 | 0.1 (resumed from checkpoint-3) | - |" in resumed
    assert json.loads((card / "eval.json").read_text()) == stored
    # package data: every file readable by all (a model save can leave 0600 files)
    assert all(f.stat().st_mode & 0o444 == 0o444 for f in card.iterdir())
    with pytest.raises(ValueError, match="not empty"):
        write_card(out, evaluation, tmp_path / "card")
    with pytest.raises(ValueError, match="has not finished"):
        write_card(tmp_path, evaluation, tmp_path / "card2")


@pytest.mark.distributed
def test_torchrun_two_processes(tmp_path):
    """The same command under torchrun (2 CPU processes, gloo, DDP): every stage finishes and
    each process drew its own samples (the dataset is sized for the world)."""
    from conftest import torchrun

    out = tmp_path / "run"
    torchrun(["-m", "lookhere.cli", "pretrain", "train", "--out", out, "--size", "test",
              "--projector-init", "random", "--attribute-layer", "-1", "--vision-steps", "2",
              "--align-steps", "2",
              "--instruct-steps", "2",
              "--vision-batch-size", "2", "--align-batch-size", "2",
              "--instruct-batch-size", "2", "--quiet"])
    for stage in STAGES:
        assert (out / stage / "final" / "model.safetensors").is_file()
        record = json.loads((out / stage / "record.json").read_text())
        assert [r["step"] for r in record["log"]] == [1, 2]


@pytest.mark.slow
def test_bf16_mixed_precision(tmp_path):
    """--bf16 (a GPU's setting) runs through the same Trainer path; here on CPU autocast."""
    cfg = dataclasses.replace(CFG, bf16=True, vision=StageConfig(2, 1e-3, 2),
                              align=StageConfig(2, 1e-3, 2), instruct=StageConfig(2, 1e-3, 2))
    records = run(cfg, tmp_path, progress=False)
    assert all(torch.isfinite(torch.tensor(r.log[-1]["loss"])) for r in records)
    model, _ = load_stage_model(tmp_path / "instruct" / "final")
    assert next(model.parameters()).dtype == torch.float32  # weights stay fp32 (mixed precision)


def test_tower_learns_at_its_own_rate(tmp_path):
    """tower_lr_scale: the tower's parameters sit in an AdamW group of their own at the scaled
    rate, and the Trainer's schedule keeps the ratio through training."""
    from lookhere.pretrain.recipe import ntp_trainer, training_args

    config = dataclasses.replace(CFG, tower_stages=("align", "instruct"), tower_lr_scale=0.1)
    model, processor = build_tiny("llava", "test", seed=0)
    args = training_args(config, "align", tmp_path, progress=False)
    trainer = ntp_trainer(model, processor, stage_dataset(config, "align"), args, tower=True,
                          tower_lr_scale=config.tower_lr_scale)
    rest, tower = trainer.optimizer.param_groups
    in_tower = {id(p) for p in model.model.vision_tower.parameters()}
    assert {id(p) for p in tower["params"]} == in_tower
    assert len(rest["params"]) + len(tower["params"]) == len(list(model.parameters()))
    trainer.train()
    assert tower["lr"] == pytest.approx(0.1 * rest["lr"]) and rest["lr"] > 0
    with pytest.raises(ValueError, match="tower_lr_scale"):
        PretrainConfig(tower_lr_scale=0.0)


def test_attribute_maps_read_their_own_layer():
    """attribute_layer: colour, shape, size and glyph are predicted from that tower layer, the
    box maps from the last; recomputed in float64 from the hidden states."""
    model, processor = build_tiny("llava", "heads", seed=0)  # a 2-layer tower
    tower = model.model.vision_tower
    side = tower.config.image_size // tower.config.patch_size
    torch.manual_seed(0)
    obj = DensePatchObjective(tower, tower.config.hidden_size, 1.0, attribute_layer=-2).eval()
    task = make_task("scenes", seed=0, mode="vision", image_size=tower.config.image_size,
                     patch_size=tower.config.patch_size)
    batch = DensePatchCollator(processor.image_processor, side * side)([task.sample(i)
                                                                       for i in range(2)])
    with torch.no_grad():
        got = obj(**batch)
        hidden = tower(batch["pixel_values"], output_hidden_states=True).hidden_states
        for name, head in obj.heads.items():
            feats = hidden[-1 if name.startswith("box_") else -2][:, 1:]  # (B, K, D)
            logp = head(feats).double().log_softmax(-1)
            want = -logp.gather(-1, batch[f"labels_{name}"][..., None]).mean()
            assert got[f"{name}_loss"].item() == pytest.approx(want.item(), rel=1e-5)
            # and not from the other layer (the two layers differ)
            other = hidden[-2 if name.startswith("box_") else -1][:, 1:]
            wrong = -head(other).double().log_softmax(-1).gather(
                -1, batch[f"labels_{name}"][..., None]).mean()
            assert got[f"{name}_loss"].item() != pytest.approx(wrong.item(), rel=1e-5)


def test_language_model_reads_both_layers(tmp_path):
    """With attribute_layer below -1 the vision stage's model reads [attribute_layer, -1]
    concatenated: its image features are the projector of the two hidden states side by side,
    and the saved model loads back reading the same."""
    from lookhere.models.tiny import save_tiny
    from lookhere.pretrain.recipe import read_layers

    config = dataclasses.replace(CFG, size="heads", attribute_layer=-2)
    assert config.feature_layers == [-2, -1] and CFG.feature_layers == [-1]
    model, processor = build_tiny("llava", "heads", seed=0)
    read_layers(model, config.feature_layers, seed=0)
    hidden = model.config.vision_config.hidden_size
    assert model.model.multi_modal_projector.linear_1.in_features == 2 * hidden
    save_tiny(model, processor, tmp_path / "m")
    loaded, _ = load_stage_model(tmp_path / "m")
    pixels = torch.randn(2, 3, 112, 112)
    for m in (model, loaded):
        with torch.no_grad():
            feats = m.model.get_image_features(pixel_values=pixels).pooler_output  # [(K, H)] * B
            states = m.model.vision_tower(pixels, output_hidden_states=True).hidden_states
            want = m.model.multi_modal_projector(
                torch.cat([states[-2][:, 1:], states[-1][:, 1:]], dim=-1))  # (B, K, H)
        torch.testing.assert_close(torch.stack(list(feats)), want)
    with pytest.raises(ValueError, match=r"attribute_layer must be an int in \[-1, -1\]"):
        dataclasses.replace(CFG, attribute_layer=-2)  # the "test" tower has one layer
    with pytest.raises(ValueError, match="attribute_layer"):
        PretrainConfig(attribute_layer=0)
    assert PretrainConfig().feature_layers == [-3, -1]  # the shipped recipe reads two layers


WIDE = {"hidden": 160, "vision_layers": 2}  # the "test" size with room for the 142 label logits


def test_projector_starts_as_the_dense_heads():
    """init_from_heads: each map's rows of the projector's first layer give that head's logits
    (read from its own layer), centred and scaled; on the calibration images the maps' variances
    stand in LOUDNESS's ratios and all labels hold LABEL_SHARE of the layer's variance. Checked
    in float64 from the hidden states."""
    from lookhere.pretrain.projector import LABEL_SHARE, LOUDNESS, init_from_heads
    from lookhere.pretrain.recipe import read_layers

    model, processor = build_tiny("llava", WIDE, seed=0)
    tower = model.model.vision_tower
    read_layers(model, [-2, -1], seed=0)
    torch.manual_seed(0)
    obj = DensePatchObjective(tower, tower.config.hidden_size, attribute_layer=-2).eval()
    task = make_task("scenes", seed=0, mode="vision", image_size=56, patch_size=14)
    pixels = processor.image_processor([task.sample(i).image for i in range(8)],
                                       return_tensors="pt")["pixel_values"]
    linear = model.model.multi_modal_projector.linear_1
    ranges = init_from_heads(model.model.multi_modal_projector, obj, [-2, -1], pixels)
    with torch.no_grad():
        states = tower(pixels, output_hidden_states=True).hidden_states
        feats = torch.cat([states[-2][:, 1:], states[-1][:, 1:]], -1).flatten(0, 1).double()
        out = feats @ linear.weight.double().T + linear.bias.double()  # (N, rows)
        var = {}
        for name, head in obj.heads.items():
            x = states[-1 if name.startswith("box_") else -2][:, 1:].flatten(0, 1).double()
            logits = x @ head.weight.double().T + head.bias.double()  # (N, C)
            a, b = ranges[name]
            got = out[:, a:b]
            centred = logits - logits.mean(0)
            torch.testing.assert_close(got, got.std() / centred.std() * centred, atol=1e-4,
                                       rtol=1e-3)
            var[name] = got.var(0).sum()
        rest = out[:, max(b for _, b in ranges.values()):].var(0).sum()
    for name in var:
        assert var[name] / var["colour"] == pytest.approx(LOUDNESS[name] / LOUDNESS["colour"],
                                                          rel=1e-3)
    labels = sum(var.values())
    assert labels / (labels + rest) == pytest.approx(LABEL_SHARE, rel=1e-3)
    narrow, _ = build_tiny("llava", "test", seed=0)
    with pytest.raises(ValueError, match="more than the projector's"):
        init_from_heads(narrow.model.multi_modal_projector,
                        DensePatchObjective(narrow.model.vision_tower, 32), [-1],
                        pixels[:, :, :56, :56])


def test_vision_stage_leaves_the_projector_from_the_heads(tmp_path):
    """projector_init='heads': the vision stage's saved model has a new projector, the rest of
    the language side as built; 'random' on the "test" size is refused up front."""
    config = dataclasses.replace(CFG, size=WIDE, projector_init="heads", attribute_layer=-2,
                                 vision=StageConfig(2, 1e-3, 2))
    run(config, tmp_path, stages=["vision"], progress=False)
    init, _ = build_tiny("llava", WIDE, seed=0)
    saved, _ = load_stage_model(tmp_path / "vision" / "final")
    assert not torch.equal(saved.model.multi_modal_projector.linear_1.weight,
                           init.model.multi_modal_projector.linear_1.weight)
    assert all(torch.equal(v, _params(init.model.language_model)[k])
               for k, v in _params(saved.model.language_model).items())
    with pytest.raises(ValueError, match="needs a language model of at least 142"):
        dataclasses.replace(CFG, projector_init="heads")
    with pytest.raises(ValueError, match="projector_init must be one of"):
        dataclasses.replace(CFG, projector_init="zeros")


def test_projector_init_where_tower_and_projector_differ():
    """After a GPU vision stage the tower sits on the GPU and the projector where the model was
    built; here a float64 tower stands in for the other device: the init computes on the tower,
    writes on the projector, and gives the float32 result."""
    from lookhere.pretrain.projector import init_from_heads
    from lookhere.pretrain.recipe import read_layers

    task = make_task("scenes", seed=0, mode="vision", image_size=56, patch_size=14)
    got = []
    for dtype in (torch.float32, torch.float64):
        model, processor = build_tiny("llava", WIDE, seed=0)
        read_layers(model, [-2, -1], seed=0)
        torch.manual_seed(0)
        obj = DensePatchObjective(model.model.vision_tower, 32, attribute_layer=-2).eval()
        obj.to(dtype)  # the tower and heads, not the projector
        pixels = processor.image_processor([task.sample(i).image for i in range(4)],
                                           return_tensors="pt")["pixel_values"]
        init_from_heads(model.model.multi_modal_projector, obj, [-2, -1], pixels)
        linear = model.model.multi_modal_projector.linear_1
        assert linear.weight.dtype == torch.float32
        got.append(linear.weight.detach().clone())
    torch.testing.assert_close(got[0], got[1], rtol=1e-4, atol=1e-6)
