"""The inner loops of epoch making, compiled with numba: one pass each, no temporaries.

numpy alone needs a pass per operation and about 12 ns per element for a shuffle; these
loops do each step in one pass at a few ns per element (bench/generator.py).

Random numbers come from SFC64, the same generator as numpy's np.random.SFC64 and seeded
the same way (streams). A state travels as a uint64[4] array (a, b, c, counter),
updated in place.

Numba promotes uint64 mixed with a signed integer to float64: every constant below is a
uint64 on purpose.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

U64 = np.uint64
ONE = U64(1)
LOW32 = U64(0xFFFFFFFF)
TWO32 = U64(1 << 32)


def streams(seed: np.random.SeedSequence, count: int) -> np.ndarray:
    """count independent SFC64 states [count, 4], from 3 words of seed each. The first is
    the state of np.random.SFC64(seed); one call instead of a SeedSequence per stream."""
    states = np.ones((count, 4), np.uint64)
    states[:, :3] = seed.generate_state(3 * count, np.uint64).reshape(count, 3)
    _mix_in(states)
    return states


def item_bitmap(num_items: int) -> np.ndarray:
    """Scratch for sample_shuffled and draw_unrated: one zero bit per item."""
    return np.zeros((num_items + 63) // 64, np.uint64)


# Inside a kernel the generator is a tuple (a, b, c, counter, spare, has_spare): each
# 64-bit output serves two 32-bit draws, the second kept as the spare. A kernel starts
# with no spare and drops it at the end, so its draws depend on the state array alone.

@njit(inline="always")
def _load(state):
    return state[0], state[1], state[2], state[3], U64(0), U64(0)


@njit(inline="always")
def _store(rng, state):
    state[0], state[1], state[2], state[3] = rng[0], rng[1], rng[2], rng[3]


@njit(inline="always")
def _next(rng):
    """One SFC64 step: (64-bit output, new rng)."""
    a, b, c, w, spare, has_spare = rng
    out = a + b + w
    return out, (b ^ (b >> U64(11)), c + (c << U64(3)), ((c << U64(24)) | (c >> U64(40))) + out, w + ONE,
                 spare, has_spare)


@njit(inline="always")
def _next32(rng):
    """32 uniform bits: the spare half of the last output, or the high half of a new one."""
    if rng[5]:
        return rng[4], (rng[0], rng[1], rng[2], rng[3], U64(0), U64(0))
    out, rng = _next(rng)
    return out >> U64(32), (rng[0], rng[1], rng[2], rng[3], out & LOW32, ONE)


@njit(inline="always")
def _below(bound, rng):
    """A uniform integer in [0, bound), bound < 2**32 (Lemire's multiply-shift, unbiased by rejection)."""
    while True:
        bits, rng = _next32(rng)
        product = bits * bound
        low = product & LOW32
        if low >= bound or low >= (TWO32 - bound) % bound:
            return product >> U64(32), rng


@njit(cache=True, nogil=True)
def _mix_in(states):
    """Each state as numpy's SFC64 leaves it after seeding: 12 outputs discarded."""
    for k in range(len(states)):
        rng = _load(states[k])
        for _ in range(12):
            _, rng = _next(rng)
        _store(rng, states[k])


@njit(cache=True, nogil=True)
def raw(state, out):
    """Fills out (uint64) with the stream's next outputs: the same as numpy's SFC64.random_raw."""
    rng = _load(state)
    for i in range(len(out)):
        out[i], rng = _next(rng)
    _store(rng, state)


@njit(inline="always")
def _place(out, i, value, rng):
    """Inside-out Fisher-Yates step: value joins out[:i] at a uniformly random position."""
    j, rng = _below(U64(i + 1), rng)
    out[i] = out[j]
    out[j] = value
    return rng


@njit(inline="always")
def _mark(rated, items, begin, end):
    """Sets the bits of items[begin:end] in rated (one bit per item)."""
    for j in range(begin, end):
        item = U64(items[j])
        rated[item >> U64(6)] |= ONE << (item & U64(63))


@njit(inline="always")
def _unmark(rated, items, begin, end):
    """Clears what _mark set: the words holding those bits hold no others."""
    for j in range(begin, end):
        rated[U64(items[j]) >> U64(6)] = 0


@njit(inline="always")
def _unrated(rated, bound, rng):
    """A uniform draw from the items below bound whose bit in rated is clear. By rejection:
    a user rates a small share of the items, so few draws are redone."""
    while True:
        item, rng = _below(bound, rng)
        if (rated[item >> U64(6)] >> (item & U64(63))) & ONE == 0:
            return item, rng


@njit(cache=True, nogil=True)
def sample_shuffled(indptr, items, first_user, num_items, num_neg, state, rated, out):
    """One group of users' examples, in uniformly random order, packed as
    user << 32 | item << 1 | label.

    indptr (int64, from 0) cuts items into consecutive users first_user, first_user + 1, ...
    Each positive comes with num_neg negatives, drawn uniformly from the items its user has
    not rated. Each example goes to a random place as it is made, so out is written once,
    while it is in cache. rated is scratch: item_bitmap(num_items), zero again on return.
    """
    rng = _load(state)
    bound = U64(num_items)
    i = 0
    for user in range(len(indptr) - 1):
        user_bits = U64(first_user + user) << U64(32)
        begin, end = indptr[user], indptr[user + 1]
        _mark(rated, items, begin, end)
        for j in range(begin, end):
            rng = _place(out, i, user_bits | (U64(items[j]) << ONE) | ONE, rng)
            i += 1
            for _ in range(num_neg):
                item, rng = _unrated(rated, bound, rng)
                rng = _place(out, i, user_bits | (item << ONE), rng)
                i += 1
        _unmark(rated, items, begin, end)
    _store(rng, state)


@njit(cache=True, nogil=True)
def draw_unrated(indptr, items, num_items, state, rated, out):
    """out[u] = uniform draws with replacement from the items user u has not rated, where
    user u rated items[indptr[u]:indptr[u + 1]]. rated: as for sample_shuffled."""
    rng = _load(state)
    bound = U64(num_items)
    for user in range(len(indptr) - 1):
        _mark(rated, items, indptr[user], indptr[user + 1])
        for k in range(out.shape[1]):
            out[user, k], rng = _unrated(rated, bound, rng)
        _unmark(rated, items, indptr[user], indptr[user + 1])
    _store(rng, state)


@njit(cache=True, nogil=True)
def shuffled_copy(state, values, out):
    """out = values in uniformly random order. Reads values in order (cold memory streams
    in) and places each at random in out (hot, if out fits in cache)."""
    rng = _load(state)
    for i in range(len(values)):
        rng = _place(out, i, values[i], rng)
    _store(rng, state)


@intrinsic
def _store_around_cache(typingctx, array, index, value):
    """array[index] = value as a non-temporal store: the line goes to memory without first
    being read into the cache. For data nobody reads soon (the next stage, later)."""
    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        array_value = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, array_value, [args[1]], wraparound=False)
        value = context.cast(builder, args[2], signature.args[2], array_type.dtype)
        store = builder.store(value, pointer)
        store.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()
    return types.void(array, index, value), codegen


@intrinsic
def _fence(typingctx):
    """A full memory fence: non-temporal stores are weakly ordered, and the workers that
    read them next must see them all."""
    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()
    return types.void(), codegen


@njit(cache=True, nogil=True)
def scatter(values, starts, sizes, out):
    """Consecutive pieces of values, of the given sizes, copied to out[starts[k]:]. Around
    the cache: out is the epoch's buffer, read in the next stage, and the pieces are
    small (hundreds of examples each), so reading their lines in first would double the
    memory traffic (this copy is a fifth of an epoch's work without it)."""
    offset = 0
    for k in range(len(starts)):
        for j in range(sizes[k]):
            _store_around_cache(out, starts[k] + j, values[offset + j])
        offset += sizes[k]
    _fence()


@njit(cache=True, nogil=True)
def unpack(packed, user, item, label):
    """Packed examples into their columns (each narrower than the packing)."""
    for i in range(len(packed)):
        value = packed[i]
        user[i] = value >> U64(32)
        item[i] = (value & LOW32) >> ONE
        label[i] = value & ONE
