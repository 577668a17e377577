"""``lookhere heads find`` and ``lookhere ground``: find a model's localization heads on a REC
dataset folder, and ground expressions with them (methods.md section 3).

``heads find`` uses the samples' questions as the expressions. Under torchrun (``WORLD_SIZE`` > 1)
it initialises the process group itself (nccl on CUDA, else gloo), puts the model on the rank's
device (``cuda:LOCAL_RANK``, or the CPU with ``--device cpu``), the search shards the batches over
the ranks, and rank 0 alone writes the spec.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from lookhere.cli.common import (
    add_device,
    add_overwrite,
    check_outputs,
    fail,
    load_model_for_cli,
    load_refiner,
    load_spec,
    non_negative_float,
    parse_grid,
    positive_int,
    read_data,
    read_image,
    resolve_device,
)

#: the commands this module adds, with their one-line help (`lookhere --help`)
COMMANDS = {
    "heads": "localization heads of a model",
    "ground": "ground expressions with a HeadSpec: boxes (and masks)",
}


def add_commands(sub: argparse._SubParsersAction) -> None:
    heads = sub.add_parser("heads", help=COMMANDS["heads"], description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p = heads.add_subparsers(dest="heads_command", required=True).add_parser(
        "find", help="score every head on a REC dataset folder and save the top-k as a HeadSpec",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_find_options(p)
    p.set_defaults(run=_find)
    p = sub.add_parser("ground", help=COMMANDS["ground"], description=_GROUND_DESCRIPTION)
    _add_ground_options(p)
    p.set_defaults(run=_ground)


def _add_find_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="PATH", help="model folder (or hub name)")
    p.add_argument("--data", required=True, type=Path, metavar="DIR",
                   help="REC dataset folder (`lookhere data make shapes`, mode rec)")
    p.add_argument("--out", required=True, type=Path, metavar="FILE",
                   help="the HeadSpec JSON to write")
    add_overwrite(p)
    p.add_argument("--limit", type=positive_int, metavar="N", help="first N samples only")
    p.add_argument("--top-k", type=positive_int, default=3, metavar="K",
                   help="localization heads to keep (default 3; the authors' code: 5)")
    p.add_argument("--per-sample", type=positive_int, default=10, metavar="N",
                   help="lowest-entropy heads counted per sample (default 10)")
    p.add_argument("--tau", default="mean_curve", choices=("mean_curve", "per_sample"),
                   help="S_img threshold: knee of the sample-averaged curve (default, the paper) "
                        "or of each sample's curve over every head (the authors' code)")
    p.add_argument("--threshold", default="mean", choices=("mean", "two_mean"),
                   help="binarisation: A > mean (default) or A - 2 mean > 0.001 (the code)")
    p.add_argument("--weight", default="area", choices=("area", "mass"),
                   help="entropy weights components by area (default) or by relu(A - t) over "
                        "the whole map's, 0.0 without a component (the authors' code with "
                        "--threshold two_mean, their bug included)")
    p.add_argument("--grids", choices=("primary", "all"),
                   help="entropy on the image's primary grid (default) or pooled over all grids")
    p.add_argument("--bottom-row-limit", type=float, metavar="X",
                   help="drop heads whose bottom grid row has a cell above X (the code: 0.05)")
    p.add_argument("--skip-layers", type=int, nargs="*", metavar="L",
                   help="layers never selected (default 0 1)")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                   help="samples per forward (default 8)")
    p.add_argument("--scores-dir", type=Path, metavar="DIR",
                   help="keep per-batch scores here; a rerun resumes from them")
    add_device(p, suffix="; under torchrun each rank takes cuda:LOCAL_RANK, or the cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


_GROUND_DESCRIPTION = """Ground with a HeadSpec: one expression on an image (--image, --text), or
every sample of a dataset folder, whose questions are the expressions (--data). Prints one JSON
line per sample, {"id", "text", "box"} with the box xyxy in image pixels (no score: grounding
does not judge), or writes them to --out as JSONL. --masks-dir writes each mask as a PNG at the
image's size (255 = object): the heads' pseudo-mask upsampled, or SAM's with --sam. With --data
and --out, records are appended chunk by chunk (fsynced) to a hidden .<out>.partial file headed
by a content fingerprint (weights, heads, samples, settings): after an interruption (even kill
-9), the same command grounds only what is left and writes what one whole run writes; a partial
file of another run is refused. Without --out, records are printed chunk by chunk."""


def _add_ground_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="PATH", help="model folder (or hub name)")
    p.add_argument("--heads", required=True, type=Path, metavar="FILE",
                   help="HeadSpec JSON from `lookhere heads find`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", type=Path, metavar="IMG", help="an image file (with --text)")
    src.add_argument("--data", type=Path, metavar="DIR", help="a dataset folder")
    p.add_argument("--text", metavar="TEXT", help="with --image: the referring expression")
    p.add_argument("--limit", type=positive_int, metavar="N", help="with --data: first N only")
    p.add_argument("--out", type=Path, metavar="FILE", help="write the groundings here (JSONL)")
    add_overwrite(p)
    p.add_argument("--masks-dir", type=Path, metavar="DIR", help="write <id>.png masks here")
    p.add_argument("--sam", metavar="PATH",
                   help="with --masks-dir: SAM model folder (or hub name) prompted with the box")
    p.add_argument("--grid", default="primary", metavar="NAME",
                   help="grid of the image to ground on: primary (default) or a grid's name")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                   help="samples per forward (default 8)")
    p.add_argument("--sigma", type=non_negative_float, default=1.0, metavar="CELLS",
                   help="smoothing of the heads' maps before the box, in grid cells (default 1, "
                        "the paper's; `eval rec --baselines ceiling` shows what a grid allows)")
    add_device(p)


# ---------------------------------------------------------------------------------------------
# heads find


def _find(args: argparse.Namespace) -> int:
    from lookhere.eval.rec import check_rec_samples
    from lookhere.heads.search import find_heads

    prog = "lookhere heads find"
    check_outputs(args, ("out",), prog)
    samples = read_data(args.data, args.limit, prog)
    try:
        check_rec_samples(samples)
    except ValueError as err:
        raise fail(f"--data {args.data}: {err}", prog) from None
    rank, device, own_group = _distributed(args.device)
    try:
        model, processor, adapter = load_model_for_cli(args.model, device, prog)
        given = {k: getattr(args, k) for k in ("grids", "bottom_row_limit", "skip_layers",
                                                "scores_dir") if getattr(args, k) is not None}
        try:
            spec = find_heads(model, processor, adapter, samples, model_id=args.model,
                              top_k=args.top_k, per_sample=args.per_sample, tau=args.tau,
                              threshold=args.threshold, weight=args.weight,
                              batch_size=args.batch_size, progress=rank == 0 and not args.quiet,
                              **given)
        except ValueError as err:
            raise fail(str(err), prog) from None
    finally:
        if own_group:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank == 0:
        spec.save(args.out)
        heads = ", ".join(f"({layer}, {head})" for layer, head in spec.heads)
        print(f"heads {heads} (tau {spec.tau:.4f}, {spec.num_samples} samples) -> {args.out}")
    return 0


def _distributed(device: str | None) -> tuple[int, str | None, bool]:
    """(rank, device, whether this call initialised the process group) under torchrun;
    ``(0, device, False)`` in a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, device, False
    import torch
    import torch.distributed as dist

    cuda = resolve_device(device).startswith("cuda")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)  # nccl's collectives need each rank on its own device
        device = f"cuda:{local}"
    else:
        device = "cpu"
    own = not dist.is_initialized()
    if own:
        dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), device, own


