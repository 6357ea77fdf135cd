// routed_mixture on the CPU: at::parallel_for over tokens, the maths of routed_mixture.h
// applied along each token's feature row in simple loops over D that the compiler can
// vectorise. The op schemas are declared in extension.cpp; the CUDA kernels register
// themselves in cuda/routed_mixture.cu (absent from a CPU-only build).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "routed_mixture.h"
#include "routed_mixture_host.h"

// The loops over D: independent lanes, no aliasing between the row buffers and the tensors,
// so ask OpenMP (the build compiles with -fopenmp) to vectorise them.
#define ITF_SIMD _Pragma("omp simd")

namespace iteach_fast {

namespace {

void routed_mixture_check(const at::Tensor& logits, const at::Tensor& x, const at::Tensor& y_attn,
                          const at::Tensor& y_mlp, const at::Tensor& lengths, int64_t pool_size) {
  TORCH_CHECK(x.dim() == 3, "routed_mixture: x must be (B, L, D), got ", x.sizes());
  const auto B = x.size(0), L = x.size(1);
  TORCH_CHECK(logits.dim() == 3 && logits.size(0) == B && logits.size(1) == L && logits.size(2) == rm::kMixers,
              "routed_mixture: logits must be (B, L, 4) = (", B, ", ", L, ", 4), got ", logits.sizes());
  TORCH_CHECK(y_attn.sizes() == x.sizes(), "routed_mixture: y_attn must have x's shape ", x.sizes(),
              ", got ", y_attn.sizes());
  TORCH_CHECK(y_mlp.sizes() == x.sizes(), "routed_mixture: y_mlp must have x's shape ", x.sizes(),
              ", got ", y_mlp.sizes());
  TORCH_CHECK(logits.scalar_type() == x.scalar_type() && y_attn.scalar_type() == x.scalar_type() &&
                  y_mlp.scalar_type() == x.scalar_type(),
              "routed_mixture: logits, x, y_attn, y_mlp must share a dtype");
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == B && lengths.scalar_type() == at::kLong,
              "routed_mixture: lengths must be int64 (B,) = (", B, ",), got ", lengths.scalar_type(), " ",
              lengths.sizes());
  for (const at::Tensor* t : {&logits, &y_attn, &y_mlp, &lengths}) {
    TORCH_CHECK(t->device() == x.device(), "routed_mixture: every input must be on x's device ", x.device());
  }
  TORCH_CHECK(pool_size >= 1 && pool_size % 2 == 1, "routed_mixture: pool_size must be odd and >= 1, got ",
              pool_size);
  TORCH_CHECK(L < (int64_t(1) << 31), "routed_mixture: L must be < 2^31, got ", L);
}

}  // namespace

RoutedMixtureCall routed_mixture_call(const at::Tensor& logits, const at::Tensor& x, const at::Tensor& y_attn,
                                      const at::Tensor& y_mlp, const at::Tensor& lengths, int64_t pool_size,
                                      bool causal) {
  routed_mixture_check(logits, x, y_attn, y_mlp, lengths, pool_size);
  return {logits.contiguous(), x.contiguous(), y_attn.contiguous(), y_mlp.contiguous(), lengths.contiguous(),
          x.size(0), x.size(1), x.size(2), pool_size / 2, causal};
}

RoutedMixtureGrads routed_mixture_grads(const at::Tensor& grad, const RoutedMixtureCall& c) {
  TORCH_CHECK(grad.sizes() == c.x.sizes() && grad.scalar_type() == c.x.scalar_type() && grad.device() == c.x.device(),
              "routed_mixture_backward: grad must match x's shape, dtype and device");
  const auto opts = c.x.options();
  return {grad.contiguous(), at::empty({c.B, c.L, rm::kMixers}, opts), at::empty({c.B, c.L, c.D}, opts),
          at::empty({c.B, c.L, c.D}, opts), at::empty({c.B, c.L, c.D}, opts)};
}

namespace {

// Tokens per parallel_for chunk: about 16K elements of work, at least one token.
int64_t grain(int64_t D, int64_t pool_size) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, D * pool_size)); }

