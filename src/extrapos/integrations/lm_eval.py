"""An lm-evaluation-harness model for extrapos runs, whatever their encoding.

    from extrapos.integrations.lm_eval import ExtraposLM
    lm = ExtraposLM("runs/alibi")            # or ExtraposLM(model=gpt, max_length=512)
    lm_eval.simple_evaluate(model=lm, tasks=["wikitext"])

Also registered with the harness as `extrapos` (`lm_eval --model extrapos --model_args
run=runs/alibi,max_length=512` once this module is imported, e.g. through `extrapos lm-eval`).

Scoring (log-probabilities in nats, from the model's own tokenizer; extrapos tokenizers have
no BOS token, so the first token of a text is never scored — there is nothing to condition it on):

- `loglikelihood(context, continuation)`: Σ log p(continuation tokens | context), keeping the
  last `max_length` inputs, and whether greedy decoding would give the continuation.
- `loglikelihood_rolling(text)`: Σ log p(t_i | t_<i) over i ≥ 1 in non-overlapping windows of
  `max_length` inputs (window k: inputs [kL, kL+L), targets [kL+1, kL+L+1)) — exactly the
  `nonoverlap` protocol of `extrapos eval` — plus, when the text does not end on a window
  boundary, one last window of the final L inputs scoring only the targets not yet scored.
  So on a text of 1 + k·L tokens it equals `extrapos eval --lengths L` on that text.
- `generate_until(context, {"until", "max_gen_toks"})`: greedy decoding (KV cache where the
  encoding supports it), cut at the first stop string.

`max_length` defaults to the run's training length; set it higher to score with the
extrapolated context length the bench measures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from extrapos.core.errors import UserError


@register_model("extrapos")
class ExtraposLM(LM):
    def __init__(
        self,
        run: str | Path | None = None,
        model: Any = None,
        tokenizer: Any = None,
        max_length: int | str | None = None,
        batch_size: int | str = 1,
        device: str = "cpu",
        max_gen_toks: int = 256,
        **_ignored: Any,
    ) -> None:
        super().__init__()
        if (run is None) == (model is None):
            raise UserError("ExtraposLM needs exactly one of run=RUN_DIR or model=GPT")
        train_len = None
        if run is not None:
            from extrapos.training.run_dir import load_run

            loaded = load_run(run)
            model, tokenizer = loaded.model, loaded.tokenizer
            train_len = loaded.config.get("train", {}).get("train_len")
        if tokenizer is None:
            raise UserError("ExtraposLM(model=...) needs tokenizer=...; or load a run directory")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.max_length = int(max_length or train_len or 512)
        if self.max_length < 1:
            raise UserError(f"max_length must be >= 1, got {self.max_length}")
        self.model.encoding.check_positions(self.max_length - 1)
        self._device = torch.device(device)
        self.max_gen_toks = int(max_gen_toks)

    # -- helpers -------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).tolist()

    @torch.inference_mode()
    def _logprobs(self, inputs: list[int]) -> torch.Tensor:
        """(len(inputs), V) log-probabilities of the next token after each input."""
        idx = torch.tensor([inputs], dtype=torch.long, device=self._device)
        return F.log_softmax(self.model(idx)[0].float(), dim=-1)

    def _score_window(self, window: list[int], first_target: int) -> float:
        """Σ log p(window[j] | window[:j]) for j ≥ first_target (window = inputs + 1)."""
        logp = self._logprobs(window[:-1])
        targets = torch.tensor(window[1:], device=logp.device)
        picked = logp.gather(1, targets[:, None])[:, 0]
        return float(picked[first_target - 1 :].double().sum())

    # -- the harness interface -------------------------------------------------------------

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple]:
        out = []
        for request in tqdm(requests, disable=disable_tqdm, desc="loglikelihood"):
            context, continuation = request.args
            ctx, cont = self._encode(context), self._encode(continuation)
            if not cont:
                out.append((0.0, True))
                continue
            tokens = (ctx + cont)[-(self.max_length + 1) :]
            n = min(len(cont), len(tokens) - 1)  # with no context the first token is unscored
            if n <= 0:
                out.append((0.0, True))
                continue
            logp = self._logprobs(tokens[:-1])[-n:]
            targets = torch.tensor(tokens[-n:], device=logp.device)
            total = float(logp.gather(1, targets[:, None]).double().sum())
            greedy = bool((logp.argmax(-1) == targets).all())
            out.append((total, greedy))
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        out = []
        length = self.max_length
        for request in tqdm(requests, disable=disable_tqdm, desc="loglikelihood_rolling"):
            tokens = self._encode(request.args[0])
            total, scored = 0.0, 0  # targets 1..scored are done
            for start in range(0, len(tokens) - length, length):
                total += self._score_window(tokens[start : start + length + 1], 1)
                scored = start + length
            if scored < len(tokens) - 1:  # the tail: the last L inputs, new targets only
                start = max(0, len(tokens) - 1 - length)
                window = tokens[start:]
                total += self._score_window(window, scored - start + 1)
            out.append(total)
        return out

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        out = []
        for request in tqdm(requests, disable=disable_tqdm, desc="generate_until"):
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            ctx = self._encode(context)[-self.max_length :] or [0]
            room = max(0, self.max_length - len(ctx))
            if room == 0:
                ctx = ctx[-(self.max_length - 1) :] if self.max_length > 1 else ctx
                room = self.max_length - len(ctx)
            idx = torch.tensor([ctx], dtype=torch.long, device=self._device)
            with torch.inference_mode():
                full = self.model.generate(idx, min(max_new, max(room, 1)), temperature=0.0)
            text = self.tokenizer.decode(full[0, len(ctx) :])
            cut = min((text.find(s) for s in until if s and s in text), default=len(text))
            out.append(text[:cut])
        return out

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name


def simple_evaluate(
    run: str | Path,
    tasks: list[str],
    include_path: str | None = None,
    limit: int | float | None = None,
    max_length: int | None = None,
    batch_size: int = 1,
    device: str = "cpu",
) -> dict[str, Any]:
    """`lm_eval.simple_evaluate` of the run on `tasks` (names, with task YAMLs from
    `include_path` too); returns the harness's results dict."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    lm = ExtraposLM(run=run, max_length=max_length, device=device)
    manager = TaskManager(include_path=include_path) if include_path else TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise UserError(
            f"unknown lm-eval task(s) {', '.join(unknown)}; list them with `lm_eval ls tasks` "
            "or pass --include-path DIR holding their YAML"
        )
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        limit=limit,
        task_manager=manager,
        batch_size=batch_size,
        log_samples=True,
    )
    if results is None:
        raise UserError("lm-eval returned no results (not the main rank?)")
    return results
