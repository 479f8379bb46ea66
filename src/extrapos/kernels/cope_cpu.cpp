// CoPE's per-pair work for one query chunk, fused: the CPU kernels behind
// `extrapos.kernels.cope_native` (built on first use by torch.utils.cpp_extension).
//
// The ATen composition they replace (extrapos.encodings.cope._CoPELogits) makes ~11
// passes over the (b, h, c, t') pairs forward and ~12 backward, each through memory, and saves
// four pair-sized tensors; here each query row (t' keys, in L1 cache) is one or two loops, the
// logits overwrite the scores, and only the masked gates are saved (the backward recomputes the
// positions from them, the same sums).
//
// Same numbers as the composition, operation for operation (tests compare bitwise):
//   cumsum    accumulates in double, sequentially, and rounds each output to float (ATen's
//             CPU cumsum, acc_type<float> = double); the reverse cumsum is that from the end;
//   clamp     min(p, npos_max);  index ⌊p⌋ = trunc(p) (p >= 0);  weight frac(p) = p - trunc(p);
//   lerp      ATen's vectorized lerp: fma(w, high - low, low) for |w| < 0.5, else
//             fma(w - 1, high - low, high);
//   scatter   table[⌊p⌋] += G·(1 - w) and above[⌊p⌋] += G·w in key order j = 0, 1, …
//             (ATen's scatter_add loop), then table[m] += above[m - 1];
//   sigmoid'  (dg·(1 - g))·g, then + G.
// Built with -ffp-contract=off, so that no a·b + c is fused where ATen rounds twice. The row
// loops are compiled twice, for AVX2 + FMA (std::fma one instruction) and for the baseline
// (std::fma a call to libm's, the same correctly rounded result), and chosen by the CPU.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

#define EXTRAPOS_INLINE inline __attribute__((always_inline))

// mask ? a : b, by bits (mask all ones or all zeros)
EXTRAPOS_INLINE float pick(uint32_t mask, float a, float b) {
  uint32_t x, y;
  std::memcpy(&x, &a, 4);
  std::memcpy(&y, &b, 4);
  const uint32_t z = (x & mask) | (y & ~mask);
  float out;
  std::memcpy(&out, &z, 4);
  return out;
}

EXTRAPOS_INLINE float lerp_like_aten(float low, float high, float w) {
  // branch-free, as ATen's blendv: w is as likely below 0.5 as above, so a branch (which the
  // compiler makes of `?:` here) mispredicts half the time
  const uint32_t small = std::fabs(w) < 0.5f ? ~0u : 0u;
  return std::fma(pick(small, w, w - 1.0f), high - low, pick(small, low, high));
}

EXTRAPOS_INLINE float clamp_max(float p, float npos_max) {
  return p > npos_max ? npos_max : p;  // clamp(max=npos_max); NaN stays NaN
}

// One query row of the forward, in place: g (t) holds σ(S) and becomes the masked gates; s (t)
// holds S and becomes S + lerp(e[⌊p⌋], e[⌊p⌋ + 1], frac p); e (n) the row's q·e[m]. One reverse
// loop: p_j is the sum of the gates of keys j .. t - 1.
EXTRAPOS_INLINE void forward_row(float* s, float* g, const float* k, const float* e, int64_t t,
                                 int64_t n, float npos_max) {
  double acc = 0.0;
  for (int64_t j = t - 1; j >= 0; --j) {
    const float gate = g[j] * k[j];
    g[j] = gate;
    acc += static_cast<double>(gate);
    const float pos = clamp_max(static_cast<float>(acc), npos_max);
    if (!(pos >= 0.0f)) {  // NaN scores: NaN logits (never an index outside the table)
      s[j] = std::nanf("");
      continue;
    }
    const int64_t low = static_cast<int64_t>(pos);
    const int64_t high = low + 1 < n ? low + 1 : n - 1;
    s[j] = lerp_like_aten(e[low], e[high], pos - std::trunc(pos)) + s[j];
  }
}

