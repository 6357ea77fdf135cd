// The per-token maths of routed_mixture, shared by the CPU kernel (routed_mixture.cpp)
// and the CUDA kernel (cuda/routed_mixture.cu): one definition of every formula, two loops
// around it.
//
//   w       = softmax(logits[i])                       (4 router logits per token)
//   out[i]  = w0*y_attn[i] + w1*y_mlp[i] + w2*avg[i] + w3*max[i]
//   avg[i]  = mean of x over the window of i clipped to [0, len): [i - r, i + r], r = pool_size / 2,
//             or with causal = true [i - 2r, i] (the same width p = pool_size, ending at i)
//   max[i]  = max  of x over the same window
//
// Backward (gather form: every output row written by exactly one thread of work, no atomics):
//   s_o        = <dout[i], term_o[i]>                  (term = y_attn, y_mlp, avg, max)
//   d_logit_o  = w_o * (s_o - sum_k w_k s_k)           (softmax backward)
//   d_y_attn   = w0 * dout,   d_y_mlp = w1 * dout
//   dx[j]      = sum over the valid i whose window holds j (receivers(j) below) of
//                  w2[i] * dout[i] / count[i]                       (avg-pool)
//                + (argmax of window i == j) * w3[i] * dout[i]       (max-pool)
//
// Tie rule of the max-pool (forward value and gradient): a later element replaces the
// running maximum only if it is strictly greater (or NaN), so among equal maxima the FIRST
// (lowest) index of the window wins and receives the whole gradient. This is exactly what
// torch.max_pool1d/2d do on CPU and CUDA (`val > maxval || isnan(val)`), which the reference
// (iteach_fast.reference.masked_max_pool) uses.
//
// Rows at or beyond len are invalid: their output and every gradient are 0, and they are
// never read. Everything is computed in the accumulation type A (float for float, half and
// bfloat16; double for double).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define ITF_HD __host__ __device__ __forceinline__
#else
#define ITF_HD inline
#endif

namespace iteach_fast {
namespace rm {

constexpr int kMixers = 4;  // (attention, mlp, avgpool, maxpool)

ITF_HD float exp_(float v) { return expf(v); }
ITF_HD double exp_(double v) { return ::exp(v); }

// a / b for the denominators of this op (softmax sums in [1, 4], window counts in [1, p]).
// On a GPU, float uses __fdividef (within 2 ulp, like expf there): IEEE division compiles
// to a call of a slow-path subroutine, and a call inside the backward's loops makes ptxas
// save the live registers to local memory (spills). Exact everywhere else.
ITF_HD float div_(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdividef(a, b);
#else
  return a / b;
#endif
}
ITF_HD double div_(double a, double b) { return a / b; }

// [a, b] clipped to [0, len).
ITF_HD void clip(int64_t a, int64_t b, int64_t len, int64_t& lo, int64_t& hi) {
  lo = a < 0 ? 0 : a;
  hi = b > len - 1 ? len - 1 : b;
}

// The pool window of token i, [lo, hi], clipped to the valid rows [0, len): centred
// [i - r, i + r], or causal [i - 2r, i] (width p = 2r + 1, ending at i). Requires 0 <= i < len.
ITF_HD void window(int64_t i, int64_t r, bool causal, int64_t len, int64_t& lo, int64_t& hi) {
  clip(causal ? i - 2 * r : i - r, causal ? i : i + r, len, lo, hi);
}

// The valid tokens whose windows hold row j (the rows dx[j] gathers from), [lo, hi]: those
// with i - 2r <= j <= i causal ([j, j + 2r]), with |i - j| <= r centred ([j - r, j + r]).
ITF_HD void receivers(int64_t j, int64_t r, bool causal, int64_t len, int64_t& lo, int64_t& hi) {
  clip(causal ? j : j - r, causal ? j + 2 * r : j + r, len, lo, hi);
}

// The four router weights w = softmax(logits[0..3]) of one token, in A (max-subtracted:
// finite for any finite logits).
template <typename A, typename T>
ITF_HD void softmax4(const T* logits, A w[kMixers]) {
  const A l0 = A(logits[0]), l1 = A(logits[1]), l2 = A(logits[2]), l3 = A(logits[3]);
  A m = l0 > l1 ? l0 : l1;
  m = m > l2 ? m : l2;
  m = m > l3 ? m : l3;
  const A e0 = exp_(l0 - m), e1 = exp_(l1 - m), e2 = exp_(l2 - m), e3 = exp_(l3 - m);
  const A inv = div_(A(1), e0 + e1 + e2 + e3);
  w[0] = e0 * inv;
  w[1] = e1 * inv;
  w[2] = e2 * inv;
  w[3] = e3 * inv;
}

// The softmax backward: d_logit_o = w_o * (s_o - sum_k w_k s_k), s_o = <dout, term_o>.
template <typename A>
ITF_HD void softmax4_backward(const A w[kMixers], const A s[kMixers], A dl[kMixers]) {
  const A t = w[0] * s[0] + w[1] * s[1] + w[2] * s[2] + w[3] * s[3];
  dl[0] = w[0] * (s[0] - t);
  dl[1] = w[1] * (s[1] - t);
  dl[2] = w[2] * (s[2] - t);
  dl[3] = w[3] * (s[3] - t);
}

// The max-pool tie rule (see the top of this file): does v replace the running maximum m?
// Strictly greater, or NaN (NaN propagates, as in torch). Equal values do not: first index wins.
// Bitwise `|`, not `||`: no branch, so loops over D stay vectorisable (and branch-free on
// random data, where a branch would mispredict half the time).
template <typename A>
ITF_HD bool max_takes(A v, A m) {
  return (v > m) | (v != v);
}

// One step of the window scan: running sum and running max (first index on ties).
template <typename A>
ITF_HD void pool_step(A v, A& sum, A& mx) {
  sum += v;
  mx = max_takes(v, mx) ? v : mx;
}

// One step of the arg-max scan of a window (first index on ties), for the max-pool gradient.
// I: the index type (int32_t on the CPU, as wide as float lanes, so the loop vectorises).
template <typename A, typename I>
ITF_HD void argmax_step(A v, I k, A& mx, I& arg) {
  const bool t = max_takes(v, mx);
  mx = t ? v : mx;
  arg = t ? k : arg;
}

// The mixture of one element: out = w0*y_attn + w1*y_mlp + w2*(sum/count) + w3*max.
template <typename A>
ITF_HD A mix4(const A w[kMixers], A ya, A ym, A sum, A inv_count, A mx) {
  return w[0] * ya + w[1] * ym + w[2] * (sum * inv_count) + w[3] * mx;
}

// The gradient that token i's output sends to x[j] (j inside i's window): through the
// avg-pool always, through the max-pool only if j is the window's arg-max.
// (A select of two weights, then one product: branch-free, so the loop over D vectorises.)
template <typename A>
ITF_HD A dx_from(A g, A w2_over_count, A w3, bool j_is_argmax) {
  return (w2_over_count + (j_is_argmax ? w3 : A(0))) * g;
}

// len clamped to [0, L]: lengths come validated from iteach_fast.ops, but a direct call of
// the op must not read out of bounds.
ITF_HD int64_t clamp_len(int64_t len, int64_t L) { return len < 0 ? 0 : (len > L ? L : len); }

}  // namespace rm
}  // namespace iteach_fast
