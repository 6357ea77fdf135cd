// K1 on the CPU: ECCE-guided attention fused per (batch, head), forward and backward
// (docs/maths.md, eq. 10-11): out = softmax(scale * q k^T + E) v, E the band means of the
// prefix table, keys beyond the conversation's length (and, causal, after the query) excluded,
// rows beyond it 0.
//
// One task per (b, h) works on the n x n block of its own conversation (n = lengths[b]): the
// scores never leave the thread's cache, the band is added from the table while the row is
// hot, the padding is never read (whatever it holds) and never computed. The backward
// recomputes the probabilities from the saved log-sum-exp (FlashAttention's trade: O(B H L)
// saved instead of O(B H L^2)) and scatters the band's gradient straight onto the table.
// The products are BLAS calls on strided rows, so the model's (B, L, H, Dh) views are read
// and written in place.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "band.h"

// The BLAS torch links (MKL or OpenBLAS; Fortran ABI, 32-bit integers). Weak: a torch built
// without BLAS leaves them null, and the loops below compute the same products.
extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}

// The elementwise loops vectorise to the machine's widest registers (the build has no -march);
// GCC 12 is the oldest checked with clones of templates, older compilers get one generic version.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__)
#define ITEACH_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ITEACH_VECTOR_CLONES
#endif

namespace iteach_fast {

namespace {

// ITEACH_FAST_NO_BLAS=1 takes the loops below instead (read once; the tests compare both).
bool blas_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("ITEACH_FAST_NO_BLAS");
    return env == nullptr || std::string(env) != "1";
  }();
  return enabled;
}

template <typename T>
auto blas() {
  if constexpr (std::is_same_v<T, float>) return sgemm_;
  else return dgemm_;
}

// Row-major C (m x n, ldc) = alpha * op(A) op(B) + beta * C with op(A) m x k, op(B) k x n;
// ta: A holds op(A)^T (k x m, lda), tb: B holds op(B)^T (n x k, ldb). A row-major matrix is
// its transpose in column-major, so BLAS computes C^T = op(B)^T op(A)^T.
template <typename T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* A, int64_t lda, const T* B,
          int64_t ldb, T beta, T* C, int64_t ldc) {
  if (m == 0 || n == 0) return;
  auto* fn = blas<T>();
  if (fn != nullptr && k > 0 && blas_enabled()) {
    const char opa = ta ? 'T' : 'N', opb = tb ? 'T' : 'N';
    const int M = int(m), N = int(n), K = int(k), LDA = int(lda), LDB = int(ldb), LDC = int(ldc);
    fn(&opb, &opa, &N, &M, &K, &alpha, B, &LDB, A, &LDA, &beta, C, &LDC);
    return;
  }
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      T acc = 0;
      for (int64_t p = 0; p < k; ++p)
        acc += (ta ? A[p * lda + i] : A[i * lda + p]) * (tb ? B[j * ldb + p] : B[p * ldb + j]);
      C[i * ldc + j] = alpha * acc + (beta == T(0) ? T(0) : beta * C[i * ldc + j]);
    }
  }
}

// exp(x) for x <= 0 (a softmax row minus its maximum): 2^k p(r), r = x - k ln 2, with Cephes'
// polynomial (about 1 ulp); 0 below float's range, NaN for NaN. Branch-free, so that the loops
// around it vectorise (with -fno-trapping-math, which setup.py passes).
inline float exp_nonpositive(float x) {
  const float xk = x > -87.0f ? x : -87.0f;  // NaN -> -87: k stays a defined integer
  const float xr = x < -87.0f ? -87.0f : x;  // NaN stays NaN, so the result does
  const int k = int(xk * 1.44269504f - 0.5f);  // round to nearest: xk <= 0, the conversion truncates up
  const float r = xr - float(k) * 0.693359375f + float(k) * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = ((k + 127) << 23) & -int32_t(x >= -87.0f);  // 2^k, or +0 below the range (and -inf)
  float two_k;
  std::memcpy(&two_k, &bits, sizeof(two_k));
  return p * two_k;  // a NaN score stays NaN, as in the reference: never a silent 0
}

inline double exp_nonpositive(double x) { return std::exp(x); }

// row[0..keys) <- softmax(row[0..keys)), row[keys..n) <- 0; returns the log-sum-exp.
template <typename T>
ITEACH_VECTOR_CLONES T softmax_row(T* row, int64_t keys, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < keys; ++j) m = row[j] > m ? row[j] : m;
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < keys; ++j) {
    row[j] = exp_nonpositive(row[j] - m);
    sum += row[j];
  }
  const T inv = T(1) / sum;
