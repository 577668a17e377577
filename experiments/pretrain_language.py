"""Diagnostic: does a text-only *language* stage (the miniature's Vicuna) make binding learnable?

From a run's ``vision/final`` (trained tower, random language model): the language model is
trained on text alone, each sequence a Scenes caption (every object with its box) followed by a
colour or shape question about the same scene and its answer (loss on the answer); then a short
caption alignment and the colour/shape instruction tuning of `pretrain_focus.py`, then
`pretrain_binding.py`.

    python experiments/pretrain_language.py --run runs/pretrain --out runs/pretrain_language
"""

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from lookhere.data.dataset import TaskDataset
from lookhere.data.synthetic import make_task
from lookhere.data.synthetic.scenes import caption
from lookhere.models.tiny import save_tiny
from lookhere.pretrain.recipe import (
    STAGE_START,
    PretrainConfig,
    StageConfig,
    load_stage_model,
    ntp_trainer,
    training_args,
)

SCENE = {"image_size": 96, "patch_size": 8}


def text_batch(tok, captions, questions, answers):
    ids, labels = [], []
    for c, q, a in zip(captions, questions, answers, strict=True):
        prompt = tok(f"{c} USER: {q} ASSISTANT:", add_special_tokens=False)["input_ids"]
        ans = tok(f" {a}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids.append(prompt + ans)
        labels.append([-100] * len(prompt) + ans)
    n = max(map(len, ids))
    pad = tok.pad_token_id
    return (torch.tensor([x + [pad] * (n - len(x)) for x in ids]),
            torch.tensor([x + [-100] * (n - len(x)) for x in labels]),
            torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x in ids]))


def language_stage(model, processor, steps: int, lr: float, batch: int = 32) -> None:
    lm = model.model.language_model
    params = [*lm.parameters(), *model.lm_head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.03)
    ask = make_task("scenes", seed=0, mode="instruct", skills=("colour", "shape"), **SCENE)
    start = 30_000_000  # an index range no stage of the recipe uses
    for step in range(steps):
        idx = [start + step * batch + i for i in range(batch)]
        q = [ask.sample(i) for i in idx]
        captions = [caption(y.meta["objects"], y.meta["markers"], y.image.size[0]) for y in q]
        ids, labels, attn = text_batch(processor.tokenizer, captions,
                                       [y.question for y in q], [y.answer for y in q])
        emb = lm.embed_tokens(ids)
        out = lm(inputs_embeds=emb, attention_mask=attn)
        logits = model.lm_head(out.last_hidden_state)[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(),
                                                 ignore_index=-100)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 100 == 0 or step == steps - 1:
            print(f"language step {step}: loss {loss.item():.3f}", flush=True)


def tune(model, processor, out: Path, mode: str, steps: int, lr: float, **scene) -> None:
    cfg = PretrainConfig(instruct=StageConfig(steps, lr, 16), save_steps=10**6)
    task = make_task("scenes", seed=0, mode=mode, **SCENE, **scene)
    stage = "instruct" if mode == "instruct" else "align"
    data = TaskDataset(task, steps * 16, start=STAGE_START[stage])
    ntp_trainer(model, processor, data, training_args(cfg, "instruct", out / mode, False)).train()


def finish(model, processor, out: Path) -> None:
    """Save the model to ``out/final`` and run `pretrain_binding.py` on it."""
    model.eval()
    save_tiny(model, processor, out / "final")
    subprocess.run([sys.executable, str(Path(__file__).parent / "pretrain_binding.py"),
                    "--model", str(out / "final")], check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--language-steps", type=int, default=1500)
    p.add_argument("--align-steps", type=int, default=300)
    p.add_argument("--focus-steps", type=int, default=1000)
    args = p.parse_args()
    model, processor = load_stage_model(args.run / "vision" / "final")
    model.train()
    language_stage(model, processor, args.language_steps, 1e-3)
    tune(model, processor, args.out, "caption", args.align_steps, 1e-3)
    tune(model, processor, args.out, "instruct", args.focus_steps, 1e-3,
         skills=("colour", "shape"))
    finish(model, processor, args.out)


if __name__ == "__main__":
    main()
