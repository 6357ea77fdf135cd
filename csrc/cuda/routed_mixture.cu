// routed_mixture on CUDA: one warp per token row, the maths of routed_mixture.h applied to
// each element of 16-byte vector loads (plain element loads where D or a pointer does not
// allow them), float32 accumulation for half / bfloat16. The backward is one kernel and a
// gather: the warp of token j writes d_logits[j], d_y_attn[j], d_y_mlp[j] and dx[j] and
// nothing else (no atomics, deterministic); dx[j] re-scans the window of every neighbour i
// to find whether j is its max-pool arg-max (first index on ties, routed_mixture.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <initializer_list>
#include <tuple>

#include "routed_mixture.h"
#include "routed_mixture_host.h"

namespace iteach_fast {

namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;  // tokens per block
constexpr int kThreads = kWarp * kWarpsPerBlock;

// VEC elements of T moved as one load / store (16 bytes when VEC = 16 / sizeof(T)).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> load(const T* p) {
  return *reinterpret_cast<const Pack<T, VEC>*>(p);
}

template <typename T, int VEC>
__device__ __forceinline__ void store(T* p, const Pack<T, VEC>& v) {
  *reinterpret_cast<Pack<T, VEC>*>(p) = v;
}

template <typename T, int VEC>
__device__ __forceinline__ void store_zeros(T* row, int64_t D, int lane) {
  Pack<T, VEC> z;
#pragma unroll
  for (int e = 0; e < VEC; ++e) z.v[e] = T(0);
  for (int64_t d = int64_t(lane) * VEC; d < D; d += kWarp * VEC) store<T, VEC>(row + d, z);
}

// Sum and max of x rows lo..hi (one token's pool window) at columns d .. d + VEC.
template <typename T, typename A, int VEC>
__device__ __forceinline__ void pool_window(const T* xb, int64_t lo, int64_t hi, int64_t D, int64_t d,
                                            A (&sum)[VEC], A (&mx)[VEC]) {
  const Pack<T, VEC> p0 = load<T, VEC>(xb + lo * D + d);
#pragma unroll
  for (int e = 0; e < VEC; ++e) sum[e] = mx[e] = A(p0.v[e]);
  for (int64_t k = lo + 1; k <= hi; ++k) {
    const Pack<T, VEC> pk = load<T, VEC>(xb + k * D + d);
#pragma unroll
    for (int e = 0; e < VEC; ++e) rm::pool_step<A>(A(pk.v[e]), sum[e], mx[e]);
  }
}

template <typename T, typename A, int VEC>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const T* __restrict__ logits, const T* __restrict__ x, const T* __restrict__ ya,
                   const T* __restrict__ ym, const int64_t* __restrict__ lengths, T* __restrict__ out, int64_t B,
                   int64_t L, int64_t D, int64_t r) {
  const int lane = threadIdx.x % kWarp;
  const int64_t t = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;  // token, one per warp
  if (t >= B * L) return;
  const int64_t b = t / L, i = t % L;
  const int64_t len = rm::clamp_len(lengths[b], L);
  T* o = out + t * D;
  if (i >= len) {
    store_zeros<T, VEC>(o, D, lane);
    return;
  }
  A w[rm::kMixers];
  rm::softmax4<A>(logits + t * rm::kMixers, w);
  int64_t lo, hi;
  rm::window(i, r, len, lo, hi);
  const A inv_count = A(1) / A(hi - lo + 1);
  const T* xb = x + b * L * D;
  for (int64_t d = int64_t(lane) * VEC; d < D; d += kWarp * VEC) {
    A sum[VEC], mx[VEC];
    pool_window<T, A, VEC>(xb, lo, hi, D, d, sum, mx);
    const Pack<T, VEC> pa = load<T, VEC>(ya + t * D + d), pm = load<T, VEC>(ym + t * D + d);
    Pack<T, VEC> po;
#pragma unroll
    for (int e = 0; e < VEC; ++e) po.v[e] = T(rm::mix4<A>(w, A(pa.v[e]), A(pm.v[e]), sum[e], inv_count, mx[e]));
    store<T, VEC>(o + d, po);
  }
}

