"""The hot policy arithmetic, in one place: window scores, ranks, rank variance.

These are the functions the policies call. They compute exactly what `asl.reference`
defines (docs/algorithms.md sections 1-3), with the custom ops of the compiled extension
`asl._C` (csrc/), registered as

    torch.ops.asl.token_ranks(Tensor scores) -> Tensor
    torch.ops.asl.rank_variance(Tensor ranks, int k) -> Tensor
    torch.ops.asl.window_scores(Tensor q_window, Tensor keys, Tensor key_mask, int kernel, str pooling) -> Tensor

with CPU kernels always and CUDA kernels when the extension was built with CUDA. The ops
accept inputs of any strides (non-contiguous ones are copied with .contiguous()), compute
in float32 (window scores) or float64 (rank variance) whatever the input dtype, and are not
differentiable (they only rank tokens: autograd falls through to them, so inputs that require
grad are read as constants and the outputs carry no history). Fake kernels are registered
below, so torch.compile traces them without graph breaks.

When `asl._C` cannot be imported, a warning says why and how to build it, and the pure-torch
implementations below are used instead (also for CUDA tensors when the extension has no
CUDA kernels): the window scores with a grouped view of the keys (no repeat_kv), in key
chunks of CHUNK so the fp32 probabilities of a long prompt are never all held at once.
`backend()` says which implementation is in use.
"""
from __future__ import annotations

import math
import warnings

import torch

from . import reference

CHUNK = 4096  # keys per chunk of the pure-torch window-score computation

try:
    from . import _C  # noqa: F401  (loading the library registers torch.ops.asl.*)

    _IMPORT_ERROR = ""
except ImportError as exc:  # not built, or built against another torch
    _C = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

_SCORE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
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


def _use_extension(t: torch.Tensor) -> bool:
    """True when the custom op handles a tensor on t's device; else warns (once) and says False."""
    if _C is None:
        _warn_once("asl._C is not importable (" + (_IMPORT_ERROR or "hidden") + ")")
        return False
    if t.device.type == "cuda" and not _has_cuda_kernels():
        _warn_once("asl._C was built without CUDA kernels (torch without CUDA, or no CUDA toolkit at build time)")
        return False
    return True


def _warn_once(reason: str) -> None:
    if reason in _warned:
        return
    _warned.add(reason)
    warnings.warn(f"{reason}: using the slower pure-torch ops. Build the extension with "
                  "`pip install --no-build-isolation -e .` in the repository.", RuntimeWarning, stacklevel=3)


# ---- input checks: the same messages as csrc/checks.h (fake kernels and fallback use them)

def _check_token_ranks(scores: torch.Tensor) -> None:
    if scores.dim() != 2:
        raise RuntimeError(f"asl::token_ranks: scores must be 2-D [B, m], got {scores.dim()}-D")
    if scores.dtype not in _SCORE_DTYPES:
        raise RuntimeError(f"asl::token_ranks: scores must be float32, float16 or bfloat16, got {scores.dtype}")


def _check_rank_variance(ranks: torch.Tensor, k: int) -> None:
    if ranks.dim() != 3:
        raise RuntimeError(f"asl::rank_variance: ranks must be 3-D [T, B, m], got {ranks.dim()}-D")
    if ranks.dtype != torch.int64:
        raise RuntimeError(f"asl::rank_variance: ranks must be int64, got {ranks.dtype}")
    if ranks.shape[0] < 1:
        raise RuntimeError(f"asl::rank_variance: ranks needs at least one layer (T >= 1), got T = {ranks.shape[0]}")
    if not 1 <= k <= ranks.shape[2]:
        raise ValueError(f"asl::rank_variance: k must be in [1, m] = [1, {ranks.shape[2]}], got {k}")