#pragma omp simd
  for (int64_t j = 0; j < keys; ++j) row[j] *= inv;
  std::fill(row + keys, row + n, T(0));
  return m + std::log(sum);
}

// row[0..keys) <- exp(row - lse) (the forward's probabilities again), row[keys..n) <- 0.
template <typename T>
ITEACH_VECTOR_CLONES void probabilities_row(T* row, int64_t keys, int64_t n, T lse) {
#pragma omp simd
  for (int64_t j = 0; j < keys; ++j) row[j] = exp_nonpositive(row[j] - lse);
  std::fill(row + keys, row + n, T(0));
}

// d scores: dp <- p * (dp - delta) on the keys, 0 elsewhere (the softmax's backward).
template <typename T>
ITEACH_VECTOR_CLONES void softmax_backward_row(const T* p, T* dp, int64_t keys, int64_t n, T delta) {
#pragma omp simd
  for (int64_t j = 0; j < keys; ++j) dp[j] = p[j] * (dp[j] - delta);
  std::fill(dp + keys, dp + n, T(0));
}

// A (B, H, L, Dh) operand as BLAS reads it: unit stride along Dh, rows `ld` apart.
struct Rows {
  at::Tensor t;  // the tensor read or written (the caller's, or a contiguous stand-in)
  int64_t ld;

  template <typename T>
  T* head(int64_t b, int64_t h) const {
    return t.data_ptr<T>() + b * t.stride(0) + h * t.stride(1);
  }
};

// `t` itself when BLAS can address it (Dh contiguous, rows at least Dh apart), else a contiguous copy.
Rows readable(const at::Tensor& t) {
  const int64_t L = t.size(2), Dh = t.size(3);
  const bool ok = (t.stride(3) == 1 || Dh <= 1) && (L <= 1 || t.stride(2) >= std::max<int64_t>(Dh, 1));
  const at::Tensor u = ok ? t : t.contiguous();
  return {u, L > 1 ? u.stride(2) : std::max<int64_t>(Dh, 1)};
}

// An output laid out like `like` (as torch.empty_like), written through a contiguous stand-in
// when BLAS cannot address that layout; `finish` copies the stand-in back.
struct Output {
  at::Tensor out;
  Rows rows;

  explicit Output(const at::Tensor& like) : out(at::empty_like(like)), rows(readable(out)) {}
  at::Tensor finish() {
    if (!rows.t.is_same(out)) out.copy_(rows.t);
    return out;
  }
};

// ECCE's prefix table (B, H, 3, L) as the band code reads it: unit stride along L, the three
// rows `stride` apart. The model's table is a slice of a chunk-padded one: read in place.
struct Table {
  at::Tensor t;  // undefined without a bias
  int64_t stride = 0;

  explicit Table(const c10::optional<at::Tensor>& prefix) {
    if (!prefix.has_value()) return;
    t = prefix->size(3) <= 1 || prefix->stride(3) == 1 ? *prefix : prefix->contiguous();
    stride = t.stride(2);
  }
  template <typename T>
  const T* head(int64_t b, int64_t h) const {
    return t.defined() ? t.data_ptr<T>() + b * t.stride(0) + h * t.stride(1) : nullptr;
  }
};

void check(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& prefix,
           const at::Tensor& lengths, int64_t dist) {
  TORCH_CHECK(q.dim() == 4, "ecce_attention (CPU): q must be (B, H, L, Dh), got ", q.sizes());
  for (const auto* t : {&k, &v}) {
    TORCH_CHECK(t->sizes() == q.sizes() && t->scalar_type() == q.scalar_type(),
                "ecce_attention (CPU): k and v must match q's shape and dtype ", q.sizes(), " ", q.scalar_type());
  }
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(),
              "ecce_attention (CPU): tensors must be on the CPU (CUDA uses the Triton kernels)");
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == q.size(0) && lengths.scalar_type() == at::kLong &&
                  lengths.device().is_cpu(),
              "ecce_attention (CPU): lengths must be int64 (B,) on the CPU, got ", lengths.scalar_type(), " ",
              lengths.sizes());
  TORCH_CHECK(dist >= 1, "ecce_attention (CPU): dist must be >= 1, got ", dist);
  if (prefix.has_value()) {
    TORCH_CHECK(prefix->dim() == 4 && prefix->size(0) == q.size(0) && prefix->size(1) == q.size(1) &&
                    prefix->size(2) == 3 && prefix->size(3) == q.size(2) && prefix->scalar_type() == q.scalar_type(),
                "ecce_attention (CPU): prefix must be (B, H, 3, L) in q's dtype, got ", prefix->sizes());
  }
}