# ---------------------------------------------------------------------------------------------
# ground


def _ground(args: argparse.Namespace) -> int:
    prog = "lookhere ground"
    check_outputs(args, ("out",), prog)
    if args.sam is not None and args.masks_dir is None:
        raise fail("--sam only applies with --masks-dir (SAM refines masks, not boxes)", prog)
    if args.masks_dir is not None and args.masks_dir.exists() and not args.masks_dir.is_dir():
        raise fail(f"--masks-dir {args.masks_dir} is a file, not a folder", prog)
    samples = _ground_samples(args, prog)
    model, processor, adapter = load_model_for_cli(args.model, args.device, prog)
    spec = load_spec(args.heads, adapter, prog)
    refiner = load_refiner(args.sam, args.device, prog)
    chunk = args.batch_size * GROUND_CHUNK_BATCHES
    if args.out is None:  # to stdout, chunk by chunk: nothing to resume
        for i in range(0, len(samples), chunk):
            for rec in _ground_chunk(args, model, processor, adapter, spec, refiner,
                                     samples[i:i + chunk], prog):
                print(json.dumps(rec), flush=True)
        return 0
    partial = _Partial(args.out, _ground_fingerprint(args, model, refiner, samples))
    done = partial.open(samples, args.batch_size, prog)
    todo = samples[done:]  # starts on a batch boundary: the batches (padding) of one whole run
    for i in range(0, len(todo), chunk):
        partial.append(_ground_chunk(args, model, processor, adapter, spec, refiner,
                                     todo[i:i + chunk], prog))
    records = partial.records()
    missing = [s.id for s in samples if s.id not in records]
    if missing:
        raise fail(f"{partial.path} lacks {len(missing)} groundings (first: {missing[0]})", prog)
    _write_jsonl(args.out, [records[s.id] for s in samples])
    partial.remove()
    resumed = f" ({done} from an interrupted run)" if done else ""
    print(f"wrote {len(samples)} groundings to {args.out}{resumed}")
    return 0