def _check_window_scores(q, keys, mask, kernel: int, pooling: str) -> None:
    op = "asl::window_scores"
    for name, t, dims, layout in (("q_window", q, 4, "[B, H, w, d]"), ("keys", keys, 4, "[B, G, n, d]"),
                                  ("key_mask", mask, 2, "[B, n]")):
        if t.dim() != dims:
            raise RuntimeError(f"{op}: {name} must be {dims}-D {layout}, got {t.dim()}-D")
    if q.dtype not in _SCORE_DTYPES:
        raise RuntimeError(f"{op}: q_window must be float32, float16 or bfloat16, got {q.dtype}")
    if keys.dtype != q.dtype:
        raise RuntimeError(f"{op}: keys must have q_window's dtype {q.dtype}, got {keys.dtype}")
    if mask.dtype != torch.bool:
        raise RuntimeError(f"{op}: key_mask must be bool, got {mask.dtype}")
    for name, t in (("keys", keys), ("key_mask", mask)):
        if t.device != q.device:
            raise RuntimeError(f"{op}: q_window and {name} must be on the same device, got {q.device} and {t.device}")
    b, h, w, d = q.shape
    g, n = keys.shape[1], keys.shape[2]
    if keys.shape[0] != b:
        raise RuntimeError(f"{op}: keys batch {keys.shape[0]} != q_window batch {b}")
    if keys.shape[3] != d:
        raise RuntimeError(f"{op}: keys head dim {keys.shape[3]} != q_window head dim {d}")
    if g < 1 or h % g != 0:
        raise RuntimeError(f"{op}: query heads H = {h} must be a multiple of the KV heads G = {g}")
    if mask.shape[0] != b or mask.shape[1] != n:
        raise RuntimeError(f"{op}: key_mask must be [B, n] = [{b}, {n}], got {list(mask.shape)}")
    if d < 1:
        raise RuntimeError(f"{op}: head dim must be >= 1, got {d}")
    if not 1 <= w < n:
        raise ValueError(f"{op}: need 1 <= w < n (window w = q_window.size(2) = {w}, keys n = {n})")
    if kernel < 1 or kernel % 2 != 1:
        raise ValueError(f"{op}: kernel must be a positive odd integer, got {kernel}")
    if pooling not in ("avg", "max"):
        raise ValueError(f'{op}: pooling must be "avg" or "max", got "{pooling}"')


if _C is not None:  # fake (meta) kernels: shapes and dtypes only, for torch.compile / FakeTensor

    @torch.library.register_fake("asl::token_ranks")
    def _token_ranks_fake(scores):
        _check_token_ranks(scores)
        return scores.new_empty(scores.shape, dtype=torch.int64)

    @torch.library.register_fake("asl::rank_variance")
    def _rank_variance_fake(ranks, k):
        _check_rank_variance(ranks, k)
        return ranks.new_empty((ranks.shape[1],), dtype=torch.float64)

    @torch.library.register_fake("asl::window_scores")
    def _window_scores_fake(q_window, keys, key_mask, kernel, pooling):
        _check_window_scores(q_window, keys, key_mask, kernel, pooling)
        return q_window.new_empty((keys.shape[0], keys.shape[1], keys.shape[2] - q_window.shape[2]),
                                  dtype=torch.float32)


# ---- the functions the policies call

def window_scores(q, k, valid, window: int, kernel: int = 7, pooling: str = "avg") -> torch.Tensor:
    """Per-KV-head prefix scores [B, G, n - w] (docs/algorithms.md section 1), -inf on padding.

    q [B, H, n, d] post-RoPE queries (only the last `window` are read), k [B, G, n, d],
    valid [B, n] bool (False on left padding). float32 result whatever the input dtype.
    """
    n = q.shape[2]
    if not 1 <= window < n:
        raise ValueError(f"asl::window_scores: need 1 <= window < n, got window = {window}, n = {n}")
    q_window = q[:, :, n - window:]
    if _use_extension(q):
        return torch.ops.asl.window_scores(q_window, k, valid, kernel, pooling)
    _check_window_scores(q_window, k, valid, kernel, pooling)
    return _torch_window_scores(q, k, valid, window, kernel, pooling)


