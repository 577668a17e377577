"""The experiments' configs, torch-free: `TrainSpec` (the model an experiment trains, checked
against its size preset or checkpoint config before anything is built), `ExperimentConfig`
(their JSON), `ShapesExperiment` (the Shapes settings of the heads and lens experiments), and
each experiment's: `KLALExperimentConfig`, `HeadsExperimentConfig`, `LensExperimentConfig`,
`PretrainedEvalConfig`. The commands build their options from these, so ``--help`` shows every
default, validated, without importing torch or transformers; each experiment module names its
config too (`lookhere.experiment.klal`, ...), beside the run it configures."""

from __future__ import annotations

import dataclasses
import functools
import json
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from lookhere.config.layers import resolve_layers
from lookhere.config.shipped import PREFIX, SHIPPED, pretrained_path, resolve
from lookhere.config.sizes import resolve_size
from lookhere.data.synthetic.shapes import ShapesConfig
from lookhere.eval.methods import BASELINES, DEFAULT_BASELINES
from lookhere.losses.config import KLALConfig, LLLConfig, TargetConfig
from lookhere.maps import parse_threshold

if TYPE_CHECKING:
    import torch


# --------------------------------------------------------------------------- training

@dataclass(frozen=True)
class ModelShape:
    """What an experiment checks of its model before building it."""

    family: str
    layers: int  # language-model layers
    heads: int  # attention heads per language-model layer
    image_size: int  # the vision input side, px
    patch_size: int


