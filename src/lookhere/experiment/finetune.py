"""A fine-tuning run, as ``lookhere train`` makes it: any supported VLM on any dataset, NTP with
the KLAL and LLL terms of a `TrainConfig`, under the `TrainingArguments` given (single process,
``torchrun`` or ``accelerate launch``: the Trainer's own DDP / FSDP), then ``lookhere eval`` on
the eval split.

The run folder (``TrainingArguments.output_dir``) holds, besides the Trainer's checkpoints:

    lookhere_train.json   the resolved config (lookhere sections and every TrainingArguments
                          field), written before the first step; ``--resume`` checks it
    model.safetensors...  the final model (or the LoRA adapter) and the processor
    train.json            steps, wall time and every logged loss (`TrainRecord`)
    eval.json             the evaluation's scores and attention ratios; predictions.jsonl
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lookhere import __version__
from lookhere.data.source import open_split
from lookhere.experiment.training import TrainRecord, fit
from lookhere.io import write_json
from lookhere.train.config import TrainConfig

CONFIG_FILE = "lookhere_train.json"
EVAL_FILE = "eval.json"
TRAIN_FILE = "train.json"
PREDICTIONS_FILE = "predictions.jsonl"
#: TrainingArguments fields a resumed run may change (where and how much it runs, not what)
RESUMABLE = ("output_dir", "logging_dir", "resume_from_checkpoint", "max_steps",
             "num_train_epochs", "disable_tqdm", "dataloader_num_workers", "report_to",
             "local_rank", "save_steps", "logging_steps")


class RunFolderError(ValueError):
    """The run folder holds a run that the options given would overwrite or contradict."""


@dataclass(frozen=True)
class FinetuneResult:
    """What a run did: where, how it trained (None with ``eval_only``), and the evaluation's
    JSON (`EvalResult.to_json`; None without an eval split or off the main process)."""

    output_dir: str
    train: TrainRecord | None
    eval: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {"output_dir": self.output_dir,
                "train": None if self.train is None else self.train.to_json(),
                "eval": self.eval}


def resolved_config(config: TrainConfig, args: Any) -> dict[str, Any]:
    """The JSON saved as `CONFIG_FILE`: both halves of the run's configuration."""
    return {"lookhere_version": __version__, "config": config.to_json(),
            "training": json.loads(args.to_json_string())}


def check_run_folder(config: TrainConfig, args: Any, resume: bool, eval_only: bool) -> None:
    """Refuse to start over a folder that holds another run (nothing a user made is overwritten),
    to resume without one, or to resume with a different config; an eval-only run needs the
    trained model there. Raises `RunFolderError` naming the option to pass."""
    out = Path(args.output_dir)
    saved_path = out / CONFIG_FILE
    if eval_only:
        return
    if resume:
        if not saved_path.is_file():
            raise RunFolderError(f"--resume: {out} holds no run ({CONFIG_FILE} is missing)")
        saved = json.loads(saved_path.read_text())
        now = json.loads(json.dumps(resolved_config(config, args)))  # tuples as lists
        changed = _differences(saved, now)
        if changed:
            raise RunFolderError(f"--resume: the config differs from the run's {saved_path} "
                                 f"in {', '.join(changed[:6])}; resume with the same config")
        return
    if out.exists() and any(out.iterdir()):
        raise RunFolderError(f"output_dir {out} is not empty; pass --resume to continue the "
                             "run there, or choose a new output_dir")


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    before = _flat(saved.get("config", {}), "")
    out = [key for key, value in _flat(now["config"], "").items() if before.get(key) != value]
    trained = saved.get("training", {})
    return out + [f"training.{key}" for key, value in now["training"].items()
                  if key not in RESUMABLE and trained.get(key) != value]