// Sum and max of the x rows lo..hi (one token's pool window), element-wise over D.
template <typename T, typename A>
void pool_window(const T* xb, int64_t lo, int64_t hi, int64_t D, A* sum, A* mx) {
  const T* x0 = xb + lo * D;
  ITF_SIMD
  for (int64_t d = 0; d < D; ++d) sum[d] = mx[d] = A(x0[d]);
  for (int64_t k = lo + 1; k <= hi; ++k) {
    const T* xk = xb + k * D;
    ITF_SIMD
    for (int64_t d = 0; d < D; ++d) rm::pool_step<A>(A(xk[d]), sum[d], mx[d]);
  }
}

template <typename T, typename A>
void forward_kernel(const T* logits, const T* x, const T* ya, const T* ym, const int64_t* lengths, T* out,
                    int64_t B, int64_t L, int64_t D, int64_t r, bool causal) {
  at::parallel_for(0, B * L, grain(D, 2 * r + 1), [&](int64_t begin, int64_t end) {
    std::vector<A> sum(D), mx(D);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / L, i = t % L;
      const int64_t len = rm::clamp_len(lengths[b], L);
      T* o = out + t * D;
      if (i >= len) {
        std::fill(o, o + D, T(0));
        continue;
      }
      A w[rm::kMixers];
      rm::softmax4<A>(logits + t * rm::kMixers, w);
      int64_t lo, hi;
      rm::window(i, r, causal, len, lo, hi);
      const A inv_count = rm::div_(A(1), A(hi - lo + 1));
      pool_window<T, A>(x + b * L * D, lo, hi, D, sum.data(), mx.data());
      const T* a = ya + t * D;
      const T* m = ym + t * D;
      ITF_SIMD
      for (int64_t d = 0; d < D; ++d) o[d] = T(rm::mix4<A>(w, A(a[d]), A(m[d]), sum[d], inv_count, mx[d]));
    }
  });
}

template <typename T, typename A>
void backward_kernel(const T* dout, const T* logits, const T* x, const T* ya, const T* ym, const int64_t* lengths,
                     T* dlogits, T* dx, T* dya, T* dym, int64_t B, int64_t L, int64_t D, int64_t r,
                     bool causal) {
  at::parallel_for(0, B * L, grain(D, (2 * r + 1) * (2 * r + 1)), [&](int64_t begin, int64_t end) {
    std::vector<A> sum(D), mx(D), acc(D);
    std::vector<int32_t> arg(D);  // window indices < L; 32-bit like the float lanes, so the scan vectorises
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / L, j = t % L;
      const int64_t len = rm::clamp_len(lengths[b], L);
      const int64_t row = t * D;
      if (j >= len) {
        std::fill(dx + row, dx + row + D, T(0));
        std::fill(dya + row, dya + row + D, T(0));
        std::fill(dym + row, dym + row + D, T(0));
        std::fill(dlogits + t * rm::kMixers, dlogits + (t + 1) * rm::kMixers, T(0));
        continue;
      }
      const T* xb = x + b * L * D;
      const int64_t tb = b * L;  // token index of row 0 of this conversation

      // token j's own output: its pools, for the four dot products of the softmax backward
      A w[rm::kMixers];
      rm::softmax4<A>(logits + t * rm::kMixers, w);
      int64_t lo, hi;
      rm::window(j, r, causal, len, lo, hi);
      const A inv_count = rm::div_(A(1), A(hi - lo + 1));
      pool_window<T, A>(xb, lo, hi, D, sum.data(), mx.data());
      const T* g = dout + row;
      const T* a = ya + row;
      const T* m = ym + row;
      A s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
      for (int64_t d = 0; d < D; ++d) {
        const A gd = A(g[d]);
        dya[row + d] = T(w[0] * gd);
        dym[row + d] = T(w[1] * gd);
        s0 += gd * A(a[d]);
        s1 += gd * A(m[d]);
        s2 += gd * (sum[d] * inv_count);
        s3 += gd * mx[d];
      }
      const A s[rm::kMixers] = {s0, s1, s2, s3};
      A dl[rm::kMixers];
      rm::softmax4_backward<A>(w, s, dl);
      for (int o = 0; o < rm::kMixers; ++o) dlogits[t * rm::kMixers + o] = T(dl[o]);

      // dx[j]: gather from every valid token i whose window holds j
      std::fill(acc.begin(), acc.end(), A(0));
      int64_t ilo, ihi;
      rm::receivers(j, r, causal, len, ilo, ihi);
      for (int64_t i = ilo; i <= ihi; ++i) {
        A wi[rm::kMixers];
        rm::softmax4<A>(logits + (tb + i) * rm::kMixers, wi);
        int64_t wlo, whi;
        rm::window(i, r, causal, len, wlo, whi);
        const A w2c = rm::div_(wi[2], A(whi - wlo + 1)), w3 = wi[3];
        const T* xl = xb + wlo * D;
        ITF_SIMD
        for (int64_t d = 0; d < D; ++d) {
          mx[d] = A(xl[d]);
          arg[d] = int32_t(wlo);
        }
        for (int64_t k = wlo + 1; k <= whi; ++k) {
          const T* xk = xb + k * D;
          const int32_t k32 = int32_t(k);
          ITF_SIMD
          for (int64_t d = 0; d < D; ++d) rm::argmax_step<A, int32_t>(A(xk[d]), k32, mx[d], arg[d]);
        }
        const T* gi = dout + (tb + i) * D;
        const int32_t j32 = int32_t(j);
        ITF_SIMD
        for (int64_t d = 0; d < D; ++d) acc[d] += rm::dx_from<A>(A(gi[d]), w2c, w3, arg[d] == j32);
      }
      ITF_SIMD
      for (int64_t d = 0; d < D; ++d) dx[row + d] = T(acc[d]);
    }
  });
}

