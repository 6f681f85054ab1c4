// pdo_hub::small_attention: `_small_attention._attend`'s plain attention as one op, for short inputs.
//
// At batch-1 request sizes a layer's attention is about twenty tiny ATen ops (two matmuls, their
// transposes and copies, the additive mask, softmax, the output's layout), each costing a few
// microseconds of dispatch and set-up around almost no arithmetic; up to batch 8 of 128 tokens this
// loop is also faster than the ops' GEMMs and SDPA (scripts/bench_cpu_kernels.py). This op computes, per batch and head,
// the same formula in one pass: scores = (q . k) * scale, plus `lowest` where the boolean mask is false,
// softmax over the keys, then the probability-weighted sum of the values, written as (batch, query,
// head, dim) like `_attend`'s output. The order of the float operations differs from ATen's (its GEMMs
// and softmax), so results agree to float rounding, not bit for bit; the caller uses it only where it is
// faster (`_small_attention.FUSED_SCORES`), eagerly and in traces alike, so a trace still matches eager.
// Built into the same library as the per-token int8 op (`_token_int8_kernel.py`); only on AVX-512 builds.
// Per-operator headers, not <ATen/ATen.h>: parsing every operator's declarations was most of the build.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__AVX512F__)
namespace {

// e^x for 16 lanes (Cephes' expf polynomial on x - n ln 2, then scaled by 2^n): within 2 ulp of expf;
// far below the largest score it underflows to exactly 0, as expf does.
__m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.7f)), _mm512_set1_ps(-110.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.9875691500e-4f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(y, n);
}

__mmask16 tail_mask(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

// One (batch, head): q (lq x d), k (lk x d), v (lk x dv) rows at the given row strides (unit stride within
// a row); mask (lq x lk bytes at its strides, or null); out rows at out_stride.
struct Head {
  const float* q;
  int64_t q_row;
  const float* k;
  int64_t k_row;
  const float* v;
  int64_t v_row;
  const bool* mask;
  int64_t mask_row, mask_col;
  int64_t lq, lk, d, dv;
  float scale, lowest;
  float* out;
  int64_t out_row;
};

// q_i . k for NB blocks of 16 keys (from `kt`, the keys transposed at row stride lk16). One accumulator
// per block, each summing over the dimensions in order: NB independent FMA chains instead of one, which
// left the loop waiting on each FMA's latency.
template <int NB>
void score_blocks(const float* qi, const float* kt, int64_t lk16, int64_t d, __m512* out) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t c = 0; c < d; ++c) {
    const __m512 qc = _mm512_set1_ps(qi[c]);
    const float* row = kt + c * lk16;
    a0 = _mm512_fmadd_ps(qc, _mm512_loadu_ps(row), a0);
    if constexpr (NB > 1) a1 = _mm512_fmadd_ps(qc, _mm512_loadu_ps(row + 16), a1);
    if constexpr (NB > 2) a2 = _mm512_fmadd_ps(qc, _mm512_loadu_ps(row + 32), a2);
    if constexpr (NB > 3) a3 = _mm512_fmadd_ps(qc, _mm512_loadu_ps(row + 48), a3);
  }
  const __m512 all[4] = {a0, a1, a2, a3};
  for (int b = 0; b < NB; ++b) out[b] = all[b];
}

// Lanes of keys [j, j + 16) that the mask blocks for query i.
__mmask16 blocked_keys(const Head& h, int64_t i, int64_t j, __mmask16 live) {
  const bool* row = h.mask + i * h.mask_row + j * h.mask_col;
#if defined(__AVX512BW__) && defined(__AVX512VL__)
  if (h.mask_col == 1)
    return _mm_mask_cmpeq_epi8_mask(live, _mm_maskz_loadu_epi8(live, row), _mm_setzero_si128());
#endif
  __mmask16 blocked = 0;
  for (int64_t t = 0; t < 16; ++t)
    if (((live >> t) & 1) && !row[t * h.mask_col]) blocked |= static_cast<__mmask16>(1u << t);
  return blocked;
}

