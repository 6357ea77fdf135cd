// ECCE's band means on the CPU: E (B, H, L, L) from the chunk-local prefix table (B, H, 3, L)
// (docs/maths.md, "The prefix table"), and its backward straight back onto the table.
//
// The reference builds E from broadcast L x L differences and lets autograd run ~10 passes
// over L x L tensors backwards; here the forward writes each E row once and the backward
// reads each band entry once, scattering it onto three table entries: O(L * dist) per head.
// The CUDA side is the Triton kernels (which never materialise E), so this is CPU only.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

namespace iteach_fast {

namespace {

// For j <= i in one band: sum zp[j..i] = S[i] + (zp[j] - S[j]) when i and j share a chunk of
// `dist` positions, S[i] + R[j] when j lies in the chunk before (the reference's formula and
// summation order, so both give the same float).
template <typename T>
inline T band_sum(const T* S, const T* R, const T* zp, int64_t i, int64_t j, int64_t dist) {
  return (i / dist == j / dist ? zp[j] - S[j] : R[j]) + S[i];
}

void check(const at::Tensor& t, const char* name, const c10::optional<at::Tensor>& lengths, int64_t dist) {
  TORCH_CHECK(t.dim() == 4, "band_means: ", name, " must be 4-d, got ", t.sizes());
  TORCH_CHECK(t.device().is_cpu(), "band_means: ", name, " must be on the CPU (CUDA uses the Triton kernels)");
  TORCH_CHECK(dist >= 1, "band_means: dist must be >= 1, got ", dist);
  if (lengths.has_value()) {
    TORCH_CHECK(lengths->dim() == 1 && lengths->size(0) == t.size(0) && lengths->scalar_type() == at::kLong &&
                    lengths->device().is_cpu(),
                "band_means: lengths must be int64 (B,) = (", t.size(0), ",) on the CPU, got ",
                lengths->scalar_type(), " ", lengths->sizes());
  }
}

// The band of row i: j in [lo, hi], j < len (and, unless the keys alone are masked, i < len too).
inline void band(int64_t i, int64_t L, int64_t dist, bool causal, int64_t len, bool keys_only, int64_t& lo,
                 int64_t& hi) {
  lo = std::max<int64_t>(0, i - dist + 1);
  hi = std::min<int64_t>(std::min(L, len) - 1, causal ? i : i + dist - 1);
  if (i >= len && !keys_only) hi = lo - 1;  // an invalid query row: all zero
}

}  // namespace

// fill: None gives ECCE's bias (0 unless both positions are valid); a value gives the
// attention's scores before q k^T: `fill` where the key is masked (j >= len, or j > i if
// causal), the band means elsewhere in the band, 0 outside it, every query row computed.
at::Tensor band_means(const at::Tensor& prefix_in, const c10::optional<at::Tensor>& lengths, int64_t dist,
                      bool causal, c10::optional<double> fill) {
  check(prefix_in, "prefix", lengths, dist);
  TORCH_CHECK(prefix_in.size(2) == 3, "band_means: prefix must be (B, H, 3, L), got ", prefix_in.sizes());
  const at::Tensor prefix = prefix_in.contiguous();
  const int64_t B = prefix.size(0), H = prefix.size(1), L = prefix.size(3);
  const bool keys_only = fill.has_value();
  at::Tensor E = keys_only ? at::empty({B, H, L, L}, prefix.options()) : at::zeros({B, H, L, L}, prefix.options());
  const at::Tensor len = lengths.has_value() ? lengths->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(prefix.scalar_type(), "band_means", [&] {
    const scalar_t* P = prefix.data_ptr<scalar_t>();
    scalar_t* out = E.data_ptr<scalar_t>();
    const int64_t* lens = len.defined() ? len.data_ptr<int64_t>() : nullptr;
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        const scalar_t* S = P + bh * 3 * L;
        const scalar_t *R = S + L, *zp = S + 2 * L;
        const int64_t n = lens ? std::min<int64_t>(L, lens[bh / H]) : L;
        for (int64_t i = 0; i < L; ++i) {
          int64_t lo, hi;
          band(i, L, dist, causal, n, keys_only, lo, hi);
          scalar_t* row = out + (bh * L + i) * L;
          if (keys_only) {  // 0 up to the band, fill from the first masked key
            const int64_t keys = std::min<int64_t>(n, causal ? i + 1 : L);
            std::fill(row, row + std::min(lo, keys), scalar_t(0));
            std::fill(row + std::max<int64_t>(hi + 1, 0), row + keys, scalar_t(0));
            std::fill(row + std::max<int64_t>(keys, 0), row + L, scalar_t(*fill));
          }
          for (int64_t j = lo; j <= hi; ++j) {
            const scalar_t sum = j <= i ? band_sum(S, R, zp, i, j, dist) : band_sum(S, R, zp, j, i, dist);
            row[j] = sum * (scalar_t(1) / scalar_t(std::abs(i - j) + 1));
          }
        }
      }
    });
  });
  return E;
}

