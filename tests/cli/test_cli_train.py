"""``lookhere train``: the example configs on tiny models of their classes, the config file and
flags, the run folder's rules, one-line errors, and the same run under torchrun and accelerate
launch (2 CPU processes, gloo) against one process."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import FIXTURES, ROOT, torchrun
from safetensors.torch import load_file

from lookhere.cli import main
from lookhere.data.disk import write_dataset
from lookhere.models.tiny import build_tiny, save_tiny

pytestmark = pytest.mark.usefixtures("one_thread")
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

#: each example's real model class, as the tiny family that builds it, and its data here
EXAMPLE_RUNS = {
    "llava-1.5-7b-refcoco-klal.yaml": ("llava", [
        "--data-train", FIXTURES / "refer"]),
    "qwen2.5-vl-7b-pixmo-points-klal.yaml": ("qwen2_5_vl", [
        "--data-train", FIXTURES / "pixmo_points" / "data",
        "--data-images", FIXTURES / "pixmo_points" / "images",
        "--data-train-split", "all", "--data-eval-split", "all"]),  # 3 rows: no val by hash
}
FAST = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--dataloader_num_workers",
        "0", "--data-eval-limit", "2", "--eval-batch-size", "2", "--eval-max-new-tokens", "8",
        "--lora-r", "4", "--logging_steps", "1", "--quiet"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A saved tiny LLaVA and Grid Patch / Shapes dataset folders."""
    root = tmp_path_factory.mktemp("train")
    save_tiny(*build_tiny("llava", "test", seed=0), root / "llava")
    write_dataset("grid_patch", 32, root / "grid", seed=0, progress=False)
    write_dataset("grid_patch", 4, root / "grid-eval", seed=1, progress=False)
    write_dataset("shapes", 4, root / "shapes", seed=0, progress=False, image_size=112)
    return root


def _run(*argv) -> int:
    return main(["train", *[str(a) for a in argv]])


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def _log(folder: Path) -> list[dict[str, float]]:
    return json.loads((folder / "train.json").read_text())["log"]


def test_every_example_is_tested():
    assert {p.name for p in EXAMPLES} == set(EXAMPLE_RUNS)


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_on_a_tiny_model_of_its_class(example, tmp_path, capsys):
    family, data = EXAMPLE_RUNS[example.name]
    save_tiny(*build_tiny(family, "test", seed=0), tmp_path / "model")
    out = tmp_path / "run"
    assert _run("--config", example, "--model-name", tmp_path / "model", *data, *FAST,
                "--output_dir", out) == 0
    saved = json.loads((out / "lookhere_train.json").read_text())
    spec = yaml.safe_load(example.read_text())
    # what the test did not override is the example's, in both halves of the config
    assert saved["config"]["lora"]["alpha"] == spec["lora"]["alpha"]
    assert saved["config"]["klal"]["weight"] == spec["klal"]["weight"] > 0
    assert saved["config"]["data"]["format"] == spec["data"]["format"]
    for key in ("learning_rate", "bf16", "activation_checkpointing", "lr_scheduler_type"):
        assert saved["training"][key] == spec["training"][key], key
    assert saved["training"]["max_steps"] == 2 and saved["config"]["lora"]["r"] == 4
    assert (out / "adapter_model.safetensors").is_file()  # LoRA: the adapter is saved
    log = _log(out)
    assert len(log) == 2 and all(r["klal_loss"] > 0 for r in log)
    scores = json.loads((out / "eval.json").read_text())["scores"]
    assert sum(t["n"] for t in scores["tasks"].values()) == 2
    assert "eval.json" in capsys.readouterr().out


def test_flags_override_the_config_file(work, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": str(work / "llava")}, "data": {"train": str(work / "grid")},
        "klal": {"weight": 0.5, "query": "all_answer"},
        "training": {"output_dir": str(tmp_path / "from-file"), "learning_rate": 0.01,
                     "max_steps": 1, "save_strategy": "no", "disable_tqdm": True}}))
    out = tmp_path / "from-flag"
    assert _run("--config", config, "--klal-weight", 2, "--learning_rate", 0.02,
                "--output_dir", out, "--quiet") == 0
    saved = json.loads((out / "lookhere_train.json").read_text())
    assert saved["config"]["klal"] == {**saved["config"]["klal"], "weight": 2.0,
                                       "query": "all_answer"}
    assert saved["training"]["learning_rate"] == 0.02 and saved["training"]["max_steps"] == 1
    assert not (tmp_path / "from-file").exists()
    assert not (out / "eval.json").exists()  # no eval split given: no evaluation


def test_eval_only_scores_the_saved_model(work, tmp_path):
    out = tmp_path / "run"
    common = ["--model-name", work / "llava", "--data-train", work / "grid", "--data-eval",
              work / "grid-eval", "--output_dir", out, "--quiet", "--eval-max-new-tokens", 4]
    assert _run(*common, "--max_steps", 1, "--save_strategy", "no") == 0
    first = json.loads((out / "eval.json").read_text())
    (out / "eval.json").unlink()
    assert _run(*common, "--eval-only") == 0
    again = json.loads((out / "eval.json").read_text())
    assert again["predictions"] == first["predictions"]
    assert again["scores"] == first["scores"]


