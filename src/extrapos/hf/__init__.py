"""Hugging Face `transformers` interoperability.

- RoPE config schema (`extrapos.hf.rope`): `rope_config_from_hf(config)` reads
  `rope_scaling` (v4) and `rope_parameters` (v5) exactly as transformers does and returns a
  `RopeConfig(base, rotary_dim, scaling, max_position_embeddings)`; `rope_config_to_hf(...)`
  writes either schema.
- Evaluation (`extrapos.hf.adapter`, `extrapos.hf.patch`): `load_hf_model(dir)` wraps a local
  model folder as `HFCausalLM`, usable wherever our `GPT` is evaluated (`perplexity`,
  `evaluate_lengths`, passkey); `patch_rope(model, scaling)` swaps its RoPE frequencies for
  ours (`extrapos eval-hf --rope JSON`).
- Export (`extrapos.hf.export`): `export_hf(run_dir, out_dir)` writes a `rope`/`nope` run as a
  `LlamaForCausalLM` folder with logits equal to ours (`extrapos export-hf`).
- Classic models (`extrapos.hf.classic`): learned position limits and their linear
  interpolation (GPT-2, BERT), and T5's relative bias as our `t5` encoding.

transformers is imported lazily (it takes seconds); it is the `dev` extra of the package.
"""

from extrapos.hf.adapter import HFCausalLM, HFTokenizer, load_hf_model
from extrapos.hf.classic import (
    interpolate_position_embeddings,
    position_limit,
    t5_bias_from_hf,
)
from extrapos.hf.export import export_hf, gpt_to_llama
from extrapos.hf.patch import RopePatch, patch_rope
from extrapos.hf.rope import RopeConfig, rope_config_from_hf, rope_config_to_hf

__all__ = [
    "HFCausalLM",
    "HFTokenizer",
    "RopeConfig",
    "RopePatch",
    "export_hf",
    "gpt_to_llama",
    "interpolate_position_embeddings",
    "load_hf_model",
    "patch_rope",
    "position_limit",
    "rope_config_from_hf",
    "rope_config_to_hf",
    "t5_bias_from_hf",
]
