// CPU kernel of asl::window_scores (docs/algorithms.md section 1, steps 1-4).
//
// Per (batch b, KV group g) the r = H/G query heads of the group read the same keys, so
// their w window rows are stacked into one [R = r*w, d] matrix (row hl*w + i is head
// g*r + hl, window query i). Keys are processed in chunks of kKeyChunk, in two passes
// with identical chunk logits (same GEMM shapes and data, so bitwise the same):
//   pass 1, per (b, g, chunk): logits = Q K_chunk^T / sqrt(d), masked (causal + padding);
//           per row the chunk max and sum of exp; merged per row into max M and 1/sum.
//   pass 2, per (b, g, prefix chunk): p = exp(logit - M) / sum, summed over the w rows
//           of each query head -> column sums [B, G, r, m].
//   final, per (b, g): pooling along the columns per head, sum over the group's heads,
//           -inf on padding columns.
// No [B, H, w, n] tensor and no repeated keys are ever held: the working set is one
// [R, kKeyChunk] logit block per thread. Everything is computed in float32.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "column_math.h"
#include "ops.h"

namespace asl {
namespace {

constexpr int64_t kKeyChunk = 512;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// exp(x) for x <= 0, as a branch-free polynomial the compiler vectorises (Cephes expf:
// relative error about 2e-7). Arguments are clamped to [-87, 0]: exp(-87) ~ 1.6e-38 is
// as good as 0 here, and callers multiply masked entries by 0.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 0.0f ? 0.0f : x;
  const int n = static_cast<int>(x * 1.44269504088896341f - 0.5f);  // round(x / ln 2), x <= 0
  const float nf = static_cast<float>(n);
  float r = x - nf * 0.693359375f;  // x - n ln 2 in two parts (Cody-Waite)
  r = r + nf * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (n + 127) << 23;  // 2^n, n in [-126, 0]
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return p * two_n;
}

// The hot loops, kept out of line on restrict pointers so that -O3 vectorises them. On
// x86-64 with GCC each is also built for AVX2 and AVX-512 (x86-64-v3/v4), chosen at load
// time by the CPU (function multiversioning); elsewhere the plain build is used.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ASL_HOT __attribute__((noinline, target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ASL_HOT __attribute__((noinline))
#endif

// x[j] = keep[j] ? x[j] * scale : -inf (scaled logits, padding keys masked).
ASL_HOT void scale_and_mask(float* __restrict x, const float* __restrict keep, float scale,
                                              int64_t n) {
  for (int64_t j = 0; j < n; ++j) x[j] = keep[j] != 0.0f ? x[j] * scale : kNegInf;
}

// Max of x[0:n] (-inf for n == 0).
ASL_HOT float row_max_of(const float* __restrict x, int64_t n) {
  float mx = kNegInf;
  for (int64_t j = 0; j < n; ++j) mx = x[j] > mx ? x[j] : mx;
  return mx;
}

// Sum over kept entries of exp(x[j] - mx), mx >= every kept x[j].
ASL_HOT float masked_sum_exp(const float* __restrict x, const float* __restrict keep, float mx, int64_t n) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) sum += keep[j] * exp_nonpositive(x[j] - mx);
  return sum;
}

// acc[j] += exp(x[j] - mx) * inv over kept entries (probabilities of one softmax row).
ASL_HOT void add_masked_probs(float* __restrict acc, const float* __restrict x, const float* __restrict keep,
                              float mx, float inv, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) acc[j] += keep[j] * exp_nonpositive(x[j] - mx) * inv;
}

struct Dims {
  int64_t batch, groups, ratio, w, n, m, d;
  int64_t rows;    // r * w stacked window rows per group
  int64_t chunks;  // key chunks of kKeyChunk
  float scale;     // 1 / sqrt(d)
};

// Per-thread scratch: a chunk's logits [rows, kKeyChunk], its keys in float32, its mask.
struct Scratch {
  std::vector<float> logits, keys, keep;
  explicit Scratch(const Dims& s)
      : logits(s.rows * std::min(kKeyChunk, s.n)), keys(std::min(kKeyChunk, s.n) * s.d),
        keep(std::min(kKeyChunk, s.n)) {}
};