// Query i's softmax numerators over the keys into `e` (lk16 floats, zero past lk); returns 1 / their sum.
float softmax_row(const Head& h, int64_t i, const float* kt, int64_t lk16, float* e) {
  const float* qi = h.q + i * h.q_row;
  const __m512 scale = _mm512_set1_ps(h.scale), lowest = _mm512_set1_ps(h.lowest);
  __m512 top = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < lk16; j += 64) {
    __m512 blocks[4];
    const int64_t count = std::min<int64_t>(4, (lk16 - j) / 16);
    switch (count) {
      case 4: score_blocks<4>(qi, kt + j, lk16, h.d, blocks); break;
      case 3: score_blocks<3>(qi, kt + j, lk16, h.d, blocks); break;
      case 2: score_blocks<2>(qi, kt + j, lk16, h.d, blocks); break;
      default: score_blocks<1>(qi, kt + j, lk16, h.d, blocks); break;
    }
    for (int64_t b = 0; b < count; ++b) {
      const int64_t jb = j + b * 16;
      const __mmask16 live = tail_mask(h.lk - jb);
      __m512 acc = _mm512_mul_ps(blocks[b], scale);
      if (h.mask != nullptr) acc = _mm512_mask_add_ps(acc, blocked_keys(h, i, jb, live), acc, lowest);
      _mm512_storeu_ps(e + jb, acc);
      top = _mm512_mask_max_ps(top, live, top, acc);
    }
  }
  const __m512 row_max = _mm512_set1_ps(_mm512_reduce_max_ps(top));
  __m512 total = _mm512_setzero_ps();
  for (int64_t j = 0; j < lk16; j += 16) {
    const __m512 x = _mm512_maskz_mov_ps(tail_mask(h.lk - j), exp16(_mm512_sub_ps(_mm512_loadu_ps(e + j), row_max)));
    _mm512_storeu_ps(e + j, x);
    total = _mm512_add_ps(total, x);
  }
  return 1.f / _mm512_reduce_add_ps(total);
}

// Output rows i0 .. i0 + R - 1: each row's probability-weighted sum of the values (row r's numerators at
// e + r * lk16), scaled by its 1 / sum. The R rows share each value load and are R independent FMA chains.
template <int R>
void weighted_values(const Head& h, int64_t i0, const float* e, int64_t lk16, const float* inverse) {
  for (int64_t c = 0; c < h.dv; c += 16) {
    const __mmask16 lanes = tail_mask(h.dv - c);
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t j = 0; j < h.lk; ++j) {
      const __m512 vj = _mm512_maskz_loadu_ps(lanes, h.v + j * h.v_row + c);
      a0 = _mm512_fmadd_ps(_mm512_set1_ps(e[j]), vj, a0);
      if constexpr (R > 1) a1 = _mm512_fmadd_ps(_mm512_set1_ps(e[lk16 + j]), vj, a1);
      if constexpr (R > 2) a2 = _mm512_fmadd_ps(_mm512_set1_ps(e[2 * lk16 + j]), vj, a2);
      if constexpr (R > 3) a3 = _mm512_fmadd_ps(_mm512_set1_ps(e[3 * lk16 + j]), vj, a3);
    }
    const __m512 rows[4] = {a0, a1, a2, a3};
    for (int r = 0; r < R; ++r)
      _mm512_mask_storeu_ps(h.out + (i0 + r) * h.out_row + c, lanes, _mm512_mul_ps(rows[r], _mm512_set1_ps(inverse[r])));
  }
}

// kt: scratch of d x lk16; e: scratch of 4 x lk16. Queries go four at a time: their softmax rows, then
// their outputs together.
void attend_head(const Head& h, float* kt, float* e) {
  const int64_t lk16 = (h.lk + 15) / 16 * 16;
  for (int64_t j = 0; j < lk16; ++j)  // keys transposed, so 16 scores come from one FMA per dimension
    for (int64_t c = 0; c < h.d; ++c) kt[c * lk16 + j] = j < h.lk ? h.k[j * h.k_row + c] : 0.f;
  for (int64_t i0 = 0; i0 < h.lq; i0 += 4) {
    const int64_t rows = std::min<int64_t>(4, h.lq - i0);
    float inverse[4];
    for (int64_t r = 0; r < rows; ++r) inverse[r] = softmax_row(h, i0 + r, kt, lk16, e + r * lk16);
    switch (rows) {
      case 4: weighted_values<4>(h, i0, e, lk16, inverse); break;
      case 3: weighted_values<3>(h, i0, e, lk16, inverse); break;
      case 2: weighted_values<2>(h, i0, e, lk16, inverse); break;
      default: weighted_values<1>(h, i0, e, lk16, inverse); break;
    }
  }
}