at::Tensor routed_mixture_cpu(const at::Tensor& logits, const at::Tensor& x, const at::Tensor& y_attn,
                              const at::Tensor& y_mlp, const at::Tensor& lengths, int64_t pool_size, bool causal) {
  const auto c = routed_mixture_call(logits, x, y_attn, y_mlp, lengths, pool_size, causal);
  auto out = at::empty({c.B, c.L, c.D}, c.x.options());
  if (c.B * c.L == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.x.scalar_type(), "routed_mixture_cpu", [&] {
    using A = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, A>(c.logits.data_ptr<scalar_t>(), c.x.data_ptr<scalar_t>(),
                                c.y_attn.data_ptr<scalar_t>(), c.y_mlp.data_ptr<scalar_t>(),
                                c.lengths.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), c.B, c.L, c.D, c.r,
                                c.causal);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> routed_mixture_backward_cpu(
    const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& x, const at::Tensor& y_attn,
    const at::Tensor& y_mlp, const at::Tensor& lengths, int64_t pool_size, bool causal) {
  const auto c = routed_mixture_call(logits, x, y_attn, y_mlp, lengths, pool_size, causal);
  const auto g = routed_mixture_grads(grad, c);
  if (c.B * c.L > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.x.scalar_type(), "routed_mixture_backward_cpu", [&] {
      using A = at::opmath_type<scalar_t>;
      backward_kernel<scalar_t, A>(g.grad.data_ptr<scalar_t>(), c.logits.data_ptr<scalar_t>(),
                                   c.x.data_ptr<scalar_t>(), c.y_attn.data_ptr<scalar_t>(),
                                   c.y_mlp.data_ptr<scalar_t>(), c.lengths.data_ptr<int64_t>(),
                                   g.d_logits.data_ptr<scalar_t>(), g.d_x.data_ptr<scalar_t>(),
                                   g.d_y_attn.data_ptr<scalar_t>(), g.d_y_mlp.data_ptr<scalar_t>(), c.B, c.L, c.D,
                                   c.r, c.causal);
    });
  }
  return {g.d_logits, g.d_x, g.d_y_attn, g.d_y_mlp};
}

}  // namespace
}  // namespace iteach_fast

TORCH_LIBRARY_IMPL(iteach_fast, CPU, m) {
  m.impl("routed_mixture", &iteach_fast::routed_mixture_cpu);
  m.impl("routed_mixture_backward", &iteach_fast::routed_mixture_backward_cpu);
}
