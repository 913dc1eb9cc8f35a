"""Seeds derived from named parts, the same in every process and on every machine.

A random stream is named by what it is for, so a draw depends only on its own index:

    g = torch.Generator().manual_seed(derive_seed(cfg.seed, "draw", pair_index, draw))

The parts are joined by ":" and hashed with BLAKE2b (RFC 7693) to 8 bytes; the
little-endian integer shifted right by one bit is the seed, so it fits a signed int64
(what `torch.Generator.manual_seed` and numpy take). Python's `hash()` would not do: it
is salted per process for str (PYTHONHASHSEED), so torchrun workers or a resumed run
would draw other numbers.

Because the parts are joined by ":", a str part that itself holds ":" can spell the
same key as two parts ("a:b" == "a", "b"); name streams without ":".
"""

from __future__ import annotations

import hashlib

SEED_BITS = 63


def derive_seed(*parts: int | str) -> int:
    """A seed in [0, 2**63) from `parts` (ints and strs): a pure function of their values.

    The flow-DPO trainer has drawn its pair order and (t, noise) with this formula since it
    was written, so its numbers do not move when a caller switches to this helper.
    """
    if not parts:
        raise ValueError("derive_seed: expected at least one part")
    for part in parts:
        if isinstance(part, bool) or not isinstance(part, (int, str)):
            raise TypeError(
                f"derive_seed: parts must be int or str, got {type(part).__name__} {part!r}"
            )
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - SEED_BITS)
