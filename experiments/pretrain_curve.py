"""Learning curve of a pretraining run: a smaller `lookhere pretrain eval` on saved checkpoints.

The run keeps only its last Trainer checkpoint, so `experiments/pretrain_watch.sh` copies each
one as it appears (runs/curve/<stage>/step-N). This evaluates every ``--every``-th step of a
stage on smaller held-out sets (the same seeds as the full evaluation) and prints one line each.

    python experiments/pretrain_curve.py --run runs/pretrain --curve runs/curve --stage instruct \
        --every 1000 --out runs/curve/instruct.json
"""

import argparse
import json
from pathlib import Path

from transformers import AutoProcessor, LlavaForConditionalGeneration

from lookhere.experiment.pretrained import PretrainedEvalConfig, evaluate_pretrained
from lookhere.io import write_json

SMALL = PretrainedEvalConfig(vqa_samples=100, skill_samples=50, rec_samples=200,
                             search_samples=300)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--curve", type=Path, required=True)
    p.add_argument("--stage", default="instruct")
    p.add_argument("--every", type=int, default=1000)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    processor = AutoProcessor.from_pretrained(args.run / "vision" / "final")
    steps = sorted(int(d.name.split("-")[1]) for d in (args.curve / args.stage).glob("step-*"))
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for step in steps:
        if step % args.every or str(step) in results:
            continue
        model = LlavaForConditionalGeneration.from_pretrained(
            args.curve / args.stage / f"step-{step}", attn_implementation="sdpa").eval()
        res = evaluate_pretrained(model, processor, SMALL, model_id=f"step-{step}",
                                  progress=False)
        results[str(step)] = res.to_json()
        write_json(results, args.out)
        acc = {k: round(100 * v.score.accuracy, 1) for k, v in {**res.vqa, **res.skills}.items()}
        rec = {k: round(100 * v.acc_at_iou, 1) for k, v in res.rec.items()}
        print(f"step {step}: {acc} REC Acc@0.5 {rec} heads {res.heads}", flush=True)


if __name__ == "__main__":
    main()
