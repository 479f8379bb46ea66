"""RoPE's per-forward memo (`PositionsMemo`) and the no-autograd rotation: the same numbers as
computing afresh, and an in-place change of a positions tensor is noticed."""

from __future__ import annotations

import torch

from extrapos.encodings import build_encoding
from extrapos.encodings.base import Positions


def test_memo_follows_in_place_changes_and_new_tensors() -> None:
    enc = build_encoding("rope", head_dim=16)
    positions = torch.arange(5, 12)
    first = enc.cos_sin(positions)
    assert enc.cos_sin(positions)[0] is first[0]  # a memo hit: the same tensor
    positions += 100  # in place: the version counter moves
    fresh = build_encoding("rope", head_dim=16).cos_sin(torch.arange(105, 112))
    torch.testing.assert_close(enc.cos_sin(positions), fresh, rtol=0, atol=0)
    assert enc.max_position(positions) == 111
    other = torch.arange(0, 3)
    assert enc.cos_sin(other)[0].shape == (3, 8)


def test_rotation_without_autograd_equals_the_autograd_one() -> None:
    enc = build_encoding("rope", head_dim=16)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 7, 16, generator=gen), torch.randn(2, 3, 7, 16, generator=gen)
    pos = torch.arange(40, 47)
    with torch.no_grad():
        plain = enc.rotate_qk(q, k, pos, pos)
    graph = enc.rotate_qk(q.requires_grad_(), k.requires_grad_(), pos, pos)
    assert graph[0].requires_grad
    for a, b in zip(plain, graph, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)


def test_keys_of_the_new_tokens_are_the_query_positions_object() -> None:
    k = torch.arange(10)
    where = Positions(k[6:], k, 6)
    assert where.for_keys(4) is where.q
    assert torch.equal(where.for_keys(10), k)


def test_memo_made_in_inference_mode_does_not_leak_into_training() -> None:
    """The same positions tensor first in an inference-mode forward, then in a differentiable
    one: the inference-mode cos/sin are not reused (autograd could not save them)."""
    enc = build_encoding("rope", head_dim=16)
    pos = torch.arange(6)
    q = torch.randn(1, 2, 6, 16)
    with torch.inference_mode():
        enc.rotate_qk(q, q, pos, pos)
    x = q.clone().requires_grad_()
    out, _ = enc.rotate_qk(x, x, pos, pos)
    out.sum().backward()
    assert x.grad is not None


def test_one_position_rotation_by_matrix_equals_the_buffer_rotation() -> None:
    """Decoding rotates one position by `rotation_matrix` (one mm); the same numbers as the
    six-op rotation up to float32 rounding, for RoPE and xPos (both signs, a far centre), and
    bf16 inputs come back in bf16."""
    gen = torch.Generator().manual_seed(1)
    for name in ("rope", "xpos"):
        enc = build_encoding(name, head_dim=16)
        x = 3 * torch.randn(2, 3, 1, 16, generator=gen)
        k = 3 * torch.randn(2, 3, 1, 16, generator=gen)
        pos = torch.tensor([777])
        with torch.no_grad():
            fast = enc.rotate_qk(x, k, pos, pos)
            # the same call with a second, far position forces the multi-position path
            both = torch.tensor([777, 3])
            slow = enc.rotate_qk(
                torch.cat((x, x), -2), torch.cat((k, k), -2), both, both,
                **({"center": 400.0} if name == "xpos" else {}),
            )  # fmt: skip
            if name == "xpos":
                fast = enc.rotate_qk(x, k, pos, pos, center=400.0)
        for a, b in zip(fast, slow, strict=True):
            torch.testing.assert_close(a[..., 0, :], b[..., 0, :], rtol=1e-6, atol=1e-6)
        assert not torch.allclose(fast[0], x, atol=1e-3)  # position 777 does rotate
        with torch.no_grad():
            half = enc.rotate_qk(x.bfloat16(), k.bfloat16(), pos, pos)[0]
        assert half.dtype == torch.bfloat16


