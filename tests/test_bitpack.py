"""Bit packing (``kvcodec.bitpack``, wire-format §5): every width 1–16, exact sizes,
round trips, the fast paths against the bitwise reference and a pure-Python packer,
and strict rejection of malformed packed data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvcodec import DecodeError, bitpack
from kvcodec.bitpack import _pack_bitwise, pack, packed_size, unpack


def python_pack(codes: list[int], bits: int) -> bytes:
    """Independent reference: code i occupies stream bits i·b … i·b+b−1, LSB first; stream
    bit j is bit j mod 8 of byte j div 8."""
    out = bytearray((len(codes) * bits + 7) // 8)
    for i, code in enumerate(codes):
        for j in range(bits):
            if (code >> j) & 1:
                pos = i * bits + j
                out[pos // 8] |= 1 << (pos % 8)
    return bytes(out)


def random_codes(seed: int, n: int, bits: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    vals = rng.integers(0, 2**bits, size=n, dtype=np.int64)
    return torch.from_numpy(vals.astype(np.uint8 if bits <= 8 else np.int32))


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("n", [0, 1, 2, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 4099])
def test_round_trip_every_width(bits, n):
    codes = random_codes(bits * 10_000 + n, n, bits)
    packed = pack(codes, bits)
    assert isinstance(packed, bytes)
    assert len(packed) == packed_size(n, bits) == -(-n * bits // 8)
    out = unpack(packed, n, bits)
    assert out.dtype == (torch.uint8 if bits <= 8 else torch.int32)
    assert out.shape == (n,)
    assert torch.equal(out.long(), codes.long())


@given(bits=st.integers(1, 16), n=st.integers(0, 300), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=300)
def test_round_trip_and_reference_agree(bits, n, seed):
    codes = random_codes(seed, n, bits)
    packed = pack(codes, bits)
    assert len(packed) == (n * bits + 7) // 8
    # the fast path (bits ≤ 8 word packing, 8 and 16 byte-aligned) agrees with the reference packer
    assert packed == _pack_bitwise(codes.numpy(), bits)
    # …and with an independent pure-Python packer
    assert packed == python_pack(codes.tolist(), bits)
    assert torch.equal(unpack(packed, n, bits).long(), codes.long())


@pytest.mark.parametrize("bits", range(1, 17))
def test_extreme_codes(bits):
    """All-zero, all-max and alternating codes, whose every bit is known."""
    top = 2**bits - 1
    for vals in ([0] * 37, [top] * 37, [top, 0] * 19, [1 << (bits - 1)] * 13):
        codes = torch.tensor(vals, dtype=torch.uint8 if bits <= 8 else torch.int32)
        packed = pack(codes, bits)
        assert packed == python_pack(vals, bits)
        assert unpack(packed, len(vals), bits).tolist() == vals
    assert pack(torch.tensor([top] * 8, dtype=torch.int32), bits) == b"\xff" * bits


def test_known_vectors():
    assert pack(torch.tensor([1, 2, 3], dtype=torch.uint8), 2) == bytes([0b00111001])
    assert pack(torch.tensor([0xA, 0xB], dtype=torch.uint8), 4) == bytes([0xBA])
    assert pack(torch.tensor([1, 0, 1, 1, 0, 0, 0, 1, 1], dtype=torch.uint8), 1) == bytes([0b10001101, 0b1])
    assert pack(torch.tensor([0x1FF], dtype=torch.int32), 9) == bytes([0xFF, 0x01])
    assert pack(torch.tensor([0x1234, 0xABCD], dtype=torch.int32), 16) == bytes([0x34, 0x12, 0xCD, 0xAB])
    assert pack(torch.tensor([5, 3], dtype=torch.uint8), 3) == bytes([0b011101])


def test_any_shape_is_packed_in_c_order():
    codes = random_codes(3, 2 * 3 * 5 * 7, 5).reshape(2, 3, 5, 7)
    assert pack(codes, 5) == pack(codes.reshape(-1), 5)
    assert pack(codes.transpose(0, 1), 5) == pack(codes.transpose(0, 1).contiguous().reshape(-1), 5)


@pytest.mark.parametrize("bits", [3, 4, 7])
def test_large_counts_fast_path(bits):
    codes = random_codes(bits, 100_003, bits)
    packed = pack(codes, bits)
    assert packed == _pack_bitwise(codes.numpy(), bits)
    assert torch.equal(unpack(packed, codes.numel(), bits), codes)


@given(bits=st.integers(1, 16), n=st.integers(1, 100), seed=st.integers(0, 2**32 - 1), data=st.data())
@settings(max_examples=200)
def test_nonzero_padding_bits_rejected(bits, n, seed, data):
    used = (n * bits) % 8
    if not used:
        n += 1  # make sure the last byte has unused bits
        used = (n * bits) % 8
    if not used:
        return
    packed = bytearray(pack(random_codes(seed, n, bits), bits))
    bit = data.draw(st.integers(used, 7))
    packed[-1] |= 1 << bit
    with pytest.raises(DecodeError, match="unused bits"):
        unpack(bytes(packed), n, bits)


@pytest.mark.parametrize("bits", [1, 3, 8, 12, 16])
def test_wrong_length_rejected(bits):
    codes = random_codes(0, 21, bits)
    packed = pack(codes, bits)
    for bad in (packed[:-1], packed + b"\x00", b""):
        with pytest.raises(DecodeError, match="expected .* bytes"):
            unpack(bad, 21, bits)


def test_zero_count():
    for bits in range(1, 17):
        assert pack(torch.zeros(0, dtype=torch.uint8), bits) == b""
        assert unpack(b"", 0, bits).numel() == 0
        with pytest.raises(DecodeError):
            unpack(b"\x00", 0, bits)


@pytest.mark.parametrize("bits", [0, 17, -1])
def test_width_out_of_range(bits):
    with pytest.raises(ValueError, match="bits"):
        pack(torch.zeros(4, dtype=torch.uint8), bits)
    with pytest.raises(DecodeError, match="outside 1..16"):
        unpack(b"\x00", 1, bits)


def test_unpack_accepts_memoryview_and_does_not_alias():
    codes = random_codes(1, 40, 8)
    buf = bytearray(pack(codes, 8))
    out = unpack(memoryview(buf), 40, 8)
    buf[0] ^= 0xFF
    assert torch.equal(out, codes)  # a copy, not a view of the caller's buffer
    assert bitpack.packed_size(0, 16) == 0
