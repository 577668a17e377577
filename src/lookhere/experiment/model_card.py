"""The model card of a pretrained miniature, written beside its weights (`write_card`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from lookhere.experiment.pretrained import PretrainedEval, summary_table
from lookhere.io import atomic_dir
from lookhere.pretrain.recipe import STAGES

MAX_BYTES = 16 * 2**20  # the package ships at most 16 MB of weights


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_card(run_dir: str | Path, evaluation: PretrainedEval, out: str | Path,
               command: str | None = None, machine: str | None = None) -> Path:
    """Copy the run's final model into the new folder ``out`` with a README.md model card and
    the evaluation it reports (``eval.json``)."""
    run_dir, out = Path(run_dir), Path(out)
    final = run_dir / STAGES[-1] / "final"
    if not (final / "model.safetensors").is_file():
        raise ValueError(f"{final} has no model.safetensors: the run has not finished")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not empty; choose a new folder")
    size = (final / "model.safetensors").stat().st_size
    if size > MAX_BYTES:
        raise ValueError(f"model.safetensors is {size / 2**20:.1f} MiB, over the 16 MiB limit")
    recipe = json.loads((run_dir / "config.json").read_text())
    records = {s: json.loads((run_dir / s / "record.json").read_text()) for s in STAGES
               if (run_dir / s / "record.json").is_file()}
    with atomic_dir(out) as tmp:
        for f in final.iterdir():
            if f.is_file():  # readable by all, as package data must be (a save may be 0600)
                shutil.copy2(f, tmp / f.name)
                os.chmod(tmp / f.name, 0o644)
        card = render_card(recipe, records, evaluation, sha256(final / "model.safetensors"),
                           size, command, machine)
        (tmp / "README.md").write_text(card)
        # the evaluation itself, whose stored example answers a test regenerates
        (tmp / "eval.json").write_text(json.dumps(evaluation.to_json(), indent=1) + "\n")
    return out


def render_card(recipe: dict[str, Any], records: dict[str, dict[str, Any]],
                evaluation: PretrainedEval, digest: str, size: int, command: str | None,
                machine: str | None) -> str:
    rows = []
    for s in STAGES:
        cfg, rec = recipe[s], records.get(s, {})
        last = rec.get("log", [{}])[-1].get("loss") if rec.get("log") else None
        minutes = f"{rec.get('seconds', float('nan')) / 60:.1f}"
        if rec.get("resumed_from"):  # the time before the resume is not in this record
            minutes += f" (resumed from {Path(rec['resumed_from']).name})"
        rows.append(f"| {s} | {cfg['steps']} | {cfg['batch_size']} | {cfg['lr']:g} | "
                    f"{minutes} | {'-' if last is None else f'{last:.3f}'} |")
    total = sum(r.get("seconds", 0.0) for r in records.values()) / 60
    tower = {s: "tower trained" if s in recipe.get("tower_stages", ()) else "tower frozen"
             for s in STAGES[1:]}
    return "\n".join([
        "# llava-mini: a pretrained miniature LLaVA-1.5",
        "",
        "A `LlavaForConditionalGeneration` (CLIP vision tower + Llama language model, "
        f"{recipe['size']} preset) made by `lookhere pretrain`, LLaVA-1.5's recipe in miniature "
        "(docs/methods.md, \"Pretraining\"): a vision stage (dense per-patch colour, shape, size "
        f"and glyph labels on tower layer {recipe.get('attribute_layer', -1)}, the box of the "
        "object under each patch on the last; the projector then started from those heads, "
        f"projector_init={recipe.get('projector_init', 'random')!r}), an alignment stage "
        f"(captions naming every object with its box; {tower['align']}) and an instruction "
        f"stage (the Scenes skill mix; {tower['instruct']}). Next-token "
        "prediction only: no KLAL and no LLL term. The KLAL benchmark tasks and the experiments' "
        "test splits are never in its data.",
        "",
        "Load it offline: `lookhere.models.load_pretrained(\"llava-mini\")`, or "
        "`--model lookhere:llava-mini` in the CLI.",
        "",
        "## Training",
        "",
        f"- Command: `{command or 'lookhere pretrain train --out runs/pretrain'}`",
        f"- Seeds: weights and Trainer {recipe['seed']}, data {recipe['data_seed']}; "
        "samples generated on the fly (Scenes, disjoint index ranges per stage)",
        f"- Machine: {machine or 'not recorded'}; wall time {total:.0f} minutes of training",
        "",
        "| stage | steps | batch | lr | minutes | last logged loss |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"The whole recipe (`PretrainConfig`): `{json.dumps(recipe, sort_keys=True)}`",
        "",
        "## Evaluation",
        "",
        "Held-out data only (`lookhere pretrain eval --model lookhere:llava-mini --out "
        "eval.json`, settings "
        f"`{json.dumps(dataclasses.asdict(evaluation.config))}`): Shapes questions and REC at the "
        "experiments' test seed, the other Scenes skills at a seed never used in pretraining, "
        "the heads searched on the search seed's expressions.",
        "",
        summary_table(evaluation),
        "",
        "## File",
        "",
        f"- `model.safetensors`: {size / 2**20:.2f} MiB, float32, sha256 `{digest}`",
        "",
    ])