def _flat(d: dict[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def finetune(config: TrainConfig, args: Any, *, resume: bool = False, eval_only: bool = False,
             progress: bool = True) -> FinetuneResult:
    """Train ``config``'s model on its data with ``args`` (`TrainingArguments`), save it, and
    evaluate it on the eval split; ``eval_only``: evaluate the model already in the run folder.
    ``resume``: continue from the folder's last checkpoint."""
    from transformers import set_seed

    check_run_folder(config, args, resume, eval_only)
    out = Path(args.output_dir)
    set_seed(args.seed)  # before the LoRA weights are drawn, as the Trainer's init is too late
    if eval_only:
        model, processor, adapter = _load_trained(config, out)
        return FinetuneResult(str(out), None,
                              _evaluate(config, model, processor, adapter, out, progress))
    model, processor, adapter = _load(config, lora=config.lora.active,
                                      checkpointing=bool(args.activation_checkpointing))
    trainer = _trainer(config, args, model, processor, adapter)
    if trainer.is_world_process_zero() and not resume:
        out.mkdir(parents=True, exist_ok=True)
        write_json(resolved_config(config, args), out / CONFIG_FILE)
    record = fit(trainer, args.max_steps, progress,
                 resume=_last_checkpoint(out) if resume else None)
    _save(config, trainer, processor, out)
    if not trainer.is_world_process_zero():
        return FinetuneResult(str(out), record, None)
    acc = trainer.accelerator
    write_json({**record.to_json(), "processes": acc.num_processes,
                "distributed_type": str(acc.distributed_type.value)}, out / TRAIN_FILE)
    model = trainer.accelerator.unwrap_model(trainer.model)
    return FinetuneResult(str(out), record,
                          _evaluate(config, model, processor, adapter, out, progress))


def _load(config: TrainConfig, lora: bool, checkpointing: bool = False) -> tuple[Any, Any, Any]:
    import torch

    from lookhere.models.loading import load_model

    dtype = config.model.dtype if config.model.dtype == "auto" \
        else getattr(torch, config.model.dtype)
    model, processor, adapter = load_model(config.model.name, dtype=dtype)
    if lora:
        from lookhere.train.lora import apply_lora

        if checkpointing:  # the frozen embeddings' output must carry grad into the LoRA layers
            model.enable_input_require_grads()
        model = apply_lora(model, r=config.lora.r, alpha=config.lora.alpha,
                           dropout=config.lora.dropout)
    return model, processor, adapter


def _load_trained(config: TrainConfig, out: Path) -> tuple[Any, Any, Any]:
    """The model a run saved in ``out``: a full checkpoint, or a LoRA adapter on top of the
    config's base model."""
    if not (out / "config.json").is_file() and not (out / "adapter_config.json").is_file():
        raise RunFolderError(f"--eval-only: {out} holds no trained model")
    if not (out / "adapter_config.json").is_file():
        model_args = dataclasses.replace(config.model, name=str(out))
        return _load(dataclasses.replace(config, model=model_args), lora=False)
    from peft import PeftModel

    model, processor, adapter = _load(config, lora=False)
    return PeftModel.from_pretrained(model, str(out)), processor, adapter


def _trainer(config: TrainConfig, args: Any, model: Any, processor: Any, adapter: Any) -> Any:
    from lookhere.collate import GroundingCollator
    from lookhere.train.trainer import GroundingTrainer

    lll = config.lll if config.lll.active else None
    collator = GroundingCollator(processor, adapter, target_config=config.target,
                                 targets=config.klal.active, lll=lll)
    return GroundingTrainer(model=model, args=args, train_dataset=open_split(config.data, "train"),
                            data_collator=collator, klal=config.klal, lll=lll)


def _last_checkpoint(out: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(out)) if out.is_dir() else None


def _save(config: TrainConfig, trainer: Any, processor: Any, out: Path) -> None:
    """The final model (the LoRA adapter, or with ``lora.merge`` the merged weights) and the
    processor, by the main process."""
    if config.lora.active and config.lora.merge:
        trainer.accelerator.wait_for_everyone()
        if trainer.is_world_process_zero():
            merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
            merged.save_pretrained(out, save_original_format=False)
            trainer.model = merged
    else:
        trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        processor.save_pretrained(out)


def _evaluate(config: TrainConfig, model: Any, processor: Any, adapter: Any, out: Path,
              progress: bool) -> dict[str, Any] | None:
    """``lookhere eval`` on the eval split: `EVAL_FILE` and `PREDICTIONS_FILE` in ``out``."""
    if not config.data.has_eval:
        return None
    from lookhere.eval.runner import evaluate
    from lookhere.eval.scoring import write_predictions

    samples = list(open_split(config.data, "eval"))
    e = config.eval
    result = evaluate(model, processor, adapter, samples, batch_size=e.batch_size,
                      max_new_tokens=e.max_new_tokens, style=e.style, attention=e.attention,
                      progress=progress)
    write_predictions(out / PREDICTIONS_FILE, result.predictions)
    data = {"model": str(out), "data": config.data.source("eval"), **result.to_json()}
    write_json(data, out / EVAL_FILE)
    return data