#: batches per chunk of `ground --data --out`: each chunk's records are appended to a partial file
#: as soon as they are made, so a killed run resumes after its last finished chunk
GROUND_CHUNK_BATCHES = 8


def _ground_chunk(args: argparse.Namespace, model: Any, processor: Any, adapter: Any,
                  spec: Any, refiner: Any, samples: list[Any], prog: str) -> list[dict[str, Any]]:
    from lookhere.heads.locate import locate

    try:
        found = locate(model, processor, adapter, spec, samples, batch_size=args.batch_size,
                       grid=parse_grid(args.grid), refiner=refiner, sigma=args.sigma,
                       pixel_masks=args.masks_dir is not None)
    except ValueError as err:
        raise fail(str(err), prog) from None
    records = []
    for s, g in zip(samples, found, strict=True):
        rec: dict[str, Any] = {"id": s.id, "text": s.question, "box": [float(v) for v in g.box]}
        if args.masks_dir is not None:
            rec["mask"] = str(write_mask(g.pixel_mask, args.masks_dir / mask_name(s.id)))
        records.append(rec)
    return records


def _ground_fingerprint(args: argparse.Namespace, model: Any, refiner: Any, samples: list[Any]
                        ) -> dict[str, Any]:
    """What a partial run's records depend on, by content rather than by path: the weights
    (and SAM's), the heads file's bytes, the samples' ids, questions and pixels, and the
    settings. A rerun with any of them changed is refused; it never mixes two runs."""
    import hashlib

    from lookhere.data.sample import samples_digest
    from lookhere.models.fingerprint import weights_digest

    return {"weights_sha256": weights_digest(model),
            "heads_sha256": hashlib.sha256(Path(args.heads).read_bytes()).hexdigest(),
            "samples_sha256": samples_digest(samples), "grid": args.grid,
            "sigma": args.sigma, "batch_size": args.batch_size,
            "sam_sha256": None if refiner is None else weights_digest(refiner.model),
            "masks_dir": None if args.masks_dir is None else str(args.masks_dir)}


