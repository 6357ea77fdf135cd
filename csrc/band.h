// ECCE's band means read from the chunk-local prefix table (B, H, 3, L) = (S, R, zp) per head
// (docs/maths.md, "The prefix table"): shared by the band-means op (band_means.cpp) and the
// fused CPU attention (attention.cpp), so both read the table in the reference's order.
//
// E[i][j] = sum zp[b..a] / (a - b + 1) with a = max(i, j), b = min(i, j), and
//   sum zp[b..a] = S[a] + (zp[b] - S[b])   when a and b share a chunk of `dist` positions,
//                = S[a] + R[b]             when b lies in the chunk before
// (the reference's formula and summation order, so both give the same float). A row's band
// splits into at most three runs of one kind each, so the loops below have no branch and no
// division per entry.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace iteach_fast::band {

// 1 / (d + 1) for the widths d = 0 .. dist - 1 of a band, computed as the reference rounds it.
template <typename T>
std::vector<T> reciprocals(int64_t dist) {
  std::vector<T> inv(dist);
  for (int64_t d = 0; d < dist; ++d) inv[d] = T(1) / T(d + 1);
  return inv;
}

// The valid positions of conversation b, min(lengths[b], L) (all L without lengths).
inline int64_t valid_length(const int64_t* lens, int64_t b, int64_t L) {
  return lens ? std::clamp<int64_t>(lens[b], 0, L) : L;
}

// Row i's band keys: j in [lo, hi] with |i - j| < dist (causal: i - dist < j <= i), j < keys.
inline void range(int64_t i, int64_t keys, int64_t dist, bool causal, int64_t& lo, int64_t& hi) {
  lo = std::max<int64_t>(0, i - dist + 1);
  hi = std::min<int64_t>(keys - 1, causal ? i : i + dist - 1);
}

// row[j] += E[i][j] for j in [lo, hi]. One head's table: S, R and zp, `stride` apart (L when contiguous).
template <typename T>
void add_row(const T* table, int64_t stride, int64_t i, int64_t lo, int64_t hi, int64_t dist, const T* inv,
             T* row) {
  const T *S = table, *R = table + stride, *zp = table + 2 * stride;
  const int64_t start = i / dist * dist, next = start + dist;  // i's chunk is [start, next)
  for (int64_t j = lo; j < std::min(start, hi + 1); ++j) row[j] += (R[j] + S[i]) * inv[i - j];  // chunk before
  for (int64_t j = std::max(lo, start); j <= std::min(i, hi); ++j) row[j] += (zp[j] - S[j] + S[i]) * inv[i - j];
  const T own = zp[i] - S[i], before = R[i];
  for (int64_t j = i + 1; j <= std::min(next - 1, hi); ++j) row[j] += (own + S[j]) * inv[j - i];  // same chunk
  for (int64_t j = std::max(next, i + 1); j <= hi; ++j) row[j] += (before + S[j]) * inv[j - i];  // chunk after
}

// The gradient g[j] of E[i][j], j in [lo, hi], added to the table entries each mean reads.
template <typename T>
void scatter_row(T* d_table, int64_t stride, int64_t i, int64_t lo, int64_t hi, int64_t dist, const T* inv,
                 const T* g) {
  T *dS = d_table, *dR = d_table + stride, *dzp = d_table + 2 * stride;
  const int64_t start = i / dist * dist, next = start + dist;
  T to_si = 0, to_zpi = 0, to_ri = 0;
  for (int64_t j = lo; j < std::min(start, hi + 1); ++j) {
    const T gj = g[j] * inv[i - j];
    to_si += gj;
    dR[j] += gj;
  }
  for (int64_t j = std::max(lo, start); j <= std::min(i, hi); ++j) {
    const T gj = g[j] * inv[i - j];
    to_si += gj;
    dzp[j] += gj;
    dS[j] -= gj;
  }
  for (int64_t j = i + 1; j <= std::min(next - 1, hi); ++j) {
    const T gj = g[j] * inv[j - i];
    dS[j] += gj;
    to_zpi += gj;
    to_si -= gj;
  }
  for (int64_t j = std::max(next, i + 1); j <= hi; ++j) {
    const T gj = g[j] * inv[j - i];
    dS[j] += gj;
    to_ri += gj;
  }
  dS[i] += to_si;
  dzp[i] += to_zpi;
  dR[i] += to_ri;
}

// One head's n x n block of valid positions (rows `ld` apart): rows[i][j] += E[i][j] on the band.
template <typename T>
void add(const T* table, int64_t stride, int64_t n, int64_t dist, bool causal, const T* inv, T* rows, int64_t ld) {
  for (int64_t i = 0; i < n; ++i) {
    int64_t lo, hi;
    range(i, n, dist, causal, lo, hi);
    add_row(table, stride, i, lo, hi, dist, inv, rows + i * ld);
  }
}

// The gradient of that block's band (rows `ld` apart) onto the head's table.
template <typename T>
void scatter(T* d_table, int64_t stride, int64_t n, int64_t dist, bool causal, const T* inv, const T* grads,
             int64_t ld) {
  for (int64_t i = 0; i < n; ++i) {
    int64_t lo, hi;
    range(i, n, dist, causal, lo, hi);
    scatter_row(d_table, stride, i, lo, hi, dist, inv, grads + i * ld);
  }
}

}  // namespace iteach_fast::band