// Fills scratch.logits [rows, c1 - c0] with Q K[c0:c1]^T / sqrt(d), -inf on padding keys, and
// scratch.keep [c1 - c0] with 1 for real keys, 0 for padding.
template <typename scalar_t>
void chunk_logits(const Dims& s, const float* q_bg, const scalar_t* keys_bg, const bool* mask_b, int64_t c0,
                  int64_t c1, Scratch& scratch) {
  const int64_t cw = c1 - c0;
  const float* kf;
  if constexpr (std::is_same_v<scalar_t, float>) {
    kf = keys_bg + c0 * s.d;
  } else {
    const scalar_t* src = keys_bg + c0 * s.d;
    for (int64_t i = 0; i < cw * s.d; ++i) scratch.keys[i] = static_cast<float>(src[i]);
    kf = scratch.keys.data();
  }
  for (int64_t j = 0; j < cw; ++j) scratch.keep[j] = mask_b[c0 + j] ? 1.0f : 0.0f;
  // Raw pointers wrapped without ownership (plain tensors: no autograd history, whatever the
  // caller's inputs and thread-local state); at::mm_out is the BLAS call.
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  const at::Tensor q_rows = at::from_blob(const_cast<float*>(q_bg), {s.rows, s.d}, opts);
  const at::Tensor k_chunk = at::from_blob(const_cast<float*>(kf), {cw, s.d}, opts);
  at::Tensor out = at::from_blob(scratch.logits.data(), {s.rows, cw}, opts);
  at::mm_out(out, q_rows, k_chunk.t());
  for (int64_t row = 0; row < s.rows; ++row) {
    scale_and_mask(scratch.logits.data() + row * cw, scratch.keep.data(), s.scale, cw);
  }
}

template <typename scalar_t>
void window_scores_impl(const Dims& s, const at::Tensor& q, const at::Tensor& keys, const at::Tensor& mask,
                        int64_t kernel, bool avg, at::Tensor& out) {
  const scalar_t* k_ptr = keys.const_data_ptr<scalar_t>();
  const bool* mask_ptr = mask.const_data_ptr<bool>();
  const int64_t bg_count = s.batch * s.groups;
  const float* q_ptr = q.const_data_ptr<float>();  // [B, G, rows, d]: group bg's block at bg * rows * d

  // Pass 1: per (b, g, chunk, row) the chunk's max logit and sum of exp(logit - max).
  std::vector<float> chunk_max(bg_count * s.chunks * s.rows), chunk_sum(bg_count * s.chunks * s.rows);
  at::parallel_for(0, bg_count * s.chunks, 1, [&](int64_t begin, int64_t end) {
    Scratch scratch(s);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bg = task / s.chunks, c = task % s.chunks, b = bg / s.groups;
      const int64_t c0 = c * kKeyChunk, c1 = std::min(s.n, c0 + kKeyChunk), cw = c1 - c0;
      chunk_logits(s, q_ptr + bg * s.rows * s.d, k_ptr + bg * s.n * s.d, mask_ptr + b * s.n, c0, c1, scratch);
      const float* keep = scratch.keep.data();
      for (int64_t row = 0; row < s.rows; ++row) {
        const int64_t query_col = s.m + row % s.w;                       // absolute column of the query
        const int64_t lim = std::min(c1, query_col + 1) - c0;           // causal: keys <= query_col
        const float* x = scratch.logits.data() + row * cw;
        const float mx = row_max_of(x, std::max<int64_t>(lim, 0));
        const float sum = mx != kNegInf ? masked_sum_exp(x, keep, mx, lim) : 0.0f;
        chunk_max[task * s.rows + row] = mx;
        chunk_sum[task * s.rows + row] = sum;
      }
    }
  });

  // Merge the chunks in order: per row the max M and 1 / sum (0 for a row that sees no key).
  std::vector<float> row_max(bg_count * s.rows), row_inv(bg_count * s.rows);
  at::parallel_for(0, bg_count * s.rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bg = task / s.rows, row = task % s.rows;
      float mx = kNegInf;
      for (int64_t c = 0; c < s.chunks; ++c) mx = std::max(mx, chunk_max[(bg * s.chunks + c) * s.rows + row]);
      float sum = 0.0f;
      if (mx != kNegInf) {
        for (int64_t c = 0; c < s.chunks; ++c) {
          const int64_t slot = (bg * s.chunks + c) * s.rows + row;
          if (chunk_max[slot] != kNegInf) sum += chunk_sum[slot] * std::exp(chunk_max[slot] - mx);
        }
      }
      row_max[task] = mx;
      row_inv[task] = sum > 0.0f ? 1.0f / sum : 0.0f;
    }
  });

  // Pass 2: column sums of the probabilities over each head's w rows, prefix columns only.
  // Every window query sees every prefix key (causally), so only padding masks them.
  at::Tensor sums = at::empty({bg_count, s.ratio, s.m}, out.options());
  float* sums_ptr = sums.data_ptr<float>();
  const int64_t prefix_chunks = (s.m + kKeyChunk - 1) / kKeyChunk;
  at::parallel_for(0, bg_count * prefix_chunks, 1, [&](int64_t begin, int64_t end) {
    Scratch scratch(s);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bg = task / prefix_chunks, c = task % prefix_chunks, b = bg / s.groups;
      const int64_t c0 = c * kKeyChunk, c1 = std::min(s.n, c0 + kKeyChunk), cw = c1 - c0;
      const int64_t cols = std::min(c1, s.m) - c0;
      chunk_logits(s, q_ptr + bg * s.rows * s.d, k_ptr + bg * s.n * s.d, mask_ptr + b * s.n, c0, c1, scratch);
      const float* keep = scratch.keep.data();
      for (int64_t hl = 0; hl < s.ratio; ++hl) {
        float* acc = sums_ptr + (bg * s.ratio + hl) * s.m + c0;
        std::fill(acc, acc + cols, 0.0f);
        for (int64_t i = 0; i < s.w; ++i) {
          const int64_t row = hl * s.w + i;
          const float inv = row_inv[bg * s.rows + row], mx = row_max[bg * s.rows + row];
          if (inv == 0.0f) continue;  // a padding query: sees no key, contributes zeros
          const float* x = scratch.logits.data() + row * cw;
          add_masked_probs(acc, x, keep, mx, inv, cols);
        }
      }
    }
  });

  // Final: pool each head's column sums (stride 1, padding kernel / 2; avg divides by
  // kernel always, max ignores the padding), sum the group's heads, -inf on padding.
  float* out_ptr = out.data_ptr<float>();
  at::parallel_for(0, bg_count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bg = begin; bg < end; ++bg) {
      const bool* mask_b = mask_ptr + (bg / s.groups) * s.n;
      float* dst = out_ptr + bg * s.m;
      for (int64_t j = 0; j < s.m; ++j) {
        if (!mask_b[j]) {
          dst[j] = kNegInf;
          continue;
        }
        dst[j] = pooled_group_score(sums_ptr + bg * s.ratio * s.m, s.ratio, s.m, j, kernel, avg);
      }
    }
  });
}

}  // namespace

