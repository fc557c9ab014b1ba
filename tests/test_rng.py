"""Philox4x32-10 against the Random123 known-answer vectors, and the draw keying."""

import pytest
import torch

from lzo_bench.core.rng import DrawKey, draw_uniform, philox4x32, uniform_from_bits

# Random123 kat_vectors: philox4x32 10 <counter ×4> <key ×2> <expected ×4>
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_known_answers(counter, key, expected):
    out = philox4x32(tuple(torch.tensor([c], dtype=torch.int64) for c in counter), key)
    assert tuple(int(o) for o in out) == expected


def test_philox_vectorised_equals_scalar():
    j = torch.arange(50, dtype=torch.int64)
    t = torch.full_like(j, 3)
    b = torch.full_like(j, 7)
    c3 = torch.full_like(j, 1)
    vec = philox4x32((j, t, b, c3), (11, 12))
    for i in (0, 17, 49):
        one = philox4x32(tuple(torch.tensor([v]) for v in (i, 3, 7, 1)), (11, 12))
        assert all(int(a[i]) == int(o) for a, o in zip(vec, one))


def test_uniform_is_inside_open_unit_interval_and_exact():
    bits = torch.tensor([0, 511, 512, 0xFFFFFFFF], dtype=torch.int64)
    u = uniform_from_bits(bits)
    assert u.dtype == torch.float32
    assert u[0].item() == 0.5 * 2**-23 and u[1].item() == u[0].item()
    assert u[2].item() == 1.5 * 2**-23
    assert u[3].item() == 1.0 - 2**-24
    assert ((u > 0) & (u < 1)).all()


def test_draws_are_keyed_by_every_component():
    idx = torch.arange(2000, dtype=torch.int64)
    zero = torch.zeros_like(idx)
    base = draw_uniform(DrawKey(1, 2), 0, zero, zero, idx, 0)
    assert torch.equal(base, draw_uniform(DrawKey(1, 2), 0, zero, zero, idx, 0))
    variants = [
        draw_uniform(DrawKey(9, 2), 0, zero, zero, idx, 0),
        draw_uniform(DrawKey(1, 3), 0, zero, zero, idx, 0),
        draw_uniform(DrawKey(1, 2), 1, zero, zero, idx, 0),
        draw_uniform(DrawKey(1, 2), 0, zero + 1, zero, idx, 0),
        draw_uniform(DrawKey(1, 2), 0, zero, zero + 1, idx, 0),
        draw_uniform(DrawKey(1, 2), 0, zero, zero, idx, 1),
    ]
    for v in variants:
        assert (v != base).float().mean() > 0.99


def test_uniforms_are_uniform():
    idx = torch.arange(200_000, dtype=torch.int64)
    u = draw_uniform(DrawKey(0, 0), 0, torch.zeros_like(idx), torch.zeros_like(idx), idx, 0)
    # Kolmogorov–Smirnov distance against U(0,1); 1.95/sqrt(n) is the 0.1 % critical value
    s, _ = torch.sort(u.double())
    n = s.numel()
    ecdf = torch.arange(1, n + 1, dtype=torch.float64) / n
    d = torch.maximum((ecdf - s).abs().max(), (s - (ecdf - 1.0 / n)).abs().max())
    assert d < 1.95 / n**0.5


def test_bad_sample_index_is_refused():
    z = torch.zeros(1, dtype=torch.int64)
    with pytest.raises(ValueError, match="sample index"):
        draw_uniform(DrawKey(0, 0), 0, z, z, z, 1 << 16)


def test_the_whole_64_bit_seed_keys_the_draws():
    from lzo_bench.core.rng import DrawKey, draw_uniform

    assert DrawKey(5, 7).words == (5, 7)  # seeds below 2^32: the keys (and draws) every earlier run used
    j = torch.arange(1000)
    t = torch.zeros_like(j)
    small, big = (draw_uniform(DrawKey(s, 3), 0, t, t, j, 0) for s in (12345, 12345 + (1 << 32)))
    assert not torch.equal(small, big)  # seed mod 2^32 would make these identical
    keys = {DrawKey(s, u).words for s in (1 << 32, (1 << 32) + 1, (1 << 64) - 1, 9223372036854775807) for u in range(50)}
    assert len(keys) == 200 and all(0 <= w < 1 << 32 for k in keys for w in k)