template <typename T, typename A, int VEC>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const T* __restrict__ dout, const T* __restrict__ logits, const T* __restrict__ x,
                    const T* __restrict__ ya, const T* __restrict__ ym, const int64_t* __restrict__ lengths,
                    T* __restrict__ dlogits, T* __restrict__ dx, T* __restrict__ dya, T* __restrict__ dym, int64_t B,
                    int64_t L, int64_t D, int64_t r) {
  const int lane = threadIdx.x % kWarp;
  const int64_t t = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;  // token j, one per warp
  if (t >= B * L) return;  // uniform per warp: the shuffles below see full warps
  const int64_t b = t / L, j = t % L;
  const int64_t len = rm::clamp_len(lengths[b], L);
  const int64_t row = t * D;
  if (j >= len) {
    store_zeros<T, VEC>(dx + row, D, lane);
    store_zeros<T, VEC>(dya + row, D, lane);
    store_zeros<T, VEC>(dym + row, D, lane);
    if (lane < rm::kMixers) dlogits[t * rm::kMixers + lane] = T(0);
    return;
  }
  const int64_t tb = b * L;  // token index of row 0 of this conversation
  const T* xb = x + b * L * D;
  A w[rm::kMixers];
  rm::softmax4<A>(logits + t * rm::kMixers, w);
  // j's window: the rows its own pools read, and also every valid i with |i - j| <= r
  int64_t lo, hi;
  rm::window(j, r, len, lo, hi);
  const A inv_count = A(1) / A(hi - lo + 1);
  A s[rm::kMixers] = {A(0), A(0), A(0), A(0)};

  for (int64_t d = int64_t(lane) * VEC; d < D; d += kWarp * VEC) {
    // token j's own output: its pools, for the dot products of the softmax backward
    A sum[VEC], mx[VEC];
    pool_window<T, A, VEC>(xb, lo, hi, D, d, sum, mx);
    const Pack<T, VEC> pg = load<T, VEC>(dout + row + d), pa = load<T, VEC>(ya + row + d),
                       pm = load<T, VEC>(ym + row + d);
    Pack<T, VEC> qa, qm;
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const A g = A(pg.v[e]);
      qa.v[e] = T(w[0] * g);
      qm.v[e] = T(w[1] * g);
      s[0] += g * A(pa.v[e]);
      s[1] += g * A(pm.v[e]);
      s[2] += g * (sum[e] * inv_count);
      s[3] += g * mx[e];
    }
    store<T, VEC>(dya + row + d, qa);
    store<T, VEC>(dym + row + d, qm);

    // dx[j]: gather from every valid token i whose window holds j
    A acc[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[e] = A(0);
    for (int64_t i = lo; i <= hi; ++i) {
      A wi[rm::kMixers];
      rm::softmax4<A>(logits + (tb + i) * rm::kMixers, wi);
      int64_t wlo, whi;
      rm::window(i, r, len, wlo, whi);
      const A w2c = wi[2] / A(whi - wlo + 1), w3 = wi[3];
      A m[VEC];
      int64_t arg[VEC];
      const Pack<T, VEC> q0 = load<T, VEC>(xb + wlo * D + d);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        m[e] = A(q0.v[e]);
        arg[e] = wlo;
      }
      for (int64_t k = wlo + 1; k <= whi; ++k) {
        const Pack<T, VEC> qk = load<T, VEC>(xb + k * D + d);
#pragma unroll
        for (int e = 0; e < VEC; ++e) rm::argmax_step<A, int64_t>(A(qk.v[e]), k, m[e], arg[e]);
      }
      const Pack<T, VEC> gi = load<T, VEC>(dout + (tb + i) * D + d);
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[e] += rm::dx_from<A>(A(gi.v[e]), w2c, w3, arg[e] == j);
    }
    Pack<T, VEC> qx;
#pragma unroll
    for (int e = 0; e < VEC; ++e) qx.v[e] = T(acc[e]);
    store<T, VEC>(dx + row + d, qx);
  }

  // the four dot products, summed over the warp (every lane of a live warp gets here)
#pragma unroll
  for (int o = 0; o < rm::kMixers; ++o) {
#pragma unroll
    for (int off = kWarp / 2; off > 0; off /= 2) s[o] += __shfl_xor_sync(0xffffffffu, s[o], off);
  }
  if (lane == 0) {
    A dl[rm::kMixers];
    rm::softmax4_backward<A>(w, s, dl);
#pragma unroll
    for (int o = 0; o < rm::kMixers; ++o) dlogits[t * rm::kMixers + o] = T(dl[o]);
  }
}