// One query row of the backward: G (t) the logits' gradient, g (t) the masked gates, e (n),
// k (t) -> ds (t) the scores' gradient, dv (n) the table's. p and above are scratch (t), (n).
// The scatter's sums over a run of keys with the same ⌊p⌋ (p falls along j, so each index is
// one run) stay in registers: the same additions in the same order as into memory.
EXTRAPOS_INLINE void backward_row(const float* G, const float* g, const float* k, const float* e,
                                  float* ds, float* dv, float* p, float* above, int64_t t,
                                  int64_t n, float npos_max) {
  double acc = 0.0;
  for (int64_t j = t - 1; j >= 0; --j) {  // the forward's positions, from the same gates
    acc += static_cast<double>(g[j]);
    p[j] = clamp_max(static_cast<float>(acc), npos_max);
  }
  for (int64_t m = 0; m < n; ++m) {
    dv[m] = 0.0f;
    above[m] = 0.0f;
  }
  int64_t run = -1;  // the index whose sums are in registers
  float run_low = 0.0f, run_above = 0.0f;
  acc = 0.0;  // now the cumulative sum of dp
  for (int64_t j = 0; j < t; ++j) {
    const float pos = p[j];
    if (!(pos >= 0.0f)) {
      ds[j] = std::nanf("");
      continue;
    }
    const int64_t low = static_cast<int64_t>(pos);
    const int64_t high = low + 1 < n ? low + 1 : n - 1;
    const float w = pos - std::trunc(pos);
    const float gj = G[j];
    if (low != run) {
      if (run >= 0) {
        dv[run] = run_low;
        above[run] = run_above;
      }
      run = low;
      run_low = dv[low];
      run_above = above[low];
    }
    run_low += gj * (1.0f - w);
    run_above += gj * w;
    const float step = e[high] - e[low];
    acc += static_cast<double>((gj * step) * std::ceil(w));  // dp: 0 where w = 0
    const float dg = static_cast<float>(acc) * k[j];
    ds[j] = (dg * (1.0f - g[j])) * g[j] + gj;  // σ'(S)·dg + G
  }
  if (run >= 0) {
    dv[run] = run_low;
    above[run] = run_above;
  }
  for (int64_t m = 1; m < n; ++m) dv[m] += above[m - 1];
}

struct Chunk {
  int64_t rows, c, t, n;  // rows = b·h·c; row r is query r % c of the chunk
  float npos_max;
};

EXTRAPOS_INLINE void forward_range(float* scores, float* gates, const float* table,
                                   const float* keep, Chunk x, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    forward_row(scores + r * x.t, gates + r * x.t, keep + (r % x.c) * x.t, table + r * x.n, x.t,
                x.n, x.npos_max);
  }
}

EXTRAPOS_INLINE void backward_range(const float* grad, const float* gates, const float* table,
                                    const float* keep, float* grad_scores, float* grad_table,
                                    Chunk x, int64_t begin, int64_t end) {
  std::vector<float> p(x.t), above(x.n);
  for (int64_t r = begin; r < end; ++r) {
    backward_row(grad + r * x.t, gates + r * x.t, keep + (r % x.c) * x.t, table + r * x.n,
                 grad_scores + r * x.t, grad_table + r * x.n, p.data(), above.data(), x.t, x.n,
                 x.npos_max);
  }
}

#if defined(__x86_64__) || defined(__i386__)
#define EXTRAPOS_X86 1
__attribute__((target("avx2,fma"))) void forward_range_fma(float* scores, float* gates,
                                                           const float* table, const float* keep,
                                                           Chunk x, int64_t begin, int64_t end) {
  forward_range(scores, gates, table, keep, x, begin, end);
}
#endif
void forward_range_baseline(float* scores, float* gates, const float* table, const float* keep,
                            Chunk x, int64_t begin, int64_t end) {
  forward_range(scores, gates, table, keep, x, begin, end);
}

#ifdef EXTRAPOS_X86
__attribute__((target("avx2,fma"))) void backward_range_fma(const float* grad, const float* gates,
                                                            const float* table, const float* keep,
                                                            float* grad_scores, float* grad_table,
                                                            Chunk x, int64_t begin, int64_t end) {
  backward_range(grad, gates, table, keep, grad_scores, grad_table, x, begin, end);
}
#endif
void backward_range_baseline(const float* grad, const float* gates, const float* table,
                             const float* keep, float* grad_scores, float* grad_table, Chunk x,
                             int64_t begin, int64_t end) {
  backward_range(grad, gates, table, keep, grad_scores, grad_table, x, begin, end);
}

