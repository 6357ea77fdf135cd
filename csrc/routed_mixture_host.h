// Host side of routed_mixture, shared by the CPU and CUDA entry points: the input checks,
// the contiguous copies and the outputs, defined once in routed_mixture.cpp.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace iteach_fast {

// A call's inputs, checked (shapes, dtypes, devices, pool_size) and made contiguous once.
struct RoutedMixtureCall {
  at::Tensor logits, x, y_attn, y_mlp, lengths;
  int64_t B, L, D, r;  // r = pool_size / 2, the pool window's half-width
  bool causal;         // windows [i - 2r, i] instead of [i - r, i + r]
};
RoutedMixtureCall routed_mixture_call(const at::Tensor& logits, const at::Tensor& x, const at::Tensor& y_attn,
                                      const at::Tensor& y_mlp, const at::Tensor& lengths, int64_t pool_size,
                                      bool causal);

// The backward's incoming gradient (checked, contiguous) and its four uninitialised outputs.
struct RoutedMixtureGrads {
  at::Tensor grad, d_logits, d_x, d_y_attn, d_y_mlp;
};
RoutedMixtureGrads routed_mixture_grads(const at::Tensor& grad, const RoutedMixtureCall& call);

}  // namespace iteach_fast