// d prefix (B, H, 3, L): each band entry's gradient, divided by its width, added to the three
// table entries its sum reads. Parallel over (b, h): one head's scatter stays in one thread.
at::Tensor band_means_backward(const at::Tensor& grad_in, const c10::optional<at::Tensor>& lengths, int64_t dist,
                               bool causal, c10::optional<double> fill) {
  const bool keys_only = fill.has_value();
  check(grad_in, "grad", lengths, dist);
  TORCH_CHECK(grad_in.size(2) == grad_in.size(3), "band_means_backward: grad must be (B, H, L, L), got ",
              grad_in.sizes());
  const at::Tensor grad = grad_in.contiguous();
  const int64_t B = grad.size(0), H = grad.size(1), L = grad.size(3);
  at::Tensor d_prefix = at::zeros({B, H, 3, L}, grad.options());
  const at::Tensor len = lengths.has_value() ? lengths->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "band_means_backward", [&] {
    const scalar_t* G = grad.data_ptr<scalar_t>();
    scalar_t* D = d_prefix.data_ptr<scalar_t>();
    const int64_t* lens = len.defined() ? len.data_ptr<int64_t>() : nullptr;
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        scalar_t* dS = D + bh * 3 * L;
        scalar_t *dR = dS + L, *dzp = dS + 2 * L;
        const int64_t n = lens ? std::min<int64_t>(L, lens[bh / H]) : L;
        for (int64_t i = 0; i < L; ++i) {
          int64_t lo, hi;
          band(i, L, dist, causal, n, keys_only, lo, hi);
          const scalar_t* row = G + (bh * L + i) * L;
          for (int64_t j = lo; j <= hi; ++j) {
            const scalar_t g = row[j] * (scalar_t(1) / scalar_t(std::abs(i - j) + 1));
            const int64_t a = std::max(i, j), b = std::min(i, j);  // sum zp[b..a]
            dS[a] += g;
            if (a / dist == b / dist) {
              dzp[b] += g;
              dS[b] -= g;
            } else {
              dR[b] += g;
            }
          }
        }
      }
    });
  });
  return d_prefix;
}

}  // namespace iteach_fast

TORCH_LIBRARY_FRAGMENT(iteach_fast, m) {
  // ECCE's band means E (B, H, L, L) from the prefix table (B, H, 3, L) (float32 / float64, CPU);
  // with lengths, E is 0 unless both positions are valid; with fill, masked keys hold `fill`
  // instead (the attention's masked scores, q k^T to be added in place).
  m.def("band_means(Tensor prefix, Tensor? lengths, int dist, bool causal, float? fill=None) -> Tensor");
  m.def("band_means_backward(Tensor grad, Tensor? lengths, int dist, bool causal, float? fill=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(iteach_fast, CPU, m) {
  m.impl("band_means", &iteach_fast::band_means);
  m.impl("band_means_backward", &iteach_fast::band_means_backward);
}
