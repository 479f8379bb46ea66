"""Run configuration: typed dataclasses, config files and command-line overrides.

A run is four sections, each a dataclass validated on creation (a bad value raises `UserError`
naming the field, e.g. `train.lr must be > 0, got 0`):

    model   GPTConfig    (extrapos.models.gpt)   shape and positional encoding
    train   TrainConfig                     optimization, precision, checkpoints, device
    data    DataConfig                      corpus spec and tokenizer
    eval    EvalConfig                      periodic validation during training

A config file (JSON, or YAML when `pyyaml` is installed) holds any subset of the sections:

    {"model": {"encoding": "alibi", "n_layer": 4},
     "train": {"steps": 2000, "lr": 1e-3, "precision": "bf16"},
     "data": {"name": "hf:wikitext:wikitext-103-raw-v1", "tokenizer": "bpe", "vocab_size": 8192},
     "eval": {"every": 200}}

Precedence, lowest first: dataclass defaults < the config file < `--set SECTION.FIELD=VALUE`
< named command-line flags. A run directory's `config.json` is itself a valid config file (its
recorded provenance — corpus statistics, tokenizer hash — is checked or ignored), so
`extrapos train --config runs/a/config.json --out runs/b` repeats run `a`.
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from extrapos.core.errors import UserError
from extrapos.core.settings import check_known_fields, setting
from extrapos.models.config import GPTConfig

Precision = Literal["fp32", "bf16"]
LossOn = Literal["all", "responses"]  # extrapos.data.dialogue.LossOn
TokenizerName = Literal["byte", "bpe"]
Objective = Literal["lm", "mlm"]

SECTIONS = ("model", "train", "data", "eval")
# keys a run's config.json records for provenance; accepted in config files, not settings
_PROVENANCE = {"tokenizer"}


def check_types(obj: Any, section: str) -> None:
    """Raise `UserError` if a field of dataclass `obj` does not match its annotation."""
    check_values(type(obj), {f.name: getattr(obj, f.name) for f in fields(obj)}, section)


def check_values(cls: type, values: dict[str, Any], section: str) -> None:
    """Raise `UserError` naming `section.field` if a value does not match the annotation of
    that field of dataclass `cls` (only the fields present in `values` are checked)."""
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        if name in hints and not _matches(value, hints[name]):
            raise UserError(
                f"{section}.{name} must be {_describe(hints[name])}, got {value!r}; fix the value"
            )


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if origin is list or hint is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value if args)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if hint is type(None):
        return "null"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if hint in names:
        return names[hint]
    if origin is dict or hint is dict:
        return "an object"
    if origin is list:
        return f"a list of {_describe(args[0])}"
    return getattr(hint, "__name__", str(hint))


@dataclass
class TrainConfig:
    """Optimization settings. Validated on creation; saved beside every run.

    `batch_size` is the global batch: sequences per optimizer step, summed over data-parallel
    ranks and gradient-accumulation micro-steps (each rank runs `batch_size / (world_size ·
    grad_accum)` sequences per micro-step), so changing either leaves the optimization the same.
    """

    train_len: int = setting(128, "training sequence length (tokens)")
    batch_size: int = setting(16, "global batch: sequences per optimizer step over all ranks")
    steps: int = setting(400, "optimizer steps")
    lr: float = setting(2e-3, "peak learning rate")
    min_lr_ratio: float = setting(0.1, "cosine floor as a fraction of lr")
    warmup_steps: int | None = setting(None, "linear warm-up steps; None: steps/10")
    weight_decay: float = setting(0.1, "AdamW weight decay")
    grad_clip: float = setting(1.0, "gradient-norm clip; 0: off (the norm is still logged)")
    grad_accum: int = setting(1, "micro-steps per optimizer step")
    objective: Objective = setting(
        "lm",
        "lm: next-token prediction (a causal decoder); mlm: BERT masked-token prediction, 15% "
        "of positions, 80/10/10 (a bidirectional encoder: causal=False is set for you)",
    )
    precision: Precision = setting(
        "fp32", "bf16: autocast matmuls (weights, optimizer, loss and positional math stay fp32)"
    )
    compile: bool = setting(False, "torch.compile the model for training steps")
    seed: int = setting(0, "seed of initialization and batches")
    save_every: int = setting(0, "checkpoint every N steps; 0: at the end only")
    keep_last: int = setting(1, "step checkpoints kept in RUN_DIR/checkpoints; 0: all")
    device: str = setting(
        "auto", "auto (cuda:LOCAL_RANK when CUDA is available, else cpu), cpu, cuda, cuda:N"
    )
    tensorboard: bool = setting(
        False, "also log to RUN_DIR/tb (needs tensorboard); log.csv is always written"
    )
    loss_on: LossOn = setting(
        "all", "loss targets: every token, or on a dialogue folder the response turns only"
    )

    def __post_init__(self) -> None:
        check_types(self, "train")
        for name in ("lr", "min_lr_ratio", "weight_decay", "grad_clip"):
            if not math.isfinite(getattr(self, name)):  # NaN passes every comparison below
                raise UserError(f"train.{name} must be a finite number, got {getattr(self, name)}")
        if self.warmup_steps is None:
            self.warmup_steps = max(1, self.steps // 10)
        for name in ("train_len", "batch_size", "steps", "grad_accum"):
            if getattr(self, name) < 1:
                raise UserError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "save_every", "keep_last"):
            if getattr(self, name) < 0:
                raise UserError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UserError(f"train.lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise UserError("train.weight_decay and grad_clip must be >= 0")
        if self.batch_size % self.grad_accum:
            raise UserError(
                f"train.batch_size={self.batch_size} must be divisible by "
                f"grad_accum={self.grad_accum} (it is the global batch per optimizer step)"
            )
        if not (self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps")):
            raise UserError(
                f"train.device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data, "train")

    def trajectory(self) -> dict[str, Any]:
        """The fields that decide the weights a run reaches (what a resume must keep equal).
        Checkpointing, device, compilation, logging and the accumulation split are free."""
        free = {"save_every", "keep_last", "compile", "device", "tensorboard", "grad_accum"}
        return {k: v for k, v in asdict(self).items() if k not in free}


@dataclass
class EvalConfig:
    """Periodic validation on the valid split while training.

    Every `every` steps (and at the last), the mean next-token loss over the first `max_tokens`
    targets of the valid split, in non-overlapping windows of `length` tokens (default
    `train_len`) — the same windows each time, so the curve is comparable across steps.
    """

    every: int | None = setting(
        None, "validation loss every N steps; None: steps/10; 0: never", flag="eval-every"
    )
    max_tokens: int = setting(16384, "valid targets per validation", flag="eval-tokens")
    length: int | None = None

    def __post_init__(self) -> None:
        check_types(self, "eval")
        if self.every is not None and self.every < 0:
            raise UserError(f"eval.every must be >= 0, got {self.every}")
        if self.max_tokens < 1:
            raise UserError(f"eval.max_tokens must be >= 1, got {self.max_tokens}")
        if self.length is not None and self.length < 1:
            raise UserError(f"eval.length must be >= 1, got {self.length}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalConfig:
        return _from_dict(cls, data, "eval")

    def resolved(self, train: TrainConfig) -> EvalConfig:
        """A copy with `every` and `length` filled from the training settings."""
        every = max(1, train.steps // 10) if self.every is None else self.every
        return EvalConfig(every, self.max_tokens, self.length or train.train_len)


@dataclass
class DataConfig:
    """Which corpus and tokenizer: `name` as `load_corpus` takes it (builtin, a path, a glob,
    hf:NAME[:CONFIG]); `tokenizer` byte or bpe with `vocab_size` (bpe default 1024).

    `content_hash`, when set (a run's config.json records it), is compared with the loaded
    corpus: a different corpus under the same name is reported.
    """

    name: str = setting(
        "builtin",
        "'builtin', a text file, a folder, a quoted glob ('dir/*.txt'), or hf:NAME[:CONFIG] "
        "(a Hugging Face dataset, e.g. hf:wikitext:wikitext-103-raw-v1)",
        flag="data",
    )
    tokenizer: TokenizerName = setting("byte", "byte, or bpe trained on the train split")
    vocab_size: int | None = setting(None, "bpe vocabulary size; None: 1024")
    content_hash: str | None = None

    def __post_init__(self) -> None:
        check_types(self, "data")
        if self.tokenizer == "byte" and self.vocab_size not in (None, 256):
            raise UserError(
                f"data.vocab_size={self.vocab_size} needs tokenizer bpe (byte has 256); "
                "set tokenizer to bpe or drop vocab_size"
            )
        if self.vocab_size is not None and self.vocab_size < 256:
            raise UserError(f"data.vocab_size must be >= 256, got {self.vocab_size}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        data = {k: v for k, v in data.items() if k != "splits"}  # recorded statistics
        return _from_dict(cls, data, "data")

    def tokenizer_options(self) -> dict[str, Any]:
        """Keyword options for `build_tokenizer(self.tokenizer, ...)` (without the corpus)."""
        if self.tokenizer == "bpe":
            return {"vocab_size": self.vocab_size or 1024}
        return {}


@dataclass
class RunConfig:
    """The four sections of a training run."""

    model: GPTConfig
    train: TrainConfig
    data: DataConfig
    eval: EvalConfig

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | None = None) -> RunConfig:
        """Build and validate from a nested dict; errors name the field (and `where`, e.g.
        "config file cfg.json", when given)."""
        label = where or "config"
        if not isinstance(data, dict):
            raise UserError(f"{label} must be an object with sections {', '.join(SECTIONS)}")
        unknown = sorted(set(data) - set(SECTIONS) - _PROVENANCE)
        if unknown:
            raise UserError(
                f"{label} has unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}"
            )
        for name in SECTIONS:
            if not isinstance(data.get(name, {}), dict):
                raise UserError(f"{label}: section {name!r} must be an object")
        try:
            model = data.get("model", {})
            if "encoding" not in model:
                raise UserError(
                    "model.encoding is not set; pass --encoding NAME or set it in the config file"
                )
            train = TrainConfig.from_dict(data.get("train", {}))
            model = _model_for_objective(model, train.objective)
            return cls(
                model=_from_dict(GPTConfig, model, "model"),
                train=train,
                data=DataConfig.from_dict(data.get("data", {})),
                eval=EvalConfig.from_dict(data.get("eval", {})),
            )
        except UserError as exc:
            if where is None:
                raise
            raise UserError(f"{where}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {name: asdict(getattr(self, name)) for name in SECTIONS}


def _model_for_objective(model: dict[str, Any], objective: str) -> dict[str, Any]:
    """The model section for `objective`: mlm trains an encoder, so it sets causal=False (an
    explicit causal=True is refused); lm leaves the section as it is."""
    if objective != "mlm":
        return model
    if model.get("causal", False) is not False:
        raise UserError(
            f"train.objective=mlm trains a bidirectional encoder, but model.causal is "
            f"{model['causal']!r}; drop model.causal (mlm sets it to false) or use --objective lm"
        )
    return {**model, "causal": False}


def _from_dict(cls: type, data: dict[str, Any], section: str) -> Any:
    check_known_fields(cls, data, section)
    if cls is GPTConfig:  # not ours to change; check its field types before it computes
        check_values(cls, data, section)
    try:
        return cls(**data)
    except UserError:
        raise
    except (TypeError, ValueError) as exc:
        raise UserError(f"{section}: {exc}") from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML (`.yaml`/`.yml`, needs pyyaml) config file into a nested dict."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; check the path")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise UserError(
                f"config file {path} is YAML, which needs pyyaml; pip install pyyaml (or "
                "write the config as JSON)"
            ) from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            message = " ".join(str(exc).split())
            raise UserError(f"config file {path} is not valid YAML: {message}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"config file {path} is not valid JSON ({exc}); fix it") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold an object with sections {SECTIONS}")
    return data


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """`["train.lr=1e-3", "model.encoding_params={\"base\": 500}"]` -> nested dict. Values are
    read as JSON when they parse (numbers, true/false/null, objects), else as strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise UserError(
                f"--set {item!r} must look like SECTION.FIELD=VALUE, e.g. train.lr=1e-3"
            )
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(section, {})[name] = value
    return out


def merge(base: dict[str, Any], *overrides: dict[str, Any]) -> dict[str, Any]:
    """Section-wise merge: later dicts override earlier ones field by field."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for over in overrides:
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = {**out[key], **value}
            else:
                out[key] = value
    return out


__all__ = [
    "DataConfig",
    "EvalConfig",
    "Objective",
    "Precision",
    "RunConfig",
    "TrainConfig",
    "check_types",
    "check_values",
    "load_config_file",
    "merge",
    "parse_assignments",
]