@pytest.mark.parametrize("argv, expected", [
    ([], "--data-train"),
    (["--data-train", "{grid}"], "--output_dir"),
    (["--data-train", "{grid}", "--output_dir", "{tmp}/o", "--no_such_flag", "1"],
     "unrecognized arguments: --no_such_flag"),
    (["--data-train", "{grid}", "--output_dir", "{tmp}/o", "--learning_rate", "fast"],
     "--learning_rate"),
    (["--data-train", "{grid}", "--output_dir", "{tmp}/o", "--remove_unused_columns", "true"],
     "remove_unused_columns must be false"),
    (["--data-train", "{grid}", "--output_dir", "{tmp}/o", "--lora-r", "-1"], "lora.r"),
    (["--data-train", "{grid}", "--output_dir", "{tmp}/o", "--data-format", "coco"],
     "data.format"),
    (["--data-train", "{tmp}/none", "--output_dir", "{tmp}/o"], "data.train"),
    (["--data-train", "{grid}", "--output_dir", "{tmp}/o", "--eval-style", "xml"], "eval.style"),
    (["--data-train", "{grid}", "--output_dir", "{tmp}/o", "--resume"], "holds no run"),
    (["--data-train", "{grid}", "--output_dir", "{grid}"], "not empty; pass --resume"),
    (["--config", "{tmp}/bad.yaml"], "bad.yaml:3: not valid YAML"),
    (["--config", "{tmp}/section.yaml"], "unknown section(s) ['optimizer']"),
    (["--config", "{tmp}/field.yaml"], "field.yaml: klal: unknown field(s) ['lambda']"),
    (["--config", "{tmp}/type.yaml"], "type.yaml: klal.weight: expected float"),
    (["--config", "{tmp}/training.yaml"], "unknown TrainingArguments field(s) ['lr']"),
    (["--config", "{tmp}/c.txt"], "ends in .yaml, .yml or .json"),
])
def test_bad_input_is_one_line(argv, expected, work, tmp_path, cli_error):
    (tmp_path / "bad.yaml").write_text("model:\n  name: [unclosed\n")
    (tmp_path / "section.yaml").write_text("optimizer: {lr: 1}\n")
    (tmp_path / "field.yaml").write_text("klal: {lambda: 1}\n")
    (tmp_path / "type.yaml").write_text("klal: {weight: heavy}\n")
    (tmp_path / "training.yaml").write_text(f"data: {{train: {work / 'grid'}}}\n"
                                            "training: {lr: 1}\n")
    (tmp_path / "c.txt").write_text("")
    args = [a.format(grid=work / "grid", tmp=tmp_path) for a in argv]
    line = cli_error(["train", *args])
    assert expected in line, line
    assert not (tmp_path / "o").exists()


def test_resume_refuses_a_changed_config(work, tmp_path, cli_error):
    common = ["--model-name", work / "llava", "--data-train", work / "grid", "--output_dir",
              tmp_path / "run", "--quiet", "--save_strategy", "no"]
    assert _run(*common, "--max_steps", 1) == 0
    line = cli_error(["train", *common, "--max_steps", 2, "--resume", "--klal-weight", 3])
    assert "differs" in line and "klal.weight" in line


def test_lookhere_options_do_not_shadow_training_arguments():
    """Both parsers see the command line: no lookhere option may be a TrainingArguments one."""
    from lookhere.cli import parser
    from lookhere.cli.train import _training_parser

    train = parser()._subparsers._group_actions[0].choices["train"]
    train.format_help()  # builds the options
    ours = {s for a in train._actions for s in a.option_strings}
    theirs = {s for a in _training_parser()._actions for s in a.option_strings} - {"-h", "--help"}
    assert len(ours) > 40 and len(theirs) > 100
    assert not ours & theirs


# -- several processes ----------------------------------------------------------------------------

def _launch(launcher: str, argv: list, nproc: int = 2) -> None:
    """``lookhere train argv`` in ``nproc`` processes under torchrun or accelerate launch."""
    if launcher == "torchrun":
        torchrun(["-m", "lookhere.cli", "train", *argv], nproc=nproc)
        return
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT / "src"))
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
    for _ in range(3):  # the free port can be taken before the launcher binds it
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # DDP: MULTI_CPU here, MULTI_GPU on GPUs
        head = [accelerate, "launch", "--multi_gpu", "--num_processes", str(nproc),
                "--num_machines", "1", "--main_process_port", str(port), "--mixed_precision",
                "no", "--dynamo_backend", "no"]
        proc = subprocess.run([*head, "-m", "lookhere.cli", "train", *map(str, argv)], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        if proc.returncode == 0 or "EADDRINUSE" not in proc.stderr:
            break
    assert proc.returncode == 0, proc.stderr[-5000:]


@pytest.mark.distributed
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_match_one(launcher, work, tmp_path):
    """The same global batch (all 4 samples, 2 per process) and plain SGD: the logged NTP, KLAL
    and LLL losses and the weights after two steps (so the gradients) equal one process's."""
    common = ["--model-name", work / "llava", "--data-train", work / "shapes", "--klal-weight",
              1, "--lll-weight", 1, "--max_steps", 2, "--optim", "sgd", "--learning_rate", 0.1,
              "--lr_scheduler_type", "constant", "--logging_steps", 1, "--save_strategy", "no",
              "--quiet"]
    assert _run(*common, "--per_device_train_batch_size", 4, "--output_dir", tmp_path / "one") == 0
    _launch(launcher, [*common, "--per_device_train_batch_size", 2, "--output_dir",
                       tmp_path / "two"])
    record = json.loads((tmp_path / "two" / "train.json").read_text())
    assert record["processes"] == 2
    one, two = _log(tmp_path / "one"), _log(tmp_path / "two")
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "ntp_loss", "klal_loss", "lll_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
    assert one[1]["loss"] < one[0]["loss"]  # the first step moved the weights
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=0, atol=1e-6)
