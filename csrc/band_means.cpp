// ECCE's band means on the CPU: E (B, H, L, L) from the chunk-local prefix table (B, H, 3, L)
// (docs/maths.md, "The prefix table"), and its backward straight back onto the table.
//
// The reference builds E from broadcast L x L differences and lets autograd run ~10 passes
// over L x L tensors backwards; here the forward writes each E row once and the backward
// reads each band entry once, scattering it onto three table entries: O(L * dist) per head.
// ecce_bias's cpp implementation; the attention reads the table itself (attention.cpp).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "band.h"

namespace iteach_fast {

namespace {

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

}  // namespace

// E is 0 outside the band and, with lengths, unless both positions are valid.
at::Tensor band_means(const at::Tensor& prefix_in, const c10::optional<at::Tensor>& lengths, int64_t dist,
                      bool causal) {
  check(prefix_in, "prefix", lengths, dist);
  TORCH_CHECK(prefix_in.size(2) == 3, "band_means: prefix must be (B, H, 3, L), got ", prefix_in.sizes());
  const at::Tensor prefix = prefix_in.contiguous();
  const int64_t B = prefix.size(0), H = prefix.size(1), L = prefix.size(3);
  at::Tensor E = at::zeros({B, H, L, L}, prefix.options());
  const at::Tensor len = lengths.has_value() ? lengths->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(prefix.scalar_type(), "band_means", [&] {
    const scalar_t* P = prefix.data_ptr<scalar_t>();
    scalar_t* out = E.data_ptr<scalar_t>();
    const int64_t* lens = len.defined() ? len.data_ptr<int64_t>() : nullptr;
    const auto inv = band::reciprocals<scalar_t>(dist);
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh)
        band::add(P + bh * 3 * L, L, band::valid_length(lens, bh / H, L), dist, causal, inv.data(), out + bh * L * L,
                  L);
    });
  });
  return E;
}

// d prefix (B, H, 3, L): each band entry's gradient, divided by its width, added to the three
// table entries its sum reads. Parallel over (b, h): one head's scatter stays in one thread.
at::Tensor band_means_backward(const at::Tensor& grad_in, const c10::optional<at::Tensor>& lengths, int64_t dist,
                               bool causal) {
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
    const auto inv = band::reciprocals<scalar_t>(dist);
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh)
        band::scatter(D + bh * 3 * L, L, band::valid_length(lens, bh / H, L), dist, causal, inv.data(), G + bh * L * L,
                      L);
    });
  });
  return d_prefix;
}

}  // namespace iteach_fast

TORCH_LIBRARY_FRAGMENT(iteach_fast, m) {
  // ECCE's band means E (B, H, L, L) from the prefix table (B, H, 3, L) (float32 / float64, CPU);
  // with lengths, E is 0 unless both positions are valid.
  m.def("band_means(Tensor prefix, Tensor? lengths, int dist, bool causal) -> Tensor");
  m.def("band_means_backward(Tensor grad, Tensor? lengths, int dist, bool causal) -> Tensor");
}

TORCH_LIBRARY_IMPL(iteach_fast, CPU, m) {
  m.impl("band_means", &iteach_fast::band_means);
  m.impl("band_means_backward", &iteach_fast::band_means_backward);
}