at::Tensor window_scores_cpu(const at::Tensor& q_window, const at::Tensor& keys_in, const at::Tensor& key_mask,
                             int64_t kernel, c10::string_view pooling) {
  check_window_scores(q_window, keys_in, key_mask, kernel, pooling);
  TORCH_CHECK(q_window.device().is_cpu(), "asl::window_scores: CPU kernel got q_window on ", q_window.device());
  Dims s{};
  s.batch = q_window.size(0);
  s.groups = keys_in.size(1);
  s.ratio = q_window.size(1) / s.groups;
  s.w = q_window.size(2);
  s.n = keys_in.size(2);
  s.m = s.n - s.w;
  s.d = q_window.size(3);
  s.rows = s.ratio * s.w;
  s.chunks = (s.n + kKeyChunk - 1) / kKeyChunk;
  s.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.d)));
  // Inputs of any strides: non-contiguous ones are copied (q_window is small; keys are
  // not copied when already contiguous, as a KV cache is).
  const at::Tensor q = q_window.to(at::kFloat).contiguous().view({s.batch, s.groups, s.rows, s.d});
  const at::Tensor keys = keys_in.contiguous();
  const at::Tensor mask = key_mask.contiguous();
  at::Tensor out = at::empty({s.batch, s.groups, s.m}, q.options());
  if (s.batch == 0) return out;
  ASL_DISPATCH_SCORE_TYPES(keys.scalar_type(), "asl::window_scores", [&] {
    window_scores_impl<scalar_t>(s, q, keys, mask, kernel, pooling == "avg", out);
  });
  return out;
}

}  // namespace asl