// One head's scores scale * q k^T + E on its n x n block (row-major, n apart), E from `table`
// (its rows `stride` apart; none: no bias).
template <typename T>
void scores(const T* q, int64_t ldq, const T* k, int64_t ldk, int64_t n, int64_t Dh, T scale, const T* table,
            int64_t stride, int64_t dist, const T* inv, bool causal, T* S) {
  gemm<T>(false, true, n, n, Dh, scale, q, ldq, k, ldk, T(0), S, n);
  if (table != nullptr) band::add(table, stride, n, dist, causal, inv, S, n);
}

template <typename T>
void zero_rows(T* base, int64_t ld, int64_t from, int64_t L, int64_t Dh) {
  for (int64_t i = from; i < L; ++i) std::fill(base + i * ld, base + i * ld + Dh, T(0));
}

// A thread's scratch for one head's scores: the longest conversation's n x n, uninitialised.
template <typename T>
std::unique_ptr<T[]> scratch(const int64_t* lens, int64_t B, int64_t L) {
  int64_t n = 0;
  for (int64_t b = 0; b < B; ++b) n = std::max(n, band::valid_length(lens, b, L));
  return std::unique_ptr<T[]>(new T[std::max<int64_t>(n * n, 1)]);
}

}  // namespace

// (out (B, H, L, Dh) in q's layout, lse (B, H, L)): lse is the row's log-sum-exp (0 on invalid rows).
std::tuple<at::Tensor, at::Tensor> ecce_attention(const at::Tensor& q_in, const at::Tensor& k_in,
                                                  const at::Tensor& v_in, const c10::optional<at::Tensor>& prefix_in,
                                                  const at::Tensor& lengths_in, int64_t dist, double scale_in,
                                                  bool causal) {
  check(q_in, k_in, v_in, prefix_in, lengths_in, dist);
  const int64_t B = q_in.size(0), H = q_in.size(1), L = q_in.size(2), Dh = q_in.size(3);
  const Rows q = readable(q_in), k = readable(k_in), v = readable(v_in);
  const Table prefix(prefix_in);
  const at::Tensor lengths = lengths_in.contiguous();
  Output out(q_in);
  at::Tensor lse = at::zeros({B, H, L}, q_in.options());
  AT_DISPATCH_FLOATING_TYPES(q_in.scalar_type(), "ecce_attention_cpu", [&] {
    const scalar_t scale = scalar_t(scale_in);
    const int64_t* lens = lengths.data_ptr<int64_t>();
    scalar_t* lse0 = lse.data_ptr<scalar_t>();
    const auto inv = band::reciprocals<scalar_t>(dist);
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      const auto S = scratch<scalar_t>(lens, B, L);
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t b = bh / H, h = bh % H, n = band::valid_length(lens, b, L);
        scalar_t* o = out.rows.head<scalar_t>(b, h);
        scores(q.head<scalar_t>(b, h), q.ld, k.head<scalar_t>(b, h), k.ld, n, Dh, scale, prefix.head<scalar_t>(b, h),
               prefix.stride, dist, inv.data(), causal, S.get());
        for (int64_t i = 0; i < n; ++i) lse0[bh * L + i] = softmax_row(S.get() + i * n, causal ? i + 1 : n, n);
        gemm<scalar_t>(false, false, n, Dh, n, scalar_t(1), S.get(), n, v.head<scalar_t>(b, h), v.ld, scalar_t(0),
                       o, out.rows.ld);
        zero_rows(o, out.rows.ld, n, L, Dh);
      }
    });
  });
  return {out.finish(), lse};
}