@dataclass(frozen=True)
class TrainSpec:
    """The model an experiment trains: a fresh tiny VLM (``family``, ``size``, random weights
    from ``seed``) or, with ``init``, a checkpoint fine-tuned; the training data seed and the
    optimiser (AdamW, cosine schedule with linear warm-up). Two runs with equal specs train the
    same initial weights on the same batches in the same order."""

    family: str = field(default="llava", metadata={"help": "model family (architecture)"})
    size: str = field(default="demo", metadata={"help": "tiny size preset (models.tiny)"})
    image_size: int = field(default=112, metadata={
        "help": "image side in px; must equal the model's input size"})
    steps: int = field(default=1000, metadata={"help": "optimizer steps per trained model"})
    batch_size: int = field(default=8, metadata={"help": "samples per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    warmup_ratio: float = field(default=0.05, metadata={"help": "linear warm-up share"})
    seed: int = field(default=0, metadata={
        "help": "model init and training seed; fine-tuning a checkpoint (init), also the order "
                "of the batches, the only thing a seed can change there"})
    data_seed: int = field(default=0, metadata={
        "help": "training data seed; held-out data use data_seed + 10000"})
    init: str = field(default="", metadata={
        "help": "fine-tune this checkpoint (a model folder, or lookhere:llava-mini, the shipped "
                "pretrained miniature) instead of training a fresh tiny model from scratch; its "
                "architecture replaces family and size"})

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.lr < 1:  # NaN fails too, before any training step
            raise ValueError(f"lr must be in (0, 1), got {self.lr!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        side = self.shape.image_size
        if side != self.image_size:
            raise ValueError(f"image_size {self.image_size} must equal the {self.model_name!r} "
                             f"model's input size {side}")

    @property
    def shape(self) -> ModelShape:
        """The model's family, layers and input geometry, from the size preset or the
        checkpoint's config (no weights read)."""
        if self.init:
            return checkpoint_shape(self.init)
        size = resolve_size(self.size)
        return ModelShape(self.family, size.layers, size.heads, size.image_size, size.patch_size)

    def describe(self, count: str = "a") -> str:
        """How the models start and train, for reports: ``count`` models "fine-tuned from the
        checkpoint X" or "tiny <family> models (preset P) trained from scratch"."""
        shape = self.shape
        arch = f"{shape.layers} LLM layers of {shape.heads} heads"
        models = "model" if count.lower() in ("a", "one") else "models"
        if self.init:
            return (f"{count} {models} fine-tuned {self.steps} steps (lr {self.lr:g}) from the "
                    f"pretrained checkpoint {self.init} ({arch})")
        return (f"{count} tiny {self.family} {models} (preset {self.size}, {arch}) trained "
                f"{self.steps} steps (lr {self.lr:g}) from scratch")

    @property
    def model_name(self) -> str:
        """The checkpoint fine-tuned, or ``tiny-<family>-<size>``."""
        return self.init or f"tiny-{self.family}-{self.size}"

    @property
    def samples(self) -> int:
        """Training samples seen: steps x batch size."""
        return self.steps * self.batch_size

    def build_model(self) -> tuple[torch.nn.Module, Any]:
        """The initial (model, processor): the checkpoint ``init`` (fp32, SDPA), or random
        weights from ``seed``."""
        import torch

        if self.init:
            from lookhere.models.loading import load_model

            model, processor, _ = load_model(self.init, dtype=torch.float32)
            return model, processor
        from lookhere.models.tiny import build_tiny

        return build_tiny(self.family, self.size, seed=self.seed)


@functools.lru_cache(maxsize=16)
def checkpoint_shape(name_or_path: str) -> ModelShape:
    """`ModelShape` of a checkpoint (a folder, a hub id or ``lookhere:<name>``), from its config;
    an unreadable or unsupported one is a ValueError naming ``init``. A shipped checkpoint's
    config.json is read as it is, its family from `SHIPPED`, so that a config fine-tuning it
    (the demo's) builds without transformers; any other is read through transformers'
    AutoConfig, which fills in what a saved config leaves out (values at their defaults)."""
    try:
        if name_or_path.startswith(PREFIX):
            return _shipped_shape(name_or_path)
        return _config_shape(name_or_path)
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as err:
        raise ValueError(f"init {name_or_path!r}: not a checkpoint of a supported VLM with one "
                         f"fixed input size ({err})") from None


def _shipped_shape(name: str) -> ModelShape:
    """A shipped checkpoint's shape from its config.json (tests check it against
    `_config_shape`: every value it reads is written there)."""
    config = json.loads((pretrained_path(name) / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    return ModelShape(SHIPPED[name.removeprefix(PREFIX)], text["num_hidden_layers"],
                      text["num_attention_heads"], vision["image_size"], vision["patch_size"])


def _config_shape(name_or_path: str) -> ModelShape:
    from transformers import AutoConfig

    from lookhere.models.adapter import get_adapter

    config = AutoConfig.from_pretrained(resolve(name_or_path))
    vision, text = config.vision_config, config.text_config
    return ModelShape(get_adapter(config).family, text.num_hidden_layers,
                      text.num_attention_heads, vision.image_size, vision.patch_size)


# --------------------------------------------------------------------------- every experiment


class ExperimentConfig:
    """JSON for a frozen experiment-config dataclass whose fields may be config dataclasses
    (`TrainSpec`, `KLALConfig`, `LLLConfig`, `TargetConfig`): ``to_json`` nests them;
    ``from_json`` reads that, and the flat layout of results files written before the nesting
    (a key that is no field is the nested field of that name; ``RENAMED`` maps the others to
    ``"field.name"``)."""

    RENAMED: ClassVar[dict[str, str]] = {}

    def check_klal_layers(self) -> None:
        """KLAL's layers name layers of the experiment's model: refused before any training,
        not at its first step."""
        klal = getattr(self, "klal", None)
        if klal is not None and klal.layers is not None:
            resolve_layers(klal.layers, self.train.shape.layers)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Any:
        """The config a results file was made with (``results["config"]``)."""
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        nested = {n: hints[n] for n in fields if dataclasses.is_dataclass(hints[n])}
        given: dict[str, Any] = {}
        for key, value in data.items():
            path = key if key in fields else cls.RENAMED.get(key) or _owner(nested, key, cls)
            outer, _, inner = path.partition(".")
            if inner:
                given.setdefault(outer, {})[inner] = value
            else:
                given[outer] = value if outer not in nested else {**given.get(outer, {}),
                                                                   **value}
        kw = {}
        for name, value in given.items():
            if name in nested:
                base = fields[name].default_factory()
                kw[name] = dataclasses.replace(base, **value)
            else:
                kw[name] = tuple(value) if isinstance(value, list) \
                    and typing.get_origin(hints[name]) is tuple else value
        return cls(**kw)


def _owner(nested: dict[str, type], key: str, cls: type) -> str:
    owners = [n for n, t in nested.items() if key in {f.name for f in dataclasses.fields(t)}]
    if len(owners) != 1:
        raise ValueError(f"{cls.__name__}.from_json: unknown key {key!r}")
    return f"{owners[0]}.{key}"


class ShapesExperiment:
    """What the experiments on Shapes (heads, lens) share: the generator settings from the
    config's ``train`` (its image size) and ``shapes_options``, and their samples."""

    # the fields of the config dataclasses this is mixed into
    train: TrainSpec
    shapes_options: dict[str, Any]

    def shapes(self, mode: str) -> dict[str, Any]:
        """The Shapes settings in ``mode`` ('vqa' or 'rec'): `shapes_defaults`, then the
        overrides."""
        return {**shapes_defaults(self.train.image_size), **self.shapes_options, "mode": mode}

    def shapes_samples(self, mode: str, seed: int, n: int, start: int = 0) -> list[Any]:
        """Samples ``start .. start + n`` of the Shapes stream of ``seed`` in ``mode``."""
        from lookhere.data.dataset import TaskDataset
        from lookhere.data.synthetic import make_task

        task = make_task("shapes", seed=seed, **self.shapes(mode))
        return list(TaskDataset(task, n, start).materialise().samples)


def shapes_defaults(image_size: int) -> dict[str, Any]:
    """Shapes settings at the model's input size: 2-4 objects, radii 0.10 / 0.16 of the side so
    a small object (22 px at 112 px) spans about two 14 px patches and an IoU of 0.5 is
    reachable on the 8x8 grid (docs/results.md)."""
    return {"image_size": image_size, "min_objects": 2, "max_objects": 4,
            "small_radius": 0.10, "large_radius": 0.16}


# --------------------------------------------------------------------------- KLAL

#: the paper's synthetic benchmarks (the default, and the demo's), then the real-data analogues
BENCHMARKS = ("grid_patch", "line_intersection", "line_tracing")
TASKS = (*BENCHMARKS, "rec", "point")
KLAL_CONDITIONS = ("ntp", "klal")


def klal_task_defaults(image_size: int) -> dict[str, dict[str, Any]]:
    """Task settings at the model's input size (docs/results.md says how they were chosen).

    Grid Patch is scaled to what a ~1M-parameter model trained from scratch can learn in minutes:
    cells of 2x2 patches (4x4 at 112 px) and 2 distractors, without the grid preamble (a short
    question). The line tasks keep their generators' defaults; ``rec`` draws the other
    experiments' Shapes scenes, ``point`` the pretrained evaluation's Scenes (2-4 objects).
    """
    grid = max(1, image_size // 28)
    return {
        "grid_patch": {"image_size": image_size, "grid_rows": grid, "grid_cols": grid,
                       "num_distractors": 2, "describe_grid": False},
        "line_intersection": {"image_size": image_size},
        "line_tracing": {"image_size": image_size},
        "rec": {**shapes_defaults(image_size), "mode": "rec"},
        "point": {"image_size": image_size, "mode": "instruct", "max_objects": 4,
                  "skills": ("point",)},
    }


POINT_TARGETS = ("point", "mask")


@dataclass(frozen=True)
class KLALExperimentConfig(ExperimentConfig):
    """One NTP vs NTP+KLAL comparison (defaults: `make demo`)."""

    train: TrainSpec = field(default_factory=TrainSpec, metadata={
        "prefix": "", "help": "the tiny model and its training, the same in every condition"})
    tasks: tuple[str, ...] = field(default=BENCHMARKS, metadata={
        "help": f"tasks to run, of {', '.join(TASKS)} ('rec', 'point': the analogues of RefCOCO "
                "and PixMo-Points)"})
    conditions: tuple[str, ...] = field(default=KLAL_CONDITIONS, metadata={
        "help": "'ntp' (KLAL weight 0, monitored) and/or 'klal' (the `klal` term)"})
    klal: KLALConfig = field(default_factory=KLALConfig, metadata={
        "help": "the 'klal' condition's KLAL term ('ntp': the same at weight 0, monitored)"})
    target: TargetConfig = field(default_factory=TargetConfig, metadata={
        "help": "KLAL target-map weights (target cells, their neighbour ring, the floor)"})
    test_samples: int = field(default=500, metadata={"help": "held-out test samples per task"})
    eval_batch_size: int = field(default=50, metadata={"help": "evaluation batch size"})
    max_new_tokens: int = field(default=32, metadata={
        "help": "generation budget per answer (capped by the task's longest answer)"})
    n_maps: int = field(default=3, metadata={"help": "test images per task in the map figure"})
    task_options: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={
        "help": "per-task generator overrides, e.g. {'grid_patch': {'num_distractors': 1}}"})
    save_models: bool = field(default=False, metadata={
        "help": "save each trained model under out/models/<task>/<condition>"})
    point_target: str = field(default="point", metadata={
        "help": "the 'point' task's KLAL target: 'point' (the gold point's cell, all that "
                "PixMo-Points gives) or 'mask' (the object's mask, what the test scores)"})

    def __post_init__(self) -> None:
        if self.point_target not in POINT_TARGETS:
            raise ValueError(f"point_target must be one of {POINT_TARGETS}, "
                             f"got {self.point_target!r}")
        for name in ("test_samples", "eval_batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {self.tasks}")
        bad = [c for c in self.conditions if c not in KLAL_CONDITIONS]
        if bad or not self.conditions:
            raise ValueError(f"conditions must be a non-empty subset of {KLAL_CONDITIONS}, "
                             f"got {self.conditions}")
        for task in self.task_options:
            if task not in TASKS:
                raise ValueError(f"task_options names unknown task {task!r}; tasks: {TASKS}")
        self.check_klal_layers()

    def klal_config(self, condition: str) -> KLALConfig:
        return self.klal.monitored() if condition == "ntp" else self.klal


# --------------------------------------------------------------------------- localization heads

HEADS_CONDITIONS = ("untrained", "ntp", "klal")
#: The experiment's training: 4 LLM layers (the search skips layers 0-1), 1,500 steps.
HEADS_TRAIN = TrainSpec(size="heads", steps=1500)


@dataclass(frozen=True)
class HeadsExperimentConfig(ShapesExperiment, ExperimentConfig):
    """Localization heads of tiny VLMs trained with NTP and NTP+KLAL (defaults: the experiment;
    `make demo` runs a shorter version)."""

    train: TrainSpec = field(default_factory=lambda: HEADS_TRAIN, metadata={
        "prefix": "", "help": "the tiny model and its training (its size needs > 2 LLM layers: "
                              "layers 0-1 are never searched)"})
    conditions: tuple[str, ...] = field(default=HEADS_CONDITIONS, metadata={
        "help": f"models to search: {HEADS_CONDITIONS}"})
    klal: KLALConfig = field(default_factory=KLALConfig, metadata={
        "help": "the 'klal' model's KLAL term (the others: the same at weight 0, monitored)"})
    target: TargetConfig = field(default_factory=TargetConfig, metadata={
        "help": "KLAL target-map weights"})
    search_samples: int = field(default=1000, metadata={
        "help": "REC samples per head search (the paper: 1,000)"})
    search_repeats: int = field(default=3, metadata={
        "help": "searches on disjoint sample sets, for the heads' stability (the first one "
                "gives the heads used)"})
    test_samples: int = field(default=500, metadata={"help": "held-out REC expressions"})
    vqa_samples: int = field(default=500, metadata={"help": "held-out VQA questions"})
    top_k: int = field(default=3, metadata={"help": "localization heads kept (the paper: 3)"})
    per_sample: int = field(default=2, metadata={
        "help": "lowest-entropy heads counted per sample. The paper counts 10 of ~1,000 heads; "
                "10 of the tiny model's 8 candidates would count every head above tau and "
                "void the entropy criterion, so 2 (docs/results.md)"})
    baselines: tuple[str, ...] = field(default=DEFAULT_BASELINES, metadata={
        "help": f"REC baselines, of {BASELINES} ('ceiling': the grounding rule on the object's "
                "own map, what any attention can reach on this grid)"})
    ground_sigma: float = field(default=1.0, metadata={
        "help": "smoothing of the heads' maps before the box, in grid cells (the paper: 1)"})
    eval_batch_size: int = field(default=50, metadata={"help": "search / evaluation batch"})
    n_maps: int = field(default=4, metadata={"help": "held-out examples in the figures"})
    shapes_options: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "overrides of the Shapes generator settings (both VQA and REC)"})
    save_models: bool = field(default=False, metadata={
        "help": "save each trained model under out/models/<condition>"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions", tuple(self.conditions))
        object.__setattr__(self, "baselines", tuple(self.baselines))
        for name in ("search_samples", "search_repeats", "test_samples", "vqa_samples", "top_k",
                     "per_sample", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        bad = [c for c in self.conditions if c not in HEADS_CONDITIONS]
        if bad or not self.conditions:
            raise ValueError(f"conditions must be a non-empty subset of {HEADS_CONDITIONS}, "
                             f"got {self.conditions}")
        bad = [b for b in self.baselines if b not in BASELINES]
        if bad:
            raise ValueError(f"baselines must be a subset of {BASELINES}, got {self.baselines}")
        if not 0 <= self.ground_sigma < float("inf"):
            raise ValueError(f"ground_sigma must be finite and >= 0, got {self.ground_sigma}")
        layers = self.train.shape.layers
        if layers < 3:
            raise ValueError(f"{self.train.model_name!r} has {layers} LLM layers; the search "
                             "skips layers 0-1, so it needs at least 3")
        self.check_klal_layers()

    def klal_config(self, condition: str) -> KLALConfig:
        return self.klal if condition == "klal" else self.klal.monitored()


# --------------------------------------------------------------------------- logit lens

LENS_CONDITIONS = ("ntp", "lll")
#: The experiment's training: the heads experiment's (4 LLM layers, 1,500 steps).
LENS_TRAIN = HEADS_TRAIN


@dataclass(frozen=True)
class LensExperimentConfig(ShapesExperiment, ExperimentConfig):
    """Lens segmentation of tiny VLMs trained with NTP and NTP+LLL (defaults: the experiment)."""

    RENAMED = {"mu": "lll.weight"}  # results files before the nesting

    train: TrainSpec = field(default_factory=lambda: LENS_TRAIN, metadata={
        "prefix": "", "help": "the tiny model and its training, the same in both conditions"})
    conditions: tuple[str, ...] = field(default=LENS_CONDITIONS, metadata={
        "help": f"models to train: {LENS_CONDITIONS} ('ntp': LLL weight 0, monitored)"})
    lll: LLLConfig = field(default_factory=LLLConfig, metadata={
        "help": "the 'lll' model's LLL term ('ntp': the same at weight 0, monitored); its "
                "token_rule also picks the concept tokens of the evaluation"})
    test_samples: int = field(default=300, metadata={
        "help": "held-out images whose concepts are segmented"})
    vqa_samples: int = field(default=300, metadata={"help": "held-out VQA questions"})
    eval_batch_size: int = field(default=50, metadata={"help": "evaluation batch"})
    n_maps: int = field(default=4, metadata={"help": "held-out images in the figure"})
    shapes_options: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "overrides of the Shapes generator settings (training and held-out)"})
    lens_layers: str = field(default="all", metadata={
        "help": "layers whose lens maps are scored: 'all' or comma-separated indices, e.g. "
                "'1,-1' (on the command line, a list that starts with a minus needs '=': "
                "--lens-layers=-1,1)"})
    threshold: str = field(default="mean", metadata={
        "help": "segmentation threshold: 'mean' (cells above the map's mean), 'two_mean', or "
                "a fraction of the map's max in (0, 1), e.g. '0.5'"})
    smooth_sigma: float = field(default=0.0, metadata={
        "help": "Gaussian smoothing of the maps before segmentation and pointing (0: none)"})
    largest_component: bool = field(default=False, metadata={
        "help": "keep only the largest 8-connected component (off: a word may name several "
                "objects)"})
    save_models: bool = field(default=False, metadata={
        "help": "save each trained model under out/models/<condition>"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions", tuple(self.conditions))
        for name in ("test_samples", "vqa_samples", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_maps < 0:
            raise ValueError(f"n_maps must be >= 0, got {self.n_maps}")
        bad = [c for c in self.conditions if c not in LENS_CONDITIONS]
        if bad or not self.conditions or len(set(self.conditions)) != len(self.conditions):
            raise ValueError(f"conditions must be a non-empty subset of {LENS_CONDITIONS}, "
                             f"got {self.conditions}")
        try:
            self.trained_layer  # noqa: B018 - resolves lll.layer, refusing one the model lacks
        except ValueError:
            raise ValueError(f"layer {self.lll.layer} is not a layer of the "
                             f"{self.train.model_name!r} model's {self.train.shape.layers} LLM "
                             "layers") from None
        self.layers()  # validates lens_layers
        parse_threshold(self.threshold)
        if not 0 <= self.smooth_sigma < float("inf"):
            raise ValueError(f"smooth_sigma must be finite and >= 0, got {self.smooth_sigma}")
        ShapesConfig(**self.shapes("vqa"))  # validates shapes_options

    def lll_config(self, condition: str) -> LLLConfig:
        """``lll``: the `lll` term; ``ntp``: the same at weight 0, still computed and logged."""
        if condition == "lll":
            return self.lll
        return dataclasses.replace(self.lll, weight=0.0, monitor=True)

    @property
    def trained_layer(self) -> int:
        """The layer the LLL term trains, non-negative (`resolve_layers`)."""
        return resolve_layers([self.lll.layer], self.train.shape.layers)[0]

    def layers(self) -> tuple[int, ...]:
        """The reported lens layers, non-negative, in the order given."""
        n = self.train.shape.layers
        if self.lens_layers.strip() == "all":
            return tuple(range(n))
        try:
            chosen = [int(v) for v in self.lens_layers.split(",")]
        except ValueError:
            raise ValueError(f"lens_layers must be 'all' or comma-separated layer indices, got "
                             f"{self.lens_layers!r}") from None
        try:
            return resolve_layers(chosen, n)
        except ValueError as err:
            raise ValueError(f"lens_layers: {err}") from None

    def vocabulary(self) -> dict[str, tuple[str, ...]]:
        """Concept words per type: the generator's shape and colour words."""
        cfg = ShapesConfig(**self.shapes("vqa"))
        return {"shape": tuple(cfg.shapes), "colour": tuple(cfg.colours)}


# --------------------------------------------------------------------------- pretrained eval


@dataclass(frozen=True)
class PretrainedEvalConfig:
    seed: int = field(default=0, metadata={"help": "Data seed; held-out splits add offsets."})
    vqa_samples: int = field(default=200, metadata={"help": "Shapes questions per type."})
    skill_samples: int = field(default=200, metadata={"help": "Scenes questions per skill."})
    rec_samples: int = field(default=500, metadata={"help": "Held-out REC expressions."})
    search_samples: int = field(default=1000, metadata={"help": "REC prompts of the search."})
    top_k: int = field(default=3, metadata={"help": "Localization heads kept (the paper: 3)."})
    per_sample: int = field(default=3, metadata={
        "help": "Heads counted per sample by the search's entropy criterion (3 of the mini "
                "model's 24 candidates, about the share of the heads experiment's 2 of 8)."})
    batch_size: int = field(default=32, metadata={"help": "Batch size of every forward."})

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or v < (0 if f.name == "seed" else 1):
                raise ValueError(f"{f.name} must be an int >= {0 if f.name == 'seed' else 1}, "
                                 f"got {v!r}")
