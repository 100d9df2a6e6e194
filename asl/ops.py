"""The hot policy arithmetic, in one place: window scores, ranks, rank variance.

Every caller goes through three custom ops, `torch.ops.asl.token_ranks`, `rank_variance` and
`window_scores` (docs/algorithms.md sections 1-3), whose schemas are `SCHEMAS` below (the one
source: csrc/register.cpp defines the same strings, and a test holds both to torch.ops.asl).

The compiled extension `asl._C` (csrc/) defines them with CPU kernels, CUDA kernels when it
was built with CUDA, and its input checks (csrc/checks.h). Where it has no kernel (not built,
or no CUDA kernels for a CUDA tensor) the pure-torch kernels of `asl/ops_fallback.py` are
registered for that device through `torch.library`, with a warning that says how to build the
extension. Fake kernels (the same checks, then shapes) let torch.compile trace the ops without graph breaks.
The ops compute in float32 (window scores) or float64 (rank variance) whatever the input
dtype, accept any strides, and are not differentiable (they only rank tokens).
"""
from __future__ import annotations

import warnings

import torch

from . import ops_fallback

try:
    from . import _C  # noqa: F401  (loading the library registers torch.ops.asl.*)

    _IMPORT_ERROR = ""
except ImportError as exc:  # not built, or built against another torch
    _C = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

SCHEMAS = {
    "token_ranks": "(Tensor scores) -> Tensor",
    "rank_variance": "(Tensor ranks, int k) -> Tensor",
    "window_scores": "(Tensor q_window, Tensor keys, Tensor key_mask, int kernel, str pooling) -> Tensor",
}
_warned: set[str] = set()


def _has_cuda_kernels() -> bool:
    return _C is not None and torch._C._dispatch_has_kernel_for_dispatch_key("asl::token_ranks", "CUDA")


def backend(device: torch.device | str | None = None) -> str:
    """Which implementation the ops use on `device`: "cpp" (the CPU kernels of asl._C),
    "cuda" (its CUDA kernels) or "torch" (the pure-torch fallback). The default device is
    CUDA when available, else the CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if _C is None:
        return "torch"
    if torch.device(device).type == "cuda":
        return "cuda" if _has_cuda_kernels() else "torch"
    return "cpp"


def _warn_once(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(f"{reason}: using the slower pure-torch ops. Build the extension with "
                      "`pip install --no-build-isolation -e .` in the repository.", RuntimeWarning, stacklevel=4)


def _warning(kernel, reason: str):
    def warned(*args):
        _warn_once(reason)
        return kernel(*args)
    return warned


def _register_fallback() -> None:
    """The pure-torch kernels where the extension has none: every device without it, or CUDA."""
    if _C is None:
        lib = torch.library.Library("asl", "DEF")
        for name, schema in SCHEMAS.items():
            lib.define(name + schema)
        devices, reason = ("CPU", "CUDA"), "asl._C is not importable (" + (_IMPORT_ERROR or "hidden") + ")"
    elif not _has_cuda_kernels():
        lib = torch.library.Library("asl", "IMPL")
        devices, reason = ("CUDA",), "asl._C was built without CUDA kernels (torch without CUDA, or no CUDA toolkit)"
    else:
        return
    for name in SCHEMAS:
        kernel = _warning(ops_fallback.KERNELS[name], reason)
        for device in devices:
            lib.impl(name, kernel, device)
    _LIBRARIES.append(lib)  # a Library unregisters its kernels when collected


_LIBRARIES: list = []
_register_fallback()


@torch.library.register_fake("asl::token_ranks")
def _token_ranks_fake(scores):
    ops_fallback.check_token_ranks(scores)
    return scores.new_empty(scores.shape, dtype=torch.int64)


@torch.library.register_fake("asl::rank_variance")
def _rank_variance_fake(ranks, k):
    ops_fallback.check_rank_variance(ranks, k)
    return ranks.new_empty(ranks.shape[1:2], dtype=torch.float64)


@torch.library.register_fake("asl::window_scores")
def _window_scores_fake(q_window, keys, key_mask, kernel, pooling):
    ops_fallback.check_window_scores(q_window, keys, key_mask, kernel, pooling)
    return q_window.new_empty((keys.shape[0], keys.shape[1], keys.shape[2] - q_window.shape[2]), dtype=torch.float32)


# ---- the functions the policies call

def window_scores(q, k, valid, window: int, kernel: int = 7, pooling: str = "avg") -> torch.Tensor:
    """Per-KV-head prefix scores [B, G, n - w] (docs/algorithms.md section 1), -inf on padding.

    q [B, H, n, d] post-RoPE queries (only the last `window` are read), k [B, G, n, d],
    valid [B, n] bool (False on left padding). float32 result whatever the input dtype.
    """
    n = q.shape[2]
    if not 1 <= window < n:
        raise ValueError(f"asl::window_scores: need 1 <= window < n, got window = {window}, n = {n}")
    return torch.ops.asl.window_scores(q[:, :, n - window:], k, valid, kernel, pooling)


def token_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Stable descending ranks (1 = best, ties to the lower index). [..., m] -> int64 [..., m]."""
    if scores.dim() == 0:
        raise RuntimeError("asl::token_ranks: scores must have at least one dimension")
    rows = scores.unsqueeze(0) if scores.dim() == 1 else scores.flatten(0, -2)
    return torch.ops.asl.token_ranks(rows).reshape(scores.shape)


def rank_variance(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """ranks [T, B, m] -> variance over the union of per-layer top-k (docs/algorithms.md section 3). float64 [B]"""
    return torch.ops.asl.rank_variance(ranks, k)


def stable_descending_order(scores: torch.Tensor) -> torch.Tensor:
    """Column order best-first, ties to the lower column."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


pool = ops_fallback.pool
