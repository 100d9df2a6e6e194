"""Assertions that hold on every instruction set.

Float rounding differs between CPUs (AVX2, AVX-512, AMX) and devices, so a test never lets a
near-tie decide: computed scores are compared with the reference within a stated tolerance,
and a policy's choices are compared exactly against the reference applied to the scores the
policy itself computed (`Recorder(scores=...)` records them from the shared LayerView, or the
test calls the policy's own scoring function on the recorded inputs). Where
a decision compares a float with a threshold, a value within THRESHOLD_RTOL of it may go
either way; what follows from the decision taken must still be exact.
"""
from __future__ import annotations

import torch

SCORE_RTOL, SCORE_ATOL = 1e-4, 1e-6  # float32 scores: the fused op against the reference's explicit softmax
THRESHOLD_RTOL = 1e-6  # a ratio this close to tau may fall on either side of it


def assert_scores_close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    """Same -inf (padding) pattern, finite entries equal within the tolerance."""
    finite = torch.isfinite(reference)
    assert torch.equal(finite, torch.isfinite(ours))
    torch.testing.assert_close(ours[finite].double(), reference[finite].double(), rtol=SCORE_RTOL, atol=SCORE_ATOL)


def near_threshold(value: float, threshold: float) -> bool:
    return abs(value - threshold) <= THRESHOLD_RTOL * max(abs(threshold), 1e-12)