bool has_fma() {
#ifdef EXTRAPOS_X86
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
#else
  return false;  // other CPUs: the baseline loops (std::fma as the platform gives it)
#endif
}

void check(const torch::Tensor& x, const char* name, int64_t dim) {
  TORCH_CHECK(x.device().is_cpu(), "cope_cpu: ", name, " must be on the CPU");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32, "cope_cpu: ", name, " must be float32");
  TORCH_CHECK(x.is_contiguous(), "cope_cpu: ", name, " must be contiguous");
  TORCH_CHECK(x.dim() == dim, "cope_cpu: ", name, " must have ", dim, " dims");
}

Chunk chunk_of(const torch::Tensor& pairs, const torch::Tensor& gates, const torch::Tensor& table,
               const torch::Tensor& keep, double npos_max) {
  check(pairs, "scores", 4);
  check(gates, "gates", 4);
  check(table, "table", 4);
  check(keep, "keep", 2);
  const int64_t c = pairs.size(2), t = pairs.size(3), n = table.size(3);
  TORCH_CHECK(gates.sizes() == pairs.sizes() && table.size(0) == pairs.size(0) &&
                  table.size(1) == pairs.size(1) && table.size(2) == c && keep.size(0) == c &&
                  keep.size(1) == t && n >= 1 && t >= 1,
              "cope_cpu: shapes do not match");
  // every clamped position indexes inside the table: ⌊p⌋ <= npos_max <= n - 1
  TORCH_CHECK(npos_max >= 0.0 && npos_max <= static_cast<double>(n - 1),
              "cope_cpu: npos_max must be in [0, table width - 1]");
  return Chunk{pairs.numel() / t, c, t, n, static_cast<float>(npos_max)};
}

}  // namespace

// In place: scores (b, h, c, t) become the logits S + e(p); gates (same shape) = σ(scores)
// become the masked gates (what the backward needs). table (b, h, c, n), keep (c, t) 0/1.
void cope_forward(torch::Tensor scores, torch::Tensor gates, torch::Tensor table,
                  torch::Tensor keep, double npos_max) {
  const Chunk x = chunk_of(scores, gates, table, keep, npos_max);
#ifdef EXTRAPOS_X86
  const auto range = has_fma() ? forward_range_fma : forward_range_baseline;
#else
  const auto range = forward_range_baseline;
#endif
  float* s = scores.data_ptr<float>();
  float* g = gates.data_ptr<float>();
  const float* e = table.data_ptr<float>();
  const float* k = keep.data_ptr<float>();
  at::parallel_for(0, x.rows, 16, [&](int64_t begin, int64_t end) {
    range(s, g, e, k, x, begin, end);
  });
}

// grad (b, h, c, t) of the logits, the forward's masked gates, table, keep -> (grad_scores,
// grad_table)
std::vector<torch::Tensor> cope_backward(torch::Tensor grad, torch::Tensor gates,
                                         torch::Tensor table, torch::Tensor keep,
                                         double npos_max) {
  const Chunk x = chunk_of(grad, gates, table, keep, npos_max);
  auto grad_scores = torch::empty_like(grad);
  auto grad_table = torch::empty_like(table);
#ifdef EXTRAPOS_X86
  const auto range = has_fma() ? backward_range_fma : backward_range_baseline;
#else
  const auto range = backward_range_baseline;
#endif
  const float* G = grad.data_ptr<float>();
  const float* g = gates.data_ptr<float>();
  const float* e = table.data_ptr<float>();
  const float* k = keep.data_ptr<float>();
  float* ds = grad_scores.data_ptr<float>();
  float* dv = grad_table.data_ptr<float>();
  at::parallel_for(0, x.rows, 16, [&](int64_t begin, int64_t end) {
    range(G, g, e, k, ds, dv, x, begin, end);
  });
  return {grad_scores, grad_table};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &cope_forward, "CoPE chunk logits, forward, in place (fused)");
  m.def("backward", &cope_backward, "CoPE chunk logits, backward (fused)");
}
