"""ReRoPE, leaky ReRoPE, Self-Extend, STRING and log-n scaling against brute-force per-pair
references: score(i, j) = q_i · R(f(i, j)) k_j with the method's relative position f."""

from __future__ import annotations

import math

import pytest
import torch

from extrapos.encodings import build_encoding
from extrapos.encodings.base import Positions

HEAD_DIM, HEADS, S = 8, 2, 40


def brute_force(enc, q, k, v, relative) -> torch.Tensor:
    """softmax over j <= i of (R(f(i, j)) q_i) · k_j / √d, one pair at a time."""
    out = torch.zeros_like(q)
    for i in range(S):
        scores = torch.empty(HEADS, i + 1)
        for j in range(i + 1):
            r = torch.tensor([float(relative(i, j))])
            q_rot = enc.rotate_at(q[:, :, i : i + 1], r)  # (1, h, 1, d)
            scores[:, j] = (q_rot[0, :, 0] * k[0, :, j]).sum(-1) / math.sqrt(HEAD_DIM)
        out[0, :, i] = torch.einsum("hj,hjd->hd", scores.softmax(-1), v[0, :, : i + 1])
    return out


def tensors():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, HEADS, S, HEAD_DIM, generator=g) for _ in range(3))


CASES = {
    "rerope": ({"window": 8}, lambda i, j: min(i - j, 8)),
    "leaky": ({"window": 8, "leak": 4.0}, lambda i, j: i - j if i - j < 8 else 8 + (i - j - 8) / 4),
    "self_extend": (
        {"window": 8, "group": 3},
        lambda i, j: i - j if i - j < 8 else i // 3 - j // 3 + 8 - 8 // 3,
    ),
    "string": (
        {"shift": 12, "local_window": 4},
        lambda i, j: i - j if i - j < 12 else i - j - 12 + 4,
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_attention_equals_per_pair_reference(case: str) -> None:
    params, relative = CASES[case]
    name = "rerope" if case == "leaky" else case
    enc = build_encoding(name, head_dim=HEAD_DIM, **params)
    q, k, v = tensors()
    pos = torch.arange(S)
    out = enc.attend(q, k, v, Positions(pos, pos))
    torch.testing.assert_close(out, brute_force(enc, q, k, v, relative), atol=1e-5, rtol=1e-4)


def test_rerope_with_a_window_past_the_sequence_is_plain_rope() -> None:
    q, k, v = tensors()
    pos = torch.arange(S)
    rerope = build_encoding("rerope", head_dim=HEAD_DIM, window=S)
    rope = build_encoding("rope", head_dim=HEAD_DIM)
    qr, kr = rope.rotate_qk(q, k, pos, pos)
    expected = torch.nn.functional.scaled_dot_product_attention(qr, kr, v, is_causal=True)
    torch.testing.assert_close(
        rerope.attend(q, k, v, Positions(pos, pos)), expected, atol=1e-5, rtol=1e-5
    )


def test_rerope_far_scores_never_see_distances_past_the_window() -> None:
    """Far pairs use relative position `window`: their scores are the same at any distance,
    so a query's attention to far keys depends only on their content."""
    enc = build_encoding("rerope", head_dim=HEAD_DIM, window=4)
    q, k, v = tensors()
    k = k[:, :, :1].expand_as(k).contiguous()  # every key the same
    pos = torch.arange(S)
    # with identical keys, far keys all get the same score, so the output for the last query is
    # a fixed mix regardless of how far back the far keys reach
    weights_far = []
    for length in (20, 40):
        out = enc.attend(
            q[:, :, :length],
            k[:, :, :length],
            torch.eye(length)[None, None].expand(1, HEADS, length, length),
            Positions(pos[:length], pos[:length]),
        )
        w = out[0, 0, -1]
        weights_far.append(w[: length - 4].std().item())
    assert max(weights_far) < 1e-6  # all far keys weighted equally


def test_logn_scales_queries_past_the_trained_length() -> None:
    rope = build_encoding("rope", head_dim=HEAD_DIM, logn_scale_len=16)
    q = torch.ones(1, 1, 4, HEAD_DIM)
    pos = torch.tensor([0, 15, 31, 255])
    scaled = rope.logn_scale(q, pos)[0, 0, :, 0]
    expected = torch.tensor([1.0, 1.0, math.log(32) / math.log(16), math.log(256) / math.log(16)])
    torch.testing.assert_close(scaled, expected)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("rerope", {"window": 0}, "window must be >= 1"),
        ("rerope", {"leak": 1.0}, "leak must be > 1"),
        ("self_extend", {"group": 0}, "group must be >= 1"),
        ("string", {"shift": 8, "local_window": 9}, "local_window must be in"),
        ("rope", {"logn_scale_len": 1}, "logn_scale_len must be >= 2"),
    ],
)
def test_bad_parameters_name_the_field(name: str, params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_encoding(name, head_dim=HEAD_DIM, **params)