class _Partial:
    """``.<out>.partial``: a JSONL whose first line is the run's fingerprint, then one record per
    grounded sample, appended and fsynced chunk by chunk. Only appends touch it in place; its
    header and its trimming are written atomically, so a kill at any moment leaves a header."""

    def __init__(self, out: Path, fingerprint: dict[str, Any]) -> None:
        self.path = out.parent / f".{out.name}.partial"
        self.fingerprint = fingerprint

    def open(self, samples: list[Any], batch_size: int, prog: str) -> int:
        """How many leading samples an interrupted run of the same settings grounded, in whole
        batches (or all of them); the file is trimmed to exactly their records."""
        header = json.dumps({"fingerprint": self.fingerprint}) + "\n"
        if not self.path.exists():
            self._write(header)
            return 0
        lines = self.path.read_text(encoding="utf-8").split("\n")
        try:
            saved = json.loads(lines[0]).get("fingerprint")
        except (json.JSONDecodeError, AttributeError):
            saved = None
        if saved != self.fingerprint:
            keys = self.fingerprint.keys() | (saved.keys() if isinstance(saved, dict) else set())
            diff = sorted(k for k in keys if not isinstance(saved, dict)
                          or saved.get(k) != self.fingerprint.get(k))
            raise fail(f"{self.path} holds an interrupted run with other weights, heads, samples "
                       f"or settings (differs in {diff}); delete it to start over", prog)
        records = _parse_records(lines[1:])  # without a line a kill cut short
        done = 0
        while done < len(samples) and samples[done].id in records:
            done += 1
        if done < len(samples):  # a chunk cut short: back to its last whole batch
            done -= done % batch_size
        self._write(header + "".join(json.dumps(records[s.id]) + "\n" for s in samples[:done]))
        return done

    def _write(self, text: str) -> None:
        from lookhere.io import atomic_path

        with atomic_path(self.path) as tmp:
            tmp.write_text(text, encoding="utf-8")

    def records(self) -> dict[str, dict[str, Any]]:
        return _parse_records(self.path.read_text(encoding="utf-8").split("\n")[1:])

    def append(self, records: list[dict[str, Any]]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _parse_records(lines: list[str]) -> dict[str, dict[str, Any]]:
    """Records by id from a partial file's lines after its header."""
    out = {}
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill: that sample is grounded again
        if isinstance(rec, dict) and isinstance(rec.get("id"), str):
            out[rec["id"]] = rec
    return out


def _ground_samples(args: argparse.Namespace, prog: str) -> list[Any]:
    if args.data is not None:
        if args.text is not None:
            raise fail("--text only applies with --image (the --data samples' questions are "
                       "the expressions)", prog)
        return read_data(args.data, args.limit, prog)
    if args.limit is not None:
        raise fail("--limit only applies with --data", prog)
    if args.text is None or not args.text.strip():
        raise fail("--image needs --text, a non-empty referring expression", prog)
    return [_image_sample(args.image, args.text, prog)]


def _image_sample(path: Path, text: str, prog: str) -> Any:
    from lookhere.data.sample import Geometry, Sample

    return Sample(image=read_image(path, prog), question=text, answer="", structured={},
                  geometry=Geometry(), id=path.stem)


def mask_name(sample_id: str) -> str:
    """A file name for a sample's mask: the id with anything but [A-Za-z0-9._-] as ``_``."""
    from lookhere.io import safe_name

    return safe_name(sample_id) + ".png"


def write_mask(mask: Any, path: Path) -> Path:
    """An (H, W) bool mask as an 8-bit PNG (0 / 255), written atomically."""
    import numpy as np
    from PIL import Image

    from lookhere.io import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).save(tmp, format="PNG")
    return path


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    from lookhere.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")


# ---------------------------------------------------------------------------------------------
