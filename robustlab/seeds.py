"""One rule for deriving the seed of a random stream from a run's seed."""

SEED_STRIDE = 1_000_003  # a prime larger than any epoch count or offset: (seed, offset) pairs never collide
STREAM_STRIDE = 7_919    # separates the per-rank augmentation streams of one epoch


def mixed_seed(seed: int, offset: int = 0, stream: int = 0) -> int:
    """The generator seed for `offset` (an epoch, a corruption) of stream `stream` under run seed `seed`."""
    return seed * SEED_STRIDE + offset + stream * STREAM_STRIDE