// query (b, h, lq, d), key (b, h, lk, d), value (b, h, lk, dv), float32; mask: boolean, broadcastable to
// (b, h, lq, lk), true = attend. Returns (b, lq, h, dv), contiguous.
at::Tensor small_attention(const at::Tensor& query_in, const at::Tensor& key_in, const at::Tensor& value_in,
                           const std::optional<at::Tensor>& mask_in, double scale, double lowest) {
  TORCH_CHECK(query_in.dim() == 4 && key_in.dim() == 4 && value_in.dim() == 4,
              "small_attention: query, key and value must be (batch, heads, tokens, dim)");
  TORCH_CHECK(query_in.scalar_type() == at::kFloat && key_in.scalar_type() == at::kFloat && value_in.scalar_type() == at::kFloat,
              "small_attention: float32 only");
  const int64_t b = query_in.size(0), h = query_in.size(1), lq = query_in.size(2), d = query_in.size(3);
  const int64_t lk = key_in.size(2), dv = value_in.size(3);
  TORCH_CHECK(key_in.size(0) == b && key_in.size(1) == h && key_in.size(3) == d && value_in.size(0) == b &&
                  value_in.size(1) == h && value_in.size(2) == lk,
              "small_attention: query, key and value shapes do not match");
  const auto unit = [](const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); };
  const at::Tensor query = unit(query_in), key = unit(key_in), value = unit(value_in);
  at::Tensor mask;
  if (mask_in.has_value() && mask_in->defined()) {
    TORCH_CHECK(mask_in->scalar_type() == at::kBool, "small_attention: the mask must be boolean");
    mask = mask_in->expand({b, h, lq, lk});
  }
  at::Tensor out = at::empty({b, lq, h, dv}, query.options());
  const int64_t lk16 = (lk + 15) / 16 * 16;
  const float* qp = query.data_ptr<float>();
  const float* kp = key.data_ptr<float>();
  const float* vp = value.data_ptr<float>();
  const bool* mp = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  float* op = out.data_ptr<float>();
  // One (batch, head) per task; below ~64k multiply-adds a second thread costs more than it saves.
  const int64_t work = std::max<int64_t>(1, lq * lk * (d + dv));
  at::parallel_for(0, b * h, std::max<int64_t>(1, 65536 / work), [&](int64_t begin, int64_t end) {
    std::vector<float> kt(d * lk16), e(4 * lk16);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bi = task / h, hi = task % h;
      const Head head{qp + bi * query.stride(0) + hi * query.stride(1), query.stride(2),
                      kp + bi * key.stride(0) + hi * key.stride(1), key.stride(2),
                      vp + bi * value.stride(0) + hi * value.stride(1), value.stride(2),
                      mp != nullptr ? mp + bi * mask.stride(0) + hi * mask.stride(1) : nullptr,
                      mp != nullptr ? mask.stride(2) : 0, mp != nullptr ? mask.stride(3) : 0, lq, lk, d, dv,
                      static_cast<float>(scale), static_cast<float>(lowest), op + bi * out.stride(0) + hi * out.stride(2),
                      out.stride(1)};
      attend_head(head, kt.data(), e.data());
    }
  });
  return out;
}

at::Tensor small_attention_meta(const at::Tensor& query, const at::Tensor&, const at::Tensor& value,
                                const std::optional<at::Tensor>&, double, double) {
  return at::empty({query.size(0), query.size(2), query.size(1), value.size(3)}, query.options());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pdo_hub, m) {
  m.def("small_attention(Tensor query, Tensor key, Tensor value, Tensor? mask, float scale, float lowest) -> Tensor");
}
TORCH_LIBRARY_IMPL(pdo_hub, CPU, m) { m.impl("small_attention", &small_attention); }
TORCH_LIBRARY_IMPL(pdo_hub, Meta, m) { m.impl("small_attention", &small_attention_meta); }
#endif