def test_a_decoding_step_rotates_query_and_key_in_one_bmm_with_the_same_numbers() -> None:
    """Query and key of one decoding step at one position (the same positions tensor) are
    rotated together by `rotate_pair`; bit for bit what one `rotate_by_matrix`
    each gives (keys at an equal but distinct positions tensor take that path), for RoPE and
    xPos (a centre far from the position: large factors of both signs), float32 and bf16."""
    gen = torch.Generator().manual_seed(3)
    for name, extra in (("rope", {}), ("xpos", {"center": 300.0})):
        enc = build_encoding(name, head_dim=16)
        for dtype, heads in ((torch.float32, 4), (torch.float32, 2), (torch.bfloat16, 2)):
            # 2 heads: a stacked mm over 4 rows rounds differently from 2-row ones; bmm not
            q, k = (3 * torch.randn(1, heads, 1, 16, generator=gen) for _ in range(2))
            q, k = q.to(dtype), k.to(dtype)
            pos = torch.tensor([777])
            with torch.no_grad():
                paired = enc.rotate_qk(q, k, pos, pos, **extra)
                apart = enc.rotate_qk(q, k, pos, pos.clone(), **extra)
            for a, b in zip(paired, apart, strict=True):
                assert a.dtype == dtype and a.shape == q.shape
                assert torch.equal(a, b)
            assert not torch.equal(paired[0], paired[1])  # q and k got their own matrices


def test_decoding_step_matrices_come_in_blocks_with_the_per_position_numbers() -> None:
    """Decoding steps take their rotation matrices from blocks of consecutive positions built
    at once (`step_block`): bit for bit the per-position `rotation_matrix` of the gathered
    cos/sin, for steps that cross a block's end and the cos/sin table's growth (256 rows);
    xPos's blocks (`xpos_step_block`) are that matrix with its columns times and divided by
    the per-position ζ scale, bitwise at head_dim 32 (the scale's float64 exp fully vectorised
    either way, with AVX2 or AVX-512) and to float rounding at head_dim 12 (a scalar tail per
    position vs vectorised in the block; bitwise on the machine it was written on, where the
    float32 cast hid any difference, at 12, 16, 24 and 40)."""
    from extrapos.encodings.rotary import STEP_BLOCK, rotation_matrix
    from extrapos.encodings.xpos import xpos_scale

    rope = build_encoding("rope", head_dim=32)
    for p in (3, 3 + STEP_BLOCK - 1, 3 + STEP_BLOCK, 255, 256, 700):
        start, block = rope.step_block(p, torch.device("cpu"))
        assert start <= p < start + block.shape[0]
        expected = rotation_matrix(*rope.cos_sin(torch.tensor([p]), p + 1))
        assert torch.equal(block[p - start], expected)
    for head_dim, exact in ((32, True), (12, False)):
        xpos = build_encoding("xpos", head_dim=head_dim)
        for p in (5, 300):
            start, block = xpos.xpos_step_block(p, 100.0, torch.device("cpu"))
            pos = torch.tensor([p])
            rot = rotation_matrix(*xpos.cos_sin(pos, p + 1))
            scale = xpos_scale(pos, xpos.zeta, xpos.scale_base, 100.0, +1)
            scale = torch.cat((scale, scale), dim=-1).reshape(-1).float()
            for got, want in zip(block[p - start], (rot * scale, rot / scale), strict=True):
                if exact:
                    assert torch.equal(got, want)
                else:
                    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def test_one_position_xpos_query_before_its_keys_uses_its_own_position() -> None:
    """xPos's one-position matrices (a lone query or key, outside a decoding step) are those
    of that position, not of the call's last one: a query at 3 against keys 0..7 equals the
    multi-position rotation of position 3 (to float rounding)."""
    enc = build_encoding("xpos", head_dim=8)
    gen = torch.Generator().manual_seed(4)
    q, k = torch.randn(1, 2, 1, 8, generator=gen), torch.randn(1, 2, 8, 8, generator=gen)
    with torch.no_grad():
        got, _ = enc.rotate_qk(q, k, torch.tensor([3]), torch.arange(8), center=4.0)
        both = torch.cat((q, q), dim=-2)
        want, _ = enc.rotate_qk(both, k, torch.tensor([3, 3]), torch.arange(8), center=4.0)
    torch.testing.assert_close(got, want[..., :1, :], rtol=1e-6, atol=1e-6)
