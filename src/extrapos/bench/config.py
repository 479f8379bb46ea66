"""What a bench runs: `BenchConfig`, its presets, and which fields decide which stage.

Presets (flags override their fields):

| preset | methods | seeds | language model | tasks; passkey | for |
|---|---|---|---|---|---|
| quick | the six classics | 1 | 200 steps × 2,048 tokens | selective_copy; 60 steps, 3 depths × 4 keys | a first look, ≤ 5 min on 2 CPU cores |
| standard | every registered encoding | 3 | 300 steps × 2,048 tokens | 3 tasks; 100 steps, 5 depths × 4 keys | the leaderboard |
| literature | the six classics | 1 | 5,000 steps × 2,048 tokens, eval to 32 × L | none | the literature's shapes, ~1.5 h on 2 CPU cores |
| paper | every registered encoding | 3 | 12 layers, d 768, train 512, 20k steps × 16k tokens | 3 tasks × 2k steps; 500 steps, 20 keys | a GPU |
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from extrapos.core.errors import UserError
from extrapos.core.registry import Registry
from extrapos.core.results import RESULTS_VERSION  # noqa: F401  (re-exported)
from extrapos.core.settings import setting
from extrapos.encodings import encoding_class, list_encodings
from extrapos.models.config import GPTConfig
from extrapos.probes.extensions import EXTENSIONS
from extrapos.probes.perplexity import PROTOCOLS
from extrapos.training.config import TrainConfig

CLASSIC_METHODS = ("sinusoidal", "learned", "nope", "rope", "alibi", "t5")

STANDARD_TASKS = ("selective_copy", "sort", "counting")

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "methods": list(CLASSIC_METHODS),
        "seeds": [0],
        "steps": 200,
        "eval_tokens": 8192,
        "extensions": ["linear", "ntk", "dynamic", "yarn"],
        "tasks": ["selective_copy"],
        "passkey_steps": 60,
        "passkey_depths": [0.0, 0.5, 1.0],
        "passkey_trials": 4,
    },
    "standard": {
        "methods": None,
        "seeds": [0, 1, 2],
        "steps": 300,
        "eval_tokens": 16384,
        "tasks": list(STANDARD_TASKS),
        "passkey_trials": 4,
    },
    # sized from a measured sweep (docs/notes/issue-18-note.md): at the quick model shape,
    # RoPE's rise past L is clear from 200 steps on, ALiBi is flat at every budget, and
    # sinusoidal's rise grows with training (×1.24 at 16 L after 300 steps, ×1.72 after 600);
    # 5,000 steps (10M tokens per method) is what 2 CPU cores train six methods in ~70 min at
    # the unloaded 14.6k tokens/s measured for this shape
    "literature": {
        "methods": list(CLASSIC_METHODS),
        "seeds": [0],
        "steps": 5000,
        "eval_lens": [128, 256, 512, 1024, 2048, 4096],
        "eval_tokens": 16384,
        "protocols": ["nonoverlap"],
        "extensions": ["yarn"],
        "tasks": [],
        "passkey_steps": 0,
    },
    "paper": {
        "methods": None,
        "seeds": [0, 1, 2],
        "steps": 20000,
        "train_len": 512,
        "batch_size": 32,
        "lr": 6e-4,
        "n_layer": 12,
        "n_head": 12,
        "d_model": 768,
        "eval_tokens": 262144,
        "tasks": list(STANDARD_TASKS),
        "task_steps": 2000,
        "task_train_len": 16,
        "passkey_steps": 500,
        "passkey_trials": 20,
    },
}

_PRESETS: Registry[dict[str, Any]] = Registry("preset", plural="", ordered=True)
for _name, _settings in PRESETS.items():
    _PRESETS.add(_name, _settings)

# BenchConfig fields by what they set: which runs exist (selection), the language-model runs,
# the task runs, and the passkey fine-tunes. A finished run is kept when its group's fields
# (and, for passkey and cost, the language-model fields) are unchanged.
SELECTION_FIELDS = ("preset", "methods", "seeds", "extensions", "tasks", "memory")
TASK_FIELDS = ("task_train_len", "task_eval_lens", "task_steps", "task_samples")
PASSKEY_FIELDS = ("passkey_steps", "passkey_depths", "passkey_trials")


@dataclass
class BenchConfig:
    """What a bench runs. The defaults are the `quick` preset."""

    preset: str = setting("quick", "the preset whose settings the other fields override")
    methods: list[str] | None = setting(None, "encodings to compare; None: every registered one")
    seeds: list[int] = setting([0], "seeds; each (method, seed) is one run")
    train_len: int = setting(128, "training length (tokens)")
    eval_lens: list[int] | None = setting(
        None, "evaluation lengths; None: 1, 2, 4, 8, 16 × train_len"
    )
    protocols: list[str] = setting(list(PROTOCOLS), "evaluation protocols")
    extensions: list[str] = setting(
        list(EXTENSIONS), "inference-time RoPE extensions applied to the trained rope model"
    )
    steps: int | None = setting(
        250, "training steps per language model (or give train_tokens instead)"
    )
    train_tokens: int | None = setting(
        None, "training tokens per language model: steps = train_tokens / (batch_size × train_len)"
    )
    batch_size: int = setting(16, "sequences per training step")
    lr: float = setting(2e-3, "peak learning rate")
    warmup_steps: int | None = setting(None, "linear warm-up steps; None: steps/10")
    data: str | None = setting(None, "corpus: a text file, a folder or hf:NAME; None: built-in")
    tokenizer: str = setting(
        "byte", "byte or bpe (a byte-level BPE trained on the corpus's train split)"
    )
    vocab_size: int = setting(1024, "BPE vocabulary size (with --tokenizer bpe)")
    n_layer: int = setting(4, "Transformer blocks")
    n_head: int = setting(4, "attention heads")
    d_model: int = setting(128, "model width")
    embed_scale: bool = setting(
        False,
        "token embeddings x sqrt(d_model) in every model (Vaswani et al. 2017 §3.4; with "
        '--encoding-params \'{"sinusoidal": {"scale": 1}}\' the paper\'s sinusoidal recipe)',
    )
    encoding_params: dict[str, dict[str, Any]] = setting(
        {}, 'encoding parameters by method, e.g. \'{"sinusoidal": {"scale": 1.0}}\''
    )
    eval_tokens: int = setting(16384, "targets scored per length (the same at every length)")
    tasks: list[str] = setting([], "synthetic tasks (see `extrapos tasks --list`)")
    task_train_len: int = setting(8, "task sizes 1..N in training")
    task_eval_lens: list[int] | None = setting(
        None, "task sizes scored; None: 1, 2, 4, 8 × task_train_len"
    )
    task_steps: int = setting(300, "training steps per task model")
    task_samples: int = setting(128, "problems per task size")
    passkey_steps: int = setting(100, "passkey fine-tune steps at train_len; 0: no passkey")
    passkey_depths: list[float] = setting([0.0, 0.25, 0.5, 0.75, 1.0], "passkey depths in [0, 1]")
    passkey_trials: int = setting(5, "passkey keys per (length, depth)")
    memory: bool = setting(True, "measure time and peak memory of a forward at the longest length")

    @classmethod
    def from_preset(cls, preset: str = "quick", **overrides: Any) -> BenchConfig:
        """The preset's settings with `overrides` (None values ignored) on top."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise UserError(f"unknown bench setting(s) {', '.join(unknown)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        if "train_tokens" in given and "steps" not in given:
            given["steps"] = None  # the preset's step count gives way to the token budget
        return cls._layered(preset, given)

    @classmethod
    def from_sources(
        cls, preset: str | None = None, config_file: str | None = None, **flags: Any
    ) -> BenchConfig:
        """Preset < config file < flags: the preset (flag, else the file's `preset`, else
        quick), the file's fields on top, the given flags (None values ignored) on top of both.
        The file is JSON or YAML holding any `BenchConfig` field."""
        from extrapos.training.config import check_values, load_config_file

        in_file: dict[str, Any] = {}
        if config_file is not None:
            in_file = load_config_file(config_file)
            known = [f.name for f in fields(cls)]
            unknown = sorted(set(in_file) - set(known))
            if unknown:
                raise UserError(
                    f"{config_file}: unknown bench setting(s) {', '.join(unknown)}; "
                    f"known: {', '.join(known)}"
                )
            check_values(cls, in_file, config_file)
        preset = preset or in_file.pop("preset", None) or "quick"
        in_file.pop("preset", None)
        given = {k: v for k, v in flags.items() if v is not None}
        # a budget given one way (file or flags) replaces the other way from a lower layer
        for layer in (in_file, given):
            if "train_tokens" in layer and "steps" not in layer:
                layer["steps"] = None
            elif "steps" in layer and "train_tokens" not in layer:
                layer["train_tokens"] = None
        return cls._layered(preset, {**in_file, **given})

    @classmethod
    def _layered(cls, preset: str, overrides: dict[str, Any]) -> BenchConfig:
        if preset not in PRESETS:
            raise UserError(f"unknown preset '{preset}'; known: {', '.join(PRESETS)}")
        return cls(preset=preset, **{**PRESETS[preset], **overrides})

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.train_tokens is None):
            raise UserError(
                "give the training budget one way: --steps N or --train-tokens N (steps = "
                f"tokens / (batch_size × train_len)), not {'both' if self.steps else 'neither'}"
            )
        if self.train_tokens is not None:
            per_step = self.batch_size * self.train_len
            if self.train_tokens < per_step:
                raise UserError(
                    f"train_tokens={self.train_tokens} is below one step of {per_step} tokens "
                    "(batch_size × train_len); raise --train-tokens"
                )
            self.steps = round(self.train_tokens / per_step)
        if self.tokenizer not in ("byte", "bpe"):
            raise UserError(f"unknown tokenizer {self.tokenizer!r}; choose byte or bpe")
        if self.vocab_size < 257 and self.tokenizer == "bpe":
            raise UserError(f"vocab_size must be > 256 for bpe, got {self.vocab_size}")
        if self.methods is None:
            self.methods = list_encodings()
        if not self.methods:
            raise UserError("no methods selected; pass --methods with names from `extrapos list`")
        for method in self.methods:
            encoding_class(method)  # unknown -> UserError listing the known names
        if not isinstance(self.encoding_params, dict) or not all(
            isinstance(v, dict) for v in self.encoding_params.values()
        ):
            raise UserError(
                "encoding_params must map method names to parameter objects, e.g. "
                f'{{"sinusoidal": {{"scale": 1.0}}}}, got {self.encoding_params!r}'
            )
        unused = sorted(set(self.encoding_params) - set(self.methods))
        if unused:
            raise UserError(
                f"encoding_params names {', '.join(unused)}, which --methods does not select"
            )
        for name, values in (
            ("methods", self.methods),
            ("seeds", self.seeds),
            ("extensions", self.extensions),  # a twice-listed one made a fake +- 0 interval
            ("protocols", self.protocols),
        ):
            if len(set(values)) != len(values):
                raise UserError(f"--{name} lists an entry twice: {values}")
        if not self.seeds:
            raise UserError("--seeds needs at least one seed")
        for protocol in self.protocols:
            if protocol not in PROTOCOLS:
                raise UserError(f"unknown protocol '{protocol}'; known: {', '.join(PROTOCOLS)}")
        if not self.protocols:
            raise UserError("--protocols needs at least one protocol")
        for ext in self.extensions:
            if ext not in EXTENSIONS:
                raise UserError(f"unknown RoPE extension '{ext}'; known: {', '.join(EXTENSIONS)}")
        if self.eval_lens is None:
            self.eval_lens = [self.train_len * f for f in (1, 2, 4, 8, 16)]
        if not self.eval_lens or min(self.eval_lens) < 1:
            raise UserError(f"--eval-lens must be positive lengths, got {self.eval_lens}")
        self.eval_lens = sorted(set(self.eval_lens))
        if self.eval_tokens < max(self.eval_lens):
            raise UserError(
                f"eval_tokens={self.eval_tokens} is below the longest eval length "
                f"{max(self.eval_lens)}; raise --eval-tokens"
            )
        from extrapos.data.tasks import get_task

        for task in self.tasks:
            get_task(task)  # unknown -> UserError listing the known tasks
        if len(set(self.tasks)) != len(self.tasks):
            raise UserError(f"--tasks lists a task twice: {self.tasks}")
        for name in ("task_train_len", "task_steps", "task_samples", "passkey_trials"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.passkey_steps < 0:
            raise UserError(f"passkey_steps must be >= 0 (0: no passkey), got {self.passkey_steps}")
        if self.task_eval_lens is None:
            self.task_eval_lens = [self.task_train_len * f for f in (1, 2, 4, 8)]
        if not self.task_eval_lens or min(self.task_eval_lens) < 1:
            raise UserError(f"task_eval_lens must be positive sizes, got {self.task_eval_lens}")
        self.task_eval_lens = sorted(set(self.task_eval_lens))
        if not self.passkey_depths or not all(0 <= d <= 1 for d in self.passkey_depths):
            raise UserError(f"passkey_depths must lie in [0, 1], got {self.passkey_depths}")
        # the model and train configs validate the rest
        self.model_config("nope", vocab_size=self.vocab_size)
        for method in self.encoding_params:  # unknown or invalid parameters, named now
            from extrapos.encodings.registry import build_for_model

            cfg = self.model_config(method)
            build_for_model(
                method,
                cfg.encoding_params,
                d_model=cfg.d_model,
                num_heads=cfg.n_head,
                head_dim=cfg.head_dim,
                num_layers=cfg.n_layer,
                d_ff=cfg.d_ff,
            )
        self.train_config(self.seeds[0])

    @property
    def total_steps(self) -> int:
        assert self.steps is not None  # resolved in __post_init__
        return self.steps

    def model_config(self, method: str, vocab_size: int | None = None) -> GPTConfig:
        """The model of `method`; `vocab_size`: the tokenizer's (default: byte's 256, or
        this config's `vocab_size` for bpe)."""
        params: dict[str, Any] = {}
        if method == "learned":
            params["max_len"] = max(max(self.eval_lens or [0]), self.train_len)
        params.update(self.encoding_params.get(method, {}))
        if vocab_size is None:
            vocab_size = self.vocab_size if self.tokenizer == "bpe" else 256
        return GPTConfig(
            vocab_size=vocab_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            d_model=self.d_model,
            encoding=method,
            encoding_params=params,
            embed_scale=self.embed_scale,
        )

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(
            train_len=self.train_len,
            batch_size=self.batch_size,
            steps=self.total_steps,
            lr=self.lr,
            warmup_steps=(
                self.warmup_steps
                if self.warmup_steps is not None
                else max(1, self.total_steps // 10)
            ),
            seed=seed,
        )

    def settings(self) -> dict[str, Any]:
        """What must match for a finished language-model run to be reused: every field that is
        not a selection of runs nor a task or passkey setting."""
        skip = {*SELECTION_FIELDS, *TASK_FIELDS, *PASSKEY_FIELDS}
        out = {k: v for k, v in asdict(self).items() if k not in skip}
        # fields added later are left out at their neutral value, so that results written
        # before them still match (and merge) when nothing changed
        for name, neutral in (
            ("train_tokens", None),
            ("warmup_steps", None),
            ("embed_scale", False),
            ("encoding_params", {}),
        ):
            if out[name] == neutral:
                del out[name]
        if self.tokenizer != "bpe":
            del out["vocab_size"]
        return out

    def task_settings(self) -> dict[str, Any]:
        from extrapos.bench.stages import TASK_MODEL

        return {**{k: getattr(self, k) for k in TASK_FIELDS}, "model": TASK_MODEL}

    def passkey_settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in PASSKEY_FIELDS}
