"""`GroundingTrainer`: a `transformers.Trainer` whose loss is NTP + lambda * KLAL + mu * LLL.

The probe (KLAL) and the hidden-state capture (LLL) must be active for the forward *and* the
backward (gradient checkpointing recomputes layers during backward), so `training_step` wraps
the whole step in them and `compute_loss` adds the terms from what they recorded. Everything
else (optimiser, schedules, bf16, gradient accumulation, checkpoint save/resume, DDP under
torchrun / accelerate, PEFT models) is the Trainer's own. NTP keeps the Trainer's token-count
normalisation; KLAL and LLL are means over the samples of the micro-batch, scaled for gradient
accumulation the same way as the NTP loss.

Logged besides ``loss``: ``ntp_loss``, ``klal_loss`` and ``lll_loss`` (those that are on), in the
same units (``loss = ntp_loss + lambda * klal_loss + mu * lll_loss``), averaged over the steps
since the last log and over processes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, Trainer

from lookhere.collate import split_aux
from lookhere.losses.config import KLALConfig, LLLConfig
from lookhere.train.objective import klal_probe, klal_term, lll_capture, lll_term


class GroundingTrainer(Trainer):
    """Trainer with the KLAL and LLL terms. Pass ``klal=KLALConfig(...)`` (default: on, weight
    1) and ``lll=LLLConfig(...)`` (default None: off); use `GroundingCollator`, with the same
    ``lll`` config when LLL is on."""

    def __init__(self, *args: Any, klal: KLALConfig | None = None, lll: LLLConfig | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.klal = klal if klal is not None else KLALConfig()
        self.lll = lll
        self._probe = None
        self._capture = None
        self._aux: dict[str, Any] = {}
        # The first step checks the KLAL inputs (target values, its width against the batch's
        # visual tokens); the collator builds every batch the same way, so later steps skip the
        # checks and their host syncs (objective.klal_probe / klal_term, check=False).
        self._klal_checked = False
        self._sums: dict[str, torch.Tensor] = {}
        self._sums_from_step = 0

    # -- steps -------------------------------------------------------------------------------------
    def training_step(self, model: nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        with self._probing(model, inputs) as inputs:
            return super().training_step(model, inputs, num_items_in_batch)

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any],
                        prediction_loss_only: bool, ignore_keys: list[str] | None = None):
        with self._probing(model, inputs) as inputs:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

    @contextmanager
    def _probing(self, model: nn.Module, inputs: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Pop the lookhere_ entries and keep the step's probe and capture active around it;
        yields the model inputs. `compute_loss` reads them and the entries from ``self``."""
        inputs, aux = split_aux(inputs)
        check = not self._klal_checked
        with klal_probe(model, inputs, aux, self.klal, check) as probe, \
                lll_capture(model, inputs, self.lll) as capture:
            self._probe, self._capture, self._aux = probe, capture, aux
            try:
                yield inputs
            finally:
                self._probe, self._capture, self._aux = None, None, {}

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None):
        inputs, _ = split_aux(inputs)
        ntp, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                            num_items_in_batch=num_items_in_batch)
        terms = {}  # name -> (weight, value) of the auxiliary terms this step computes
        if self._probe is not None:
            term = klal_term(self._probe, self._aux, self.klal, check=not self._klal_checked)
            terms["klal"] = (self.klal.weight, term)
            self._klal_checked = True
        if self._capture is not None:
            terms["lll"] = (self.lll.weight, lll_term(self._capture, self._aux, self.lll))
        # The Trainer divides the returned loss by the accumulation steps unless the NTP loss
        # was already normalised over the whole accumulated batch; the terms must follow it.
        ga = self.current_gradient_accumulation_steps if model.training else 1
        scaled = model.training and self._ntp_scaled_for_ga(num_items_in_batch)
        loss = ntp
        for weight, value in terms.values():
            if weight > 0:
                loss = loss + weight * (value / ga if scaled else value)
        if model.training:
            self._record(ntp=ntp if scaled else ntp / ga,
                         **{name: value / ga for name, (_, value) in terms.items()})
        return (loss, outputs) if return_outputs else loss

    def _ntp_scaled_for_ga(self, num_items_in_batch: Any) -> bool:
        if self.loss_is_scaled_for_ga is not None:
            return bool(self.loss_is_scaled_for_ga)
        return bool((self.model_accepts_loss_kwargs and num_items_in_batch is not None)
                    or self.compute_loss_func is not None)

    # -- checkpoints -------------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # transformers 5 saves VLMs under their original checkpoint key names, which the
        # Trainer's own resume (load_state_dict(strict=False)) does not map back: it would
        # resume from untrained weights with only a warning. Checkpoints keep the in-memory
        # names instead; from_pretrained reads both.
        model = self.accelerator.unwrap_model(self.model)
        if not isinstance(model, PreTrainedModel):
            return super()._save(output_dir, state_dict)
        original = model.save_pretrained
        model.save_pretrained = functools.partial(original, save_original_format=False)
        try:
            super()._save(output_dir, state_dict)
        finally:
            del model.save_pretrained  # back to the class method

    # -- logging -----------------------------------------------------------------------------------
    def _record(self, **terms: torch.Tensor) -> None:
        if not self._sums:  # first micro-batch since the last log (or since a resume)
            self._sums_from_step = self.state.global_step
        for name, value in terms.items():
            value = value.detach().float()
            self._sums[name] = self._sums.get(name, torch.zeros_like(value)) + value

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._sums:
            steps = max(1, self.state.global_step - self._sums_from_step)
            names = sorted(self._sums)
            local = torch.stack([self._sums[n] for n in names]).to(self.args.device)
            mean = self.accelerator.gather(local[None]).mean(0) / steps  # over processes
            for name, value in zip(names, mean.tolist(), strict=True):
                logs[f"{name}_loss"] = value
            self._sums = {}
            self._sums_from_step = self.state.global_step
        super().log(logs, start_time)
