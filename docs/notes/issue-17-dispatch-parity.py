"""Before/after parity for issue 17 (one dispatch, interface v2): logits of seeded 2-layer models.

    PYTHONPATH=src python docs/notes/issue-17-dispatch-parity.py save  /tmp/issue17_base.pt  # base commit
    PYTHONPATH=src python docs/notes/issue-17-dispatch-parity.py check /tmp/issue17_base.pt  # after

For every registered encoding (and a few parameter variants): the full-forward logits of a seeded
GPT (2 layers, weights scaled up x4 so errors would show), and the logits of KV-cache decoding
(a 24-token prefix, then one token at a time) where the encoding supports a cache. `check`
asserts torch.equal (bit-identical), printing each case.
"""

from __future__ import annotations

import sys

import torch

from extrapos import GPT, GPTConfig, list_encodings
from extrapos.models.gpt import KVCache

VARIANTS = {
    "rope-dynamic": ("rope", {"scaling": {"rope_type": "dynamic", "factor": 2.0},
                              "max_position_embeddings": 16}),
    "dape-kerple": ("dape", {"bias": "kerple_log"}),
    "xpos-fixed": ("xpos", {"center": 16}),
}


def cases() -> dict[str, tuple[str, dict]]:
    out = {name: (name, {}) for name in list_encodings()}
    out.update(VARIANTS)
    return out


def cacheable(enc) -> bool:
    if hasattr(enc, "supports_kv_cache"):
        return bool(enc.supports_kv_cache)
    return enc.cache != "none"


def run(name: str, params: dict) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=64, n_layer=2, n_head=4, d_model=32, encoding=name,
                       encoding_params=params)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)
    idx = torch.randint(0, 64, (2, 40), generator=torch.Generator().manual_seed(1))
    out = {}
    with torch.no_grad():
        out["full"] = model(idx)
        if cacheable(model.encoding):
            cache = KVCache(config.n_layer)
            steps = [model(idx[:, :24], cache=cache)]
            for t in range(24, 40):
                steps.append(model(idx[:, t : t + 1], cache=cache))
            out["cached"] = torch.cat(steps, dim=1)
    return out


def main() -> None:
    mode, path = sys.argv[1], sys.argv[2]
    results = {case: run(*spec) for case, spec in cases().items()}
    if mode == "save":
        torch.save(results, path)
        print(f"saved {len(results)} cases to {path}")
        return
    base = torch.load(path)
    bad = 0
    for case, tensors in base.items():
        for key, expected in tensors.items():
            got = results[case][key]
            same = torch.equal(got, expected)
            diff = float((got - expected).abs().max())
            bad += not same
            print(f"{case:14s} {key:6s} {'bit-identical' if same else f'DIFFERS max {diff:.3g}'}")
    print(f"{bad} differing of {sum(len(t) for t in base.values())}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
