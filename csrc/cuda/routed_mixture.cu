// routed_mixture on CUDA: a group of G lanes per token row (G a power of two, the fewest
// lanes that cover D, at most a warp), so a warp holds 32 / G tokens and no lane idles
// where D is narrow (D = 128 in bfloat16 is 16 lanes of 8 elements: two tokens a warp).
// The grid is (position blocks, conversations), so no 64-bit division finds a token's row
// (64-bit and IEEE float division are subroutine calls on a GPU, and the registers live
// across a call in a loop go to local memory; float divides with rm::div_).
// Each lane applies the maths of routed_mixture.h to the elements of 16-byte vector loads
// (plain element loads where D or a pointer does not allow them), float32 accumulation for
// half / bfloat16. The backward is one kernel and a gather: the group of token j writes
// d_logits[j], d_y_attn[j], d_y_mlp[j] and dx[j] and nothing else (no atomics,
// deterministic); dx[j] re-scans the window of every token i that reads row j to find
// whether j is its max-pool arg-max (first index on ties, routed_mixture.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <tuple>

#include "routed_mixture.h"
#include "routed_mixture_host.h"

namespace iteach_fast {

namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 128;  // per block: 128 / G tokens of one conversation
// Blocks per SM the register budget must allow (16 warps, at most 128 registers a thread).
// Given the block size alone, ptxas picks its own register target for occupancy and spills
// to reach it (16-40 bytes a thread on sm_80 / sm_90); this bound leaves it room.
constexpr int kMinBlocks = 4;
constexpr int64_t kMaxGridY = 65535;  // conversations per launch (gridDim.y)

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

// This thread's place: its lane in its token's group of G = 2^lg lanes, the conversation
// b (b0 + blockIdx.y) and the position i of the token.
struct Place {
  int lane, size;
  int64_t b, i;
};

__device__ __forceinline__ Place place_of_thread(int lg, int64_t b0) {
  const int G = 1 << lg;
  return {int(threadIdx.x) & (G - 1), G, b0 + blockIdx.y,
          int64_t(blockIdx.x) * (kThreads >> lg) + (threadIdx.x >> lg)};
}

template <typename T, int VEC>
__device__ __forceinline__ void store_zeros(T* row, int64_t D, const Place& g) {
  Pack<T, VEC> z;
#pragma unroll
  for (int e = 0; e < VEC; ++e) z.v[e] = T(0);
  for (int64_t d = int64_t(g.lane) * VEC; d < D; d += int64_t(g.size) * VEC) store<T, VEC>(row + d, z);
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
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    forward_kernel(const T* __restrict__ logits, const T* __restrict__ x, const T* __restrict__ ya,
                   const T* __restrict__ ym, const int64_t* __restrict__ lengths, T* __restrict__ out, int64_t b0,
                   int64_t L, int64_t D, int64_t r, bool causal, int lg) {
  const Place grp = place_of_thread(lg, b0);
  const int64_t b = grp.b, i = grp.i, t = b * L + i;
  if (i >= L) return;
  const int64_t len = rm::clamp_len(lengths[b], L);
  T* o = out + t * D;
  if (i >= len) {
    store_zeros<T, VEC>(o, D, grp);
    return;
  }
  A w[rm::kMixers];
  rm::softmax4<A>(logits + t * rm::kMixers, w);
  int64_t lo, hi;
  rm::window(i, r, causal, len, lo, hi);
  const A inv_count = rm::div_(A(1), A(hi - lo + 1));
  const T* xb = x + b * L * D;
  for (int64_t d = int64_t(grp.lane) * VEC; d < D; d += int64_t(grp.size) * VEC) {
    A sum[VEC], mx[VEC];
    pool_window<T, A, VEC>(xb, lo, hi, D, d, sum, mx);
    const Pack<T, VEC> pa = load<T, VEC>(ya + t * D + d), pm = load<T, VEC>(ym + t * D + d);
    Pack<T, VEC> po;
#pragma unroll
    for (int e = 0; e < VEC; ++e) po.v[e] = T(rm::mix4<A>(w, A(pa.v[e]), A(pm.v[e]), sum[e], inv_count, mx[e]));
    store<T, VEC>(o + d, po);
  }
}

// The backward of token j, except the reduction of its four dot products s over the group.
template <typename T, typename A, int VEC>
__device__ __forceinline__ void backward_token(const T* __restrict__ dout, const T* __restrict__ logits,
                                               const T* __restrict__ x, const T* __restrict__ ya,
                                               const T* __restrict__ ym, T* __restrict__ dx, T* __restrict__ dya,
                                               T* __restrict__ dym, const Place& grp, int64_t len, int64_t L,
                                               int64_t D, int64_t r, bool causal, const A (&w)[rm::kMixers],
                                               A (&s)[rm::kMixers]) {
  const int64_t b = grp.b, j = grp.i, t = b * L + j, row = t * D;
  const int64_t tb = b * L;  // token index of row 0 of this conversation
  const T* xb = x + b * L * D;
  int64_t lo, hi;  // j's own window
  rm::window(j, r, causal, len, lo, hi);
  const A inv_count = rm::div_(A(1), A(hi - lo + 1));
  int64_t ilo, ihi;  // the tokens whose windows hold row j
  rm::receivers(j, r, causal, len, ilo, ihi);
  const int32_t j32 = int32_t(j);  // L < 2^31 (checked on the host)

  for (int64_t d = int64_t(grp.lane) * VEC; d < D; d += int64_t(grp.size) * VEC) {
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
    for (int64_t i = ilo; i <= ihi; ++i) {
      A wi[rm::kMixers];
      rm::softmax4<A>(logits + (tb + i) * rm::kMixers, wi);
      int64_t wlo, whi;
      rm::window(i, r, causal, len, wlo, whi);
      const A w2c = rm::div_(wi[2], A(whi - wlo + 1)), w3 = wi[3];
      A m[VEC];
      int32_t arg[VEC];  // window rows < L < 2^31: 32 bits keep the scan in registers
      const Pack<T, VEC> q0 = load<T, VEC>(xb + wlo * D + d);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        m[e] = A(q0.v[e]);
        arg[e] = int32_t(wlo);
      }
      for (int64_t k = wlo + 1; k <= whi; ++k) {
        const Pack<T, VEC> qk = load<T, VEC>(xb + k * D + d);
        const int32_t k32 = int32_t(k);
#pragma unroll
        for (int e = 0; e < VEC; ++e) rm::argmax_step<A, int32_t>(A(qk.v[e]), k32, m[e], arg[e]);
      }
      const Pack<T, VEC> gi = load<T, VEC>(dout + (tb + i) * D + d);
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[e] += rm::dx_from<A>(A(gi.v[e]), w2c, w3, arg[e] == j32);
    }
    Pack<T, VEC> qx;
#pragma unroll
    for (int e = 0; e < VEC; ++e) qx.v[e] = T(acc[e]);
    store<T, VEC>(dx + row + d, qx);
  }
}

template <typename T, typename A, int VEC>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    backward_kernel(const T* __restrict__ dout, const T* __restrict__ logits, const T* __restrict__ x,
                    const T* __restrict__ ya, const T* __restrict__ ym, const int64_t* __restrict__ lengths,
                    T* __restrict__ dlogits, T* __restrict__ dx, T* __restrict__ dya, T* __restrict__ dym, int64_t b0,
                    int64_t L, int64_t D, int64_t r, bool causal, int lg) {
  const Place grp = place_of_thread(lg, b0);
  const int64_t t = grp.b * L + grp.i;  // token j
  // No early return: every lane of the warp reaches the shuffles below.
  const int64_t len = rm::clamp_len(lengths[grp.b], L);
  const bool live = grp.i < L, valid = grp.i < len;  // valid implies live (len <= L)
  A w[rm::kMixers] = {A(0), A(0), A(0), A(0)};
  A s[rm::kMixers] = {A(0), A(0), A(0), A(0)};
  if (valid) {
    rm::softmax4<A>(logits + t * rm::kMixers, w);
    backward_token<T, A, VEC>(dout, logits, x, ya, ym, dx, dya, dym, grp, len, L, D, r, causal, w, s);
  } else if (live) {
    store_zeros<T, VEC>(dx + t * D, D, grp);
    store_zeros<T, VEC>(dya + t * D, D, grp);
    store_zeros<T, VEC>(dym + t * D, D, grp);
  }
  // the four dot products, summed over the group: a butterfly over the whole warp whose
  // steps within the group (offsets < G) are kept
#pragma unroll
  for (int off = 1; off < kWarp; off *= 2) {
#pragma unroll
    for (int o = 0; o < rm::kMixers; ++o) {
      const A v = __shfl_xor_sync(0xffffffffu, s[o], off);
      if (off < grp.size) s[o] += v;
    }
  }
  if (live && grp.lane == 0) {
    A dl[rm::kMixers] = {A(0), A(0), A(0), A(0)};
    if (valid) rm::softmax4_backward<A>(w, s, dl);
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

// log2 of the lanes per token: the fewest (a power of two, at most a warp) whose vectors cover D.
int group_log2(int64_t D, int vec) {
  int lg = 0;
  while ((1 << lg) < kWarp && (int64_t(1) << lg) * vec < D) ++lg;
  return lg;
}

// Call `launch(b0, grid)` for every slice of at most kMaxGridY conversations (gridDim.y),
// each with enough blocks of 128 / G tokens for L positions (gridDim.x).
template <typename Launch>
void for_each_slice(int64_t B, int64_t L, int lg, Launch&& launch) {
  const int64_t per_block = kThreads >> lg;
  const auto bx = static_cast<unsigned int>((L + per_block - 1) / per_block);
  for (int64_t b0 = 0; b0 < B; b0 += kMaxGridY) {
    launch(b0, dim3(bx, static_cast<unsigned int>(std::min(kMaxGridY, B - b0))));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

at::Tensor routed_mixture_cuda(const at::Tensor& logits, const at::Tensor& x, const at::Tensor& y_attn,
                               const at::Tensor& y_mlp, const at::Tensor& lengths, int64_t pool_size, bool causal) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto c = routed_mixture_call(logits, x, y_attn, y_mlp, lengths, pool_size, causal);
  auto out = at::empty({c.B, c.L, c.D}, c.x.options());
  if (c.B * c.L == 0 || c.D == 0) return out;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.x.scalar_type(), "routed_mixture_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    constexpr int V = 16 / sizeof(scalar_t);
    const scalar_t *lp = c.logits.data_ptr<scalar_t>(), *xp = c.x.data_ptr<scalar_t>(),
                   *ya = c.y_attn.data_ptr<scalar_t>(), *ym = c.y_mlp.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const int64_t* ln = c.lengths.data_ptr<int64_t>();
    const bool vec = can_vectorise<scalar_t>(c.D, {xp, ya, ym, op});
    const int glog = group_log2(c.D, vec ? V : 1);
    for_each_slice(c.B, c.L, glog, [&](int64_t b0, dim3 grid) {
      if (vec) {
        forward_kernel<scalar_t, A, V><<<grid, kThreads, 0, stream>>>(lp, xp, ya, ym, ln, op, b0, c.L, c.D, c.r,
                                                                      c.causal, glog);
      } else {
        forward_kernel<scalar_t, A, 1><<<grid, kThreads, 0, stream>>>(lp, xp, ya, ym, ln, op, b0, c.L, c.D, c.r,
                                                                      c.causal, glog);
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> routed_mixture_backward_cuda(
    const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& x, const at::Tensor& y_attn,
    const at::Tensor& y_mlp, const at::Tensor& lengths, int64_t pool_size, bool causal) {
  const c10::cuda::CUDAGuard guard(x.device());
  const auto c = routed_mixture_call(logits, x, y_attn, y_mlp, lengths, pool_size, causal);
  const auto g = routed_mixture_grads(grad, c);
  if (c.B * c.L == 0) return {g.d_logits, g.d_x, g.d_y_attn, g.d_y_mlp};
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, c.x.scalar_type(), "routed_mixture_backward_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    constexpr int V = 16 / sizeof(scalar_t);
    const scalar_t *gp = g.grad.data_ptr<scalar_t>(), *lp = c.logits.data_ptr<scalar_t>(),
                   *xp = c.x.data_ptr<scalar_t>(), *ya = c.y_attn.data_ptr<scalar_t>(),
                   *ym = c.y_mlp.data_ptr<scalar_t>();
    scalar_t *dl = g.d_logits.data_ptr<scalar_t>(), *dxp = g.d_x.data_ptr<scalar_t>(),
             *dyap = g.d_y_attn.data_ptr<scalar_t>(), *dymp = g.d_y_mlp.data_ptr<scalar_t>();
    const int64_t* ln = c.lengths.data_ptr<int64_t>();
    // D == 0 still launches: the kernel then writes d_logits = 0
    const bool vec = c.D > 0 && can_vectorise<scalar_t>(c.D, {gp, xp, ya, ym, dxp, dyap, dymp});
    const int glog = group_log2(c.D, vec ? V : 1);
    for_each_slice(c.B, c.L, glog, [&](int64_t b0, dim3 grid) {
      if (vec) {
        backward_kernel<scalar_t, A, V><<<grid, kThreads, 0, stream>>>(gp, lp, xp, ya, ym, ln, dl, dxp, dyap, dymp,
                                                                       b0, c.L, c.D, c.r, c.causal, glog);
      } else {
        backward_kernel<scalar_t, A, 1><<<grid, kThreads, 0, stream>>>(gp, lp, xp, ya, ym, ln, dl, dxp, dyap, dymp,
                                                                       b0, c.L, c.D, c.r, c.causal, glog);
      }
    });
  });
  return {g.d_logits, g.d_x, g.d_y_attn, g.d_y_mlp};
}

}  // namespace
}  // namespace iteach_fast

TORCH_LIBRARY_IMPL(iteach_fast, CUDA, m) {
  m.impl("routed_mixture", &iteach_fast::routed_mixture_cuda);
  m.impl("routed_mixture_backward", &iteach_fast::routed_mixture_backward_cuda);
}