// 16-byte vectors when every row start is 16-byte aligned: D a multiple of the vector
// width and every base pointer aligned (contiguous rows of D elements then all are).
template <typename T>
bool can_vectorise(int64_t D, std::initializer_list<const void*> ptrs) {
  constexpr int V = 16 / sizeof(T);
  if (D % V != 0) return false;
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

at::Tensor routed_mixture_cuda(const at::Tensor& logits, const at::Tensor& x, const at::Tensor& y_attn,
                               const at::Tensor& y_mlp, const at::Tensor& lengths, int64_t pool_size) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto c = routed_mixture_call(logits, x, y_attn, y_mlp, lengths, pool_size);
  auto out = at::empty({c.B, c.L, c.D}, c.x.options());
  if (c.B * c.L == 0 || c.D == 0) return out;
  const int64_t blocks = (c.B * c.L + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.x.scalar_type(), "routed_mixture_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    constexpr int V = 16 / sizeof(scalar_t);
    const scalar_t *lg = c.logits.data_ptr<scalar_t>(), *xp = c.x.data_ptr<scalar_t>(),
                   *ya = c.y_attn.data_ptr<scalar_t>(), *ym = c.y_mlp.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t* ln = c.lengths.data_ptr<int64_t>();
    const auto grid = static_cast<unsigned int>(blocks);
    if (can_vectorise<scalar_t>(c.D, {xp, ya, ym, op})) {
      forward_kernel<scalar_t, A, V><<<grid, kThreads, 0, stream>>>(lg, xp, ya, ym, ln, op, c.B, c.L, c.D, c.r);
    } else {
      forward_kernel<scalar_t, A, 1><<<grid, kThreads, 0, stream>>>(lg, xp, ya, ym, ln, op, c.B, c.L, c.D, c.r);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> routed_mixture_backward_cuda(
    const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& x, const at::Tensor& y_attn,
    const at::Tensor& y_mlp, const at::Tensor& lengths, int64_t pool_size) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto c = routed_mixture_call(logits, x, y_attn, y_mlp, lengths, pool_size);
  const auto g = routed_mixture_grads(grad, c);
  if (c.B * c.L == 0) return {g.d_logits, g.d_x, g.d_y_attn, g.d_y_mlp};
  const int64_t blocks = (c.B * c.L + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.x.scalar_type(), "routed_mixture_backward_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    constexpr int V = 16 / sizeof(scalar_t);
    const scalar_t *gp = g.grad.data_ptr<scalar_t>(), *lg = c.logits.data_ptr<scalar_t>(),
                   *xp = c.x.data_ptr<scalar_t>(), *ya = c.y_attn.data_ptr<scalar_t>(),
                   *ym = c.y_mlp.data_ptr<scalar_t>();
    scalar_t *dl = g.d_logits.data_ptr<scalar_t>(), *dxp = g.d_x.data_ptr<scalar_t>(),
             *dyap = g.d_y_attn.data_ptr<scalar_t>(), *dymp = g.d_y_mlp.data_ptr<scalar_t>();
    const int64_t* ln = c.lengths.data_ptr<int64_t>();
    const auto grid = static_cast<unsigned int>(blocks);
    // D == 0 still launches: the kernel then writes d_logits = 0
    if (c.D > 0 && can_vectorise<scalar_t>(c.D, {gp, xp, ya, ym, dxp, dyap, dymp})) {
      backward_kernel<scalar_t, A, V><<<grid, kThreads, 0, stream>>>(gp, lg, xp, ya, ym, ln, dl, dxp, dyap, dymp,
                                                                     c.B, c.L, c.D, c.r);
    } else {
      backward_kernel<scalar_t, A, 1><<<grid, kThreads, 0, stream>>>(gp, lg, xp, ya, ym, ln, dl, dxp, dyap, dymp,
                                                                     c.B, c.L, c.D, c.r);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {g.d_logits, g.d_x, g.d_y_attn, g.d_y_mlp};
}

}  // namespace
}  // namespace iteach_fast

TORCH_LIBRARY_IMPL(iteach_fast, CUDA, m) {
  m.impl("routed_mixture", &iteach_fast::routed_mixture_cuda);
  m.impl("routed_mixture_backward", &iteach_fast::routed_mixture_backward_cuda);
}
