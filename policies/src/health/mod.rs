//! Cross-layer storage health: verdicts with hysteresis, the readiness guard and noisy-neighbour choice.