// (dq, dk, dv in q's, k's and v's layouts, d prefix (B, H, 3, L), or (0,) without a prefix).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ecce_attention_backward(
    const at::Tensor& grad_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const c10::optional<at::Tensor>& prefix_in, const at::Tensor& lengths_in, const at::Tensor& out_in,
    const at::Tensor& lse_in, int64_t dist, double scale_in, bool causal) {
  check(q_in, k_in, v_in, prefix_in, lengths_in, dist);
  TORCH_CHECK(grad_in.sizes() == q_in.sizes() && out_in.sizes() == q_in.sizes(),
              "ecce_attention_backward (CPU): grad and out must have q's shape ", q_in.sizes());
  const int64_t B = q_in.size(0), H = q_in.size(1), L = q_in.size(2), Dh = q_in.size(3);
  const Rows q = readable(q_in), k = readable(k_in), v = readable(v_in), o = readable(out_in),
             dout = readable(grad_in.to(q_in.scalar_type()));
  const Table prefix(prefix_in);
  const at::Tensor lengths = lengths_in.contiguous(), lse = lse_in.contiguous();
  Output dq(q_in), dk(k_in), dv(v_in);
  at::Tensor d_prefix = at::zeros(prefix_in.has_value() ? prefix_in->sizes() : at::IntArrayRef{0}, q_in.options());
  AT_DISPATCH_FLOATING_TYPES(q_in.scalar_type(), "ecce_attention_backward_cpu", [&] {
    const scalar_t scale = scalar_t(scale_in);
    const int64_t* lens = lengths.data_ptr<int64_t>();
    scalar_t* d_table0 = d_prefix.data_ptr<scalar_t>();  // contiguous: (B, H, 3, L)
    const scalar_t* lse0 = lse.data_ptr<scalar_t>();
    const auto inv = band::reciprocals<scalar_t>(dist);
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      const auto P = scratch<scalar_t>(lens, B, L), dS = scratch<scalar_t>(lens, B, L);
      for (int64_t bh = begin; bh < end; ++bh) {
        const int64_t b = bh / H, h = bh % H, n = band::valid_length(lens, b, L);
        const scalar_t *qh = q.head<scalar_t>(b, h), *kh = k.head<scalar_t>(b, h);
        const scalar_t *oh = o.head<scalar_t>(b, h), *gh = dout.head<scalar_t>(b, h);
        const scalar_t* table = prefix.head<scalar_t>(b, h);
        scores(qh, q.ld, kh, k.ld, n, Dh, scale, table, prefix.stride, dist, inv.data(), causal, P.get());
        for (int64_t i = 0; i < n; ++i) probabilities_row(P.get() + i * n, causal ? i + 1 : n, n, lse0[bh * L + i]);
        // d P = dO v^T, then the softmax's backward with delta_i = dO_i . out_i
        gemm<scalar_t>(false, true, n, n, Dh, scalar_t(1), gh, dout.ld, v.head<scalar_t>(b, h), v.ld, scalar_t(0),
                       dS.get(), n);
        for (int64_t i = 0; i < n; ++i) {
          scalar_t delta = 0;
          for (int64_t d = 0; d < Dh; ++d) delta += gh[i * dout.ld + d] * oh[i * o.ld + d];
          softmax_backward_row(P.get() + i * n, dS.get() + i * n, causal ? i + 1 : n, n, delta);
        }
        scalar_t *dqh = dq.rows.head<scalar_t>(b, h), *dkh = dk.rows.head<scalar_t>(b, h),
                 *dvh = dv.rows.head<scalar_t>(b, h);
        gemm<scalar_t>(true, false, n, Dh, n, scalar_t(1), P.get(), n, gh, dout.ld, scalar_t(0), dvh, dv.rows.ld);
        gemm<scalar_t>(false, false, n, Dh, n, scale, dS.get(), n, kh, k.ld, scalar_t(0), dqh, dq.rows.ld);
        gemm<scalar_t>(true, false, n, Dh, n, scale, dS.get(), n, qh, q.ld, scalar_t(0), dkh, dk.rows.ld);
        for (auto [base, ld] : {std::pair{dqh, dq.rows.ld}, std::pair{dkh, dk.rows.ld}, std::pair{dvh, dv.rows.ld}})
          zero_rows(base, ld, n, L, Dh);
        if (table != nullptr) band::scatter(d_table0 + bh * 3 * L, L, n, dist, causal, inv.data(), dS.get(), n);
      }
    });
  });
  return {dq.finish(), dk.finish(), dv.finish(), d_prefix};
}

}  // namespace iteach_fast

TORCH_LIBRARY_FRAGMENT(iteach_fast, m) {
  // K1 on the CPU (float32 / float64): q, k, v (B, H, L, Dh) in any layout (the model's
  // (B, L, H, Dh) views are read in place), prefix the band-mean table (B, H, 3, L) or None,
  // lengths int64 (B,). Returns (out in q's layout, lse (B, H, L)).
  m.def("ecce_attention(Tensor q, Tensor k, Tensor v, Tensor? prefix, Tensor lengths, int dist, float scale, "
        "bool causal) -> (Tensor, Tensor)");
  // (dq, dk, dv, d_prefix); d_prefix is (0,) without a prefix.
  m.def("ecce_attention_backward(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor? prefix, Tensor lengths, "
        "Tensor out, Tensor lse, int dist, float scale, bool causal) -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(iteach_fast, CPU, m) {
  m.impl("ecce_attention", &iteach_fast::ecce_attention);
  m.impl("ecce_attention_backward", &iteach_fast::ecce_attention_backward);
}