def token_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Stable descending ranks (1 = best, ties to the lower index). [..., m] -> int64 [..., m]."""
    if scores.dim() == 0:
        raise RuntimeError("asl::token_ranks: scores must have at least one dimension")
    rows = scores.unsqueeze(0) if scores.dim() == 1 else scores.flatten(0, -2)
    if _use_extension(scores):
        return torch.ops.asl.token_ranks(rows).reshape(scores.shape)
    _check_token_ranks(rows)
    return reference.token_ranks(scores)


def rank_variance(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """ranks [T, B, m] -> variance over the union of per-layer top-k (docs/algorithms.md section 3). float64 [B]"""
    if _use_extension(ranks):
        return torch.ops.asl.rank_variance(ranks, k)
    _check_rank_variance(ranks, k)
    return _torch_rank_variance(ranks, k)


def stable_descending_order(scores: torch.Tensor) -> torch.Tensor:
    """Column order best-first, ties to the lower column."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


# ---- the pure-torch fallback

def _torch_rank_variance(ranks: torch.Tensor, k: int) -> torch.Tensor:
    union = (ranks <= k).any(0)  # [B, m]
    r = ranks.double()
    dev = (r - r.mean(0, keepdim=True)) ** 2  # [T, B, m]
    return (dev * union).sum((0, 2)) / (union.sum(-1) * ranks.shape[0])


def _torch_window_scores(q, k, valid, window: int, kernel: int, pooling: str) -> torch.Tensor:
    """The pure-torch window scores (the fallback): grouped keys, no repeat_kv.

    Up to CHUNK keys it is one softmax; beyond, two passes over key chunks (row max and
    normaliser, then the normalised column sums), so the probabilities are never all held.
    Only the window's own keys need the causal mask; the prefix is seen by every window row.
    """
    b, h, n, d = q.shape
    g = k.shape[1]
    r, m = h // g, n - window
    qw = q[:, :, m:].float().reshape(b, g, r * window, d) / math.sqrt(d)  # the group's heads side by side
    query_col = torch.arange(m, n, device=q.device).repeat(r)  # [r*w], per row its own column
    padded = not bool(valid.all())

    def logits(start: int, stop: int) -> torch.Tensor:
        x = qw @ k[:, :, start:stop].float().transpose(-1, -2)  # [b, g, r*w, c]
        if stop > m:  # only the window's own keys need the causal mask
            key_col = torch.arange(start, stop, device=q.device)
            x = x.masked_fill((key_col[None, :] > query_col[:, None])[None, None], float("-inf"))
        if padded:
            x = x.masked_fill(~valid[:, None, None, start:stop], float("-inf"))
        return x

    sums = torch.empty(b, g, r, m, device=q.device)
    if n <= CHUNK:  # one chunk: a plain softmax
        p = torch.nan_to_num(logits(0, n).softmax(-1), nan=0.0)  # a padding query row sees no key
        sums.copy_(p[..., :m].reshape(b, g, r, window, m).sum(3))
    else:
        _two_pass_column_sums(logits, sums, n, m, window, (b, g, r))
    pooled = reference.pool(sums, kernel, pooling)
    return pooled.sum(2).masked_fill(~valid[:, None, :m], float("-inf"))


def _two_pass_column_sums(logits, sums, n: int, m: int, window: int, bgr: tuple) -> None:
    """Column sums of the softmax over key chunks: pass 1 the row max and normaliser, pass 2 the sums."""
    b, g, r = bgr
    row_max = torch.full((b, g, r * window, 1), float("-inf"), device=sums.device)
    row_sum = torch.zeros(b, g, r * window, 1, device=sums.device)
    for start in range(0, n, CHUNK):
        x = logits(start, min(start + CHUNK, n))
        new_max = torch.maximum(row_max, x.amax(-1, keepdim=True))
        safe = torch.where(torch.isinf(new_max), 0.0, new_max)
        row_sum = row_sum * torch.exp(torch.where(torch.isinf(row_max), float("-inf"), row_max - safe)) \
            + torch.exp(x - safe).sum(-1, keepdim=True)
        row_max = new_max
    safe_max = torch.where(torch.isinf(row_max), 0.0, row_max)
    inv_sum = torch.where(row_sum > 0, 1.0 / row_sum, 0.0)
    for start in range(0, m, CHUNK):
        stop = min(start + CHUNK, m)
        p = torch.exp(logits(start, stop) - safe_max) * inv_sum
        sums[..., start:stop] = p.view(b, g, r, window, stop - start).sum(3)
