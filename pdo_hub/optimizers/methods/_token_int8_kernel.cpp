// pdo_hub::per_token_int8_linear: TokenInt8Linear's forward as one op (see _token_int8_kernel.py).
//
// The same arithmetic as the ATen sequence in _int8_linear.aten_per_token_int8_linear, in the same
// order, so the two give bit-identical outputs: row scale = max(|row|, 1e-12) / levels; q =
// round-half-even(x / scale) as int8; an exact int32 GEMM; y = float(acc) * row scale * column scale
// (+ bias). Built with -ffp-contract=off so no multiply-add is fused into an FMA.
// With levels = kAsymmetricLevels (255) each row is quantized asymmetrically instead: lo = min(row, 0),
// hi = max(row, 0), scale = max(hi - lo, 1e-12) / 255, zero point z = round(-lo / scale), q =
// clamp(round(x / scale) + z, 0, 255) as u8, and the GEMM's sums become sum(q w) - z x column sum.
// The whole 8-bit grid then spans the row's own range: after a GELU (rows mostly >= 0) a symmetric grid
// leaves half of its levels unused.
//
// The GEMM: for up to kVnniMaxRows tokens on an AVX512-VNNI build, `vnni_linear` (weights packed once
// by pack_weights, dequantization in registers): at batch-1 request sizes oneDNN's per-call set-up costs
// more than its multiply-adds, and the packed loop stays faster up to 512 rows. Where the build and the
// process have AMX-INT8, `amx_linear` runs the same packed weights on the tile units from kAmxMinRows
// rows, at any size. Other inputs go through at::_int_mm (oneDNN). Integer products are exact on every
// path, so all give the same int32 sums.

// ATen's vectorized functions for the CPU this is built for (what its own kernels of that capability
// use): the fused GELU is ATen's `vectorized_gelu`. Set before any ATen header.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define CPU_CAPABILITY_AVX512
#define CPU_CAPABILITY AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY_AVX2
#define CPU_CAPABILITY AVX2
#endif
// Per-operator headers, not <ATen/ATen.h>: parsing every operator's declarations was most of the build.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/_int_mm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/cpu/Gelu.h>
#include <ATen/native/cpu/moments_utils.h>
#include <torch/library.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#if defined(__AMX_INT8__) && defined(__AMX_TILE__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <optional>
#include <vector>

namespace {

// Elements per parallel chunk: below this, waking a second thread costs more than it saves.
constexpr int64_t kGrain = 32768;

float max_abs(const float* x, int64_t k) {
  int64_t j = 0;
  float top = 0.f;
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  for (; j + 16 <= k; j += 16) acc = _mm512_max_ps(acc, _mm512_abs_ps(_mm512_loadu_ps(x + j)));
  top = _mm512_reduce_max_ps(acc);
#elif defined(__AVX2__)
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 acc = _mm256_setzero_ps();
  for (; j + 8 <= k; j += 8) acc = _mm256_max_ps(acc, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + j)));
  float lanes[8];
  _mm256_storeu_ps(lanes, acc);
  for (float v : lanes) top = std::max(top, v);
#endif
  for (; j < k; ++j) top = std::max(top, std::fabs(x[j]));
  return top;
}

// Activations the op can apply to its output (the `activation` argument).
enum Activation : int64_t { kNone = 0, kGelu = 1 };
// Up to this many rows the op computes GELU in its epilogue, where it saves torch's per-call cost; above,
// in a pass over the output rows after the GEMM (`gelu_rows`). With the epilogue at every size (a one-off
// build), all-MiniLM-L6-v2 at batch 1 ran 1.10x at 8 tokens, 1.06x at 16, 1.03x at 32, but 0.99x at 64 and
// 0.97x at 128; as landed, scripts/bench_fused_gelu.py: 1.09x / 1.10x / 1.02x, then the same.
constexpr int64_t kEpilogueGeluMaxRows = 32;
using Vec = at::vec::Vectorized<float>;

// GELU (erf form) of y[0, n) in place, every element by ATen's vectorized formula (the tail too, from a
// partial load): what torch.nn.functional.gelu computes with oneDNN off, except that ATen takes a
// tensor's last elements past a multiple of 32 through scalar std::erf. With oneDNN on (the default),
// torch runs oneDNN's own erf, which differs from this in the last bits.
void gelu_in_place(float* y, int64_t n) {
  int64_t j = 0;
  for (; j + Vec::size() <= n; j += Vec::size()) at::native::vectorized_gelu(Vec::loadu(y + j)).store(y + j);
  if (j < n) at::native::vectorized_gelu(Vec::loadu(y + j, n - j)).store(y + j, n - j);
}

int64_t grain(int64_t width) { return std::max<int64_t>(1, kGrain / std::max<int64_t>(width, 1)); }

// GELU of every row of y (m x n, contiguous) in place, rows split across threads: the same formula as the
// epilogue, as torch computes GELU with oneDNN off. torch's default GELU is oneDNN's, which builds a
// primitive for every new tensor shape (2-3 ms for a 992 x 1536 tensor here, 0.2-0.7 ms once built): a
// corpus padded to each batch's longest or a stream of new lengths paid it six times (one per layer)
// for every new length, on its first pass.
void gelu_rows(at::Tensor& y) {
  const int64_t n = y.size(-1), m = y.numel() / std::max<int64_t>(n, 1);
  float* out = y.data_ptr<float>();
  at::parallel_for(0, m, grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) gelu_in_place(out + i * n, n);
  });
}

// The `levels` value that asks for asymmetric rows (a zero point per row; see the top of this file).
constexpr int64_t kAsymmetricLevels = 255;

// (min, max) of x[0, k).
std::pair<float, float> min_max(const float* x, int64_t k) {
  int64_t j = 0;
  float lo = x[0], hi = x[0];
#if defined(__AVX512F__)
  if (k >= 16) {
    __m512 low = _mm512_loadu_ps(x), high = low;
    for (j = 16; j + 16 <= k; j += 16) {
      const __m512 v = _mm512_loadu_ps(x + j);
      low = _mm512_min_ps(low, v), high = _mm512_max_ps(high, v);
    }
    lo = _mm512_reduce_min_ps(low), hi = _mm512_reduce_max_ps(high);
  }
#endif
  for (; j < k; ++j) lo = std::min(lo, x[j]), hi = std::max(hi, x[j]);
  return {lo, hi};
}

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
constexpr bool kVnni = true;
// Multiply-adds per thread below which a second thread costs more than it saves.
constexpr int64_t kMacsPerThread = 1 << 19;

// Rows [0, R) of u x the 64 columns at `w` (one column block of the packed weights), dequantized into y.
// dpbusd multiplies unsigned by signed bytes: u holds the activations as u8 with a zero point per row
// (symmetric rows: the int8 values with their sign bit flipped, q + 128; asymmetric rows: q itself), and
// zero point x each column's weight sum is subtracted afterwards.
//
// The accumulators are 16 named locals, not an array: GCC 12 kept an array of them moving between
// registers (32 copies and a stack spill per step of 4 inputs, beside 16 dpbusd); and each step's 4
// weight vectors are pinned in registers, where GCC would load each again for every row. Measured on
// AVX512-VNNI (AMD EPYC, 2 threads), against the array version in one process: 10-25% less time per
// layer over MiniLM's shapes at 8-128 rows, and the whole model 1.09-1.12x faster at batch 1 and 8-48
// tokens (a one-off build with both versions, not kept).
inline __m512i broadcast_word(const uint8_t* p) {
  int32_t word;
  std::memcpy(&word, p, 4);
  return _mm512_set1_epi32(word);
}

// What the dequantization of output columns [j, j + 16) needs, loaded once for all rows: the lanes
// inside the layer (mask), each column's weight sum (dpbusd's unsigned operand is q + zero point: 128
// for symmetric rows, the row's own for asymmetric ones), the column scales and the bias.
struct Columns {
  __mmask16 mask;
  __m512i sum;
  __m512 scale, bias;
  bool has_bias;
};

inline Columns columns_at(int64_t j, int64_t n, const int32_t* column_sum, const float* cs, const float* b) {
  const __mmask16 mask = n - j >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - j)) - 1);
  return {mask, _mm512_maskz_loadu_epi32(mask, column_sum + j), _mm512_maskz_loadu_ps(mask, cs + j),
          b != nullptr ? _mm512_maskz_loadu_ps(mask, b + j) : _mm512_setzero_ps(), b != nullptr};
}

// One row's 16 sums -> float(sum - zero point x column sum) x row scale x column scale (+ bias), then the
// activation, into out.
inline void store_row(__m512i sums, const Columns& c, float row_scale, int32_t zero_point, int64_t activation, float* out) {
  __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(sums, _mm512_mullo_epi32(_mm512_set1_epi32(zero_point), c.sum)));
  v = _mm512_mul_ps(_mm512_mul_ps(v, _mm512_set1_ps(row_scale)), c.scale);
  if (c.has_bias) v = _mm512_add_ps(v, c.bias);
  if (activation == kGelu) v = at::native::vectorized_gelu(Vec(v));  // on all 16 lanes, as gelu_in_place
  _mm512_mask_storeu_ps(out, c.mask, v);
}

template <int R>
void vnni_rows(const uint8_t* u, int64_t k4s, const int8_t* w, const int32_t* column_sum, int64_t n,
               int64_t n0, const float* rs, const int32_t* zp, const float* cs, const float* b, int64_t activation, float* y) {
  static_assert(R >= 1 && R <= 4, "vnni_rows: 1 to 4 rows");
  __m512i a00 = _mm512_setzero_si512(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00,
          a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00, a33 = a00;
  const int8_t* wk = w;
  for (int64_t k4 = 0; k4 < k4s; ++k4, wk += 256) {
    __m512i w0 = _mm512_loadu_si512(wk), w1 = _mm512_loadu_si512(wk + 64), w2 = _mm512_loadu_si512(wk + 128),
            w3 = _mm512_loadu_si512(wk + 192);
    asm("" : "+v"(w0), "+v"(w1), "+v"(w2), "+v"(w3));  // in registers: loaded once per step, not once per row
    __m512i a = broadcast_word(u + k4 * 4);
    a00 = _mm512_dpbusd_epi32(a00, a, w0), a01 = _mm512_dpbusd_epi32(a01, a, w1);
    a02 = _mm512_dpbusd_epi32(a02, a, w2), a03 = _mm512_dpbusd_epi32(a03, a, w3);
    if constexpr (R > 1) {
      a = broadcast_word(u + (k4s + k4) * 4);
      a10 = _mm512_dpbusd_epi32(a10, a, w0), a11 = _mm512_dpbusd_epi32(a11, a, w1);
      a12 = _mm512_dpbusd_epi32(a12, a, w2), a13 = _mm512_dpbusd_epi32(a13, a, w3);
    }
    if constexpr (R > 2) {
      a = broadcast_word(u + (2 * k4s + k4) * 4);
      a20 = _mm512_dpbusd_epi32(a20, a, w0), a21 = _mm512_dpbusd_epi32(a21, a, w1);
      a22 = _mm512_dpbusd_epi32(a22, a, w2), a23 = _mm512_dpbusd_epi32(a23, a, w3);
    }
    if constexpr (R > 3) {
      a = broadcast_word(u + (3 * k4s + k4) * 4);
      a30 = _mm512_dpbusd_epi32(a30, a, w0), a31 = _mm512_dpbusd_epi32(a31, a, w1);
      a32 = _mm512_dpbusd_epi32(a32, a, w2), a33 = _mm512_dpbusd_epi32(a33, a, w3);
    }
  }
  const __m512i acc[4][4] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}, {a20, a21, a22, a23}, {a30, a31, a32, a33}};
  for (int c = 0; c < 4; ++c) {
    const int64_t j = n0 + c * 16;
    if (j >= n) break;
    const Columns columns = columns_at(j, n, column_sum, cs, b);
    for (int r = 0; r < R; ++r) store_row(acc[r][c], columns, rs[r], zp[r], activation, y + r * n + j);
  }
}

// Rows per work item beyond request sizes: a thread runs one column block for up to this many rows, so
// the block's weights stay in its cache, and large inputs still split across more threads than blocks.
constexpr int64_t kRowsPerItem = 64;

// y[m x n] = float(q . w) * row_scale * column_scale (+ bias): the GEMM and the dequantization in one
// pass, the products never leaving registers. u: m rows of k4s x 4 unsigned bytes, each row offset by
// its zero point zp (padding is multiplied by zero weights); a column block of the packed weights holds
// `block_k4s` >= k4s steps.
void vnni_linear(const uint8_t* u, int64_t m, int64_t k4s, int64_t block_k4s, const int8_t* packed, const int32_t* column_sum,
                 int64_t n, const float* rs, const int32_t* zp, const float* cs, const float* b, int64_t activation, float* y) {
  if (m == 0) return;
  const int64_t blocks = (n + 63) / 64, rows = std::min(m, kRowsPerItem), chunks = (m + rows - 1) / rows;
  const int64_t macs_per_item = std::max<int64_t>(1, rows * k4s * 4 * 64);
  at::parallel_for(0, blocks * chunks, std::max<int64_t>(1, kMacsPerThread / macs_per_item), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {  // consecutive items: one block's row chunks
      const int64_t block = item / chunks, first = item % chunks * rows, last = std::min(m, first + rows);
      const int64_t n0 = block * 64;
      const int8_t* w = packed + block * block_k4s * 256;
      for (int64_t r0 = first; r0 < last; r0 += 4) {
        const uint8_t* qr = u + r0 * k4s * 4;
        switch (std::min<int64_t>(4, last - r0)) {
          case 4: vnni_rows<4>(qr, k4s, w, column_sum, n, n0, rs + r0, zp + r0, cs, b, activation, y + r0 * n); break;
          case 3: vnni_rows<3>(qr, k4s, w, column_sum, n, n0, rs + r0, zp + r0, cs, b, activation, y + r0 * n); break;
          case 2: vnni_rows<2>(qr, k4s, w, column_sum, n, n0, rs + r0, zp + r0, cs, b, activation, y + r0 * n); break;
          default: vnni_rows<1>(qr, k4s, w, column_sum, n, n0, rs + r0, zp + r0, cs, b, activation, y + r0 * n); break;
        }
      }
    }
  });
}

// The AMX-INT8 tile GEMM: the same packed weights and unsigned activations as `vnni_linear`, 32 rows
// x 32 columns per step (four 16 x 16 int32 accumulator tiles, two activation tiles, two weight tiles),
// then the same dequantization. A weight tile is 16 steps of 4 inputs (64 of them) for 16 columns: rows
// k4 of the packed block, 256 bytes apart, so `pack_weights`' layout serves both paths. On AMX builds
// each block holds whole weight tiles (`packed_k4s`: the input width padded to 64 with zero weights,
// which the zero-padded activations meet), so a pruned layer of any width takes the tiles too. Taken
// where Linux grants the process the tile state.
#if defined(__AMX_INT8__) && defined(__AMX_TILE__)
constexpr bool kAmxBuilt = true;

// Linux gives a process AMX's tile data only on request (arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA).
bool amx_permitted() {
  static const bool granted = [] {
    constexpr long kRequestPermission = 0x1023, kTileData = 18;
    return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
  }();
  return granted;
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

// Rows [r0, r1) (r1 - r0 <= 32) x columns [n0 + c0, +32) of the int32 tile sums `c` (32 x 32), dequantized into y.
void amx_dequantize(const int32_t (*c)[32], int64_t r0, int64_t r1, int64_t j0, const int32_t* column_sum, int64_t n,
                    const float* rs, const int32_t* zp, const float* cs, const float* b, int64_t activation, float* y) {
  for (int half = 0; half < 2; ++half) {
    const int64_t j = j0 + half * 16;
    if (j >= n) break;
    const Columns columns = columns_at(j, n, column_sum, cs, b);
    for (int64_t r = r0; r < r1; ++r) store_row(_mm512_load_si512(c[r - r0] + half * 16), columns, rs[r], zp[r], activation, y + r * n + j);
  }
}

// As `vnni_linear`, on the tile units; u holds m rows rounded up to a multiple of 32 (the extra rows are
// computed and dropped) of k4s steps, k4s the packed blocks' (a multiple of 16).
void amx_linear(const uint8_t* u, int64_t m, int64_t k4s, const int8_t* packed, const int32_t* column_sum, int64_t n,
                const float* rs, const int32_t* zp, const float* cs, const float* b, int64_t activation, float* y) {
  if (m == 0) return;
  const int64_t blocks = (n + 63) / 64, rows = std::min(m, kRowsPerItem), chunks = (m + rows - 1) / rows;
  const int64_t macs_per_item = std::max<int64_t>(1, rows * k4s * 4 * 64), stride = k4s * 4;
  at::parallel_for(0, blocks * chunks, std::max<int64_t>(1, kMacsPerThread / macs_per_item), [&](int64_t begin, int64_t end) {
    TileConfig config;
    for (int t = 0; t < 8; ++t) config.bytes_per_row[t] = 64, config.rows[t] = 16;
    _tile_loadconfig(&config);  // per thread: the tile configuration is thread state
    alignas(64) int32_t c[32][32];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t block = item / chunks, first = item % chunks * rows, last = std::min(m, first + rows);
      const int8_t* w = packed + block * k4s * 256;
      for (int64_t r0 = first; r0 < last; r0 += 32) {
        const uint8_t* a = u + r0 * stride;
        for (int64_t c0 = 0; c0 < 64 && block * 64 + c0 < n; c0 += 32) {  // packed columns run to 64: in bounds
          _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
          for (int64_t k4 = 0; k4 < k4s; k4 += 16) {
            _tile_loadd(4, a + k4 * 4, stride);
            _tile_loadd(5, a + 16 * stride + k4 * 4, stride);
            _tile_loadd(6, w + k4 * 256 + c0 * 4, 256);
            _tile_loadd(7, w + k4 * 256 + (c0 + 16) * 4, 256);
            _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7); _tile_dpbusd(2, 5, 6); _tile_dpbusd(3, 5, 7);
          }
          _tile_stored(0, &c[0][0], 128); _tile_stored(1, &c[0][16], 128);
          _tile_stored(2, &c[16][0], 128); _tile_stored(3, &c[16][16], 128);
          amx_dequantize(c, r0, std::min(last, r0 + 32), block * 64 + c0, column_sum, n, rs, zp, cs, b, activation, y);
        }
      }
    }
    _tile_release();
  });
}
#else
constexpr bool kAmxBuilt = false;
bool amx_permitted() { return false; }
void amx_linear(const uint8_t*, int64_t, int64_t, const int8_t*, const int32_t*, int64_t, const float*, const int32_t*,
                const float*, const float*, int64_t, float*) {}
#endif
#else
constexpr bool kVnni = false;
constexpr bool kAmxBuilt = false;
bool amx_permitted() { return false; }
#endif

// Steps of 4 inputs per column block of the packed weights: on AMX builds a multiple of 16 (whole weight
// tiles; the VNNI loop skips the zero padding), else exactly the input's.
int64_t packed_k4s(int64_t k4s) { return kAmxBuilt ? (k4s + 15) / 16 * 16 : k4s; }

// Rows of this many tokens or fewer take `vnni_linear` when the caller passes packed weights; larger ones
// take oneDNN's GEMM. Measured on AVX512-VNNI without AMX (AMD EPYC, 2 threads, each call cycling six
// layers of a MiniLM shape: scripts/bench_cpu_kernels.py): `vnni_linear` takes less time than the
// oneDNN path from 1 to 128 rows (17-52%) and at 512 (7-27%); at 1024 and more the two trade places from run to
// run. On an AMX CPU (Xeon with AMX-INT8, the same script) the same held: at::_int_mm reaches oneDNN's
// gemm API, which does not use the tiles, and took 1.1-2.2x the packed loop's time at 1-128 rows.
constexpr int64_t kVnniMaxRows = 512;
// Where the build and the process have AMX-INT8, `amx_linear` takes inputs of this many rows or more, at
// every size (no oneDNN hand-over). Measured on a Xeon with AMX-INT8 (2 threads, six layers of each MiniLM
// shape cycled per call, against the packed VNNI loop and oneDNN in one process): 8 rows 1.4-1.5x the VNNI
// loop's time, 16 rows 1.0-1.1x, 24 rows a tie, from 32 rows 0.63-0.95x, and below oneDNN's at every size;
// the whole of all-MiniLM-L6-v2 at batch 1 then ran 1.29x at 64 and 128 tokens, and a batch of 32
// sentences 1.17x, against VNNI up to 48 rows and oneDNN above (a one-off build with a switch, not kept).
constexpr int64_t kAmxMinRows = 32;
// Cleared by `allow_amx(false)`: a process whose oneDNN is capped below AMX (`ONEDNN_MAX_CPU_ISA`) keeps
// the op off the tiles too, as on a CPU without them.
std::atomic<bool> amx_allowed{true};

// Whether the GEMM may take the tile units (`allowed`); returns whether it will: built for AMX-INT8,
// granted the tile state by Linux, and allowed.
bool allow_amx(bool allowed) {
  amx_allowed.store(allowed);
  return kAmxBuilt && allowed && amx_permitted();
}

// [kVnniMaxRows, kAmxMinRows]: the row counts where the GEMM changes path, for the report.
std::vector<int64_t> gemm_limits() { return {kVnniMaxRows, kAmxMinRows}; }

// Per-row scale, zero point and 8-bit values. `unsigned_operand`: stored for dpbusd, as u8 values whose
// zero point is `zp` (symmetric rows: q + 128, zero point 128); else as s8 for at::_int_mm (asymmetric
// rows: q - 128, zero point z - 128). Either way x ~ (stored - zero point) x scale.
void quantize_rows(const float* x, int64_t m, int64_t k, int64_t stride, int64_t levels, bool unsigned_operand, int8_t* q,
                   float* rs, int32_t* zp) {
  const bool asymmetric = levels == kAsymmetricLevels;
  at::parallel_for(0, m, grain(k), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* xi = x + i * k;
      float s, z = 0.f;
      if (asymmetric) {
        auto [lo, hi] = k > 0 ? min_max(xi, k) : std::pair<float, float>{0.f, 0.f};
        lo = std::min(lo, 0.f), hi = std::max(hi, 0.f);
        s = std::max(hi - lo, 1e-12f) / static_cast<float>(kAsymmetricLevels);
        z = std::nearbyint(-lo / s);
      } else {
        s = std::max(max_abs(xi, k), 1e-12f) / static_cast<float>(levels);
      }
      rs[i] = s;
      // The sign bit, xored in: symmetric values become u8 for dpbusd, asymmetric ones s8 for _int_mm.
      const int8_t bias = unsigned_operand != asymmetric ? static_cast<int8_t>(-128) : 0;
      zp[i] = (asymmetric ? static_cast<int32_t>(z) : 0) + (bias != 0 ? (asymmetric ? -128 : 128) : 0);
      int8_t* qi = q + i * stride;
      int64_t j = 0;
#if defined(__AVX512F__)
      // 16 at a time, the same operations: an exact division, round half to even, the xor. GCC left the
      // scalar loop unvectorized (a division, a rounding and a conversion per element: ~11% of a batch-1
      // forward at 8 tokens in a perf profile on an AMX-INT8 Xeon); vectorized, all-MiniLM-L6-v2 at batch 1
      // ran 1.11x at 8 tokens, 1.15x at 16, 1.26x at 32, 1.20x at 64, 1.13x at 128 (one process, with a
      // switch between the two loops; a one-off build, not kept).
      const __m512 divisor = _mm512_set1_ps(s), zero = _mm512_set1_ps(z), top = _mm512_set1_ps(255.f);
      const __m128i sign = _mm_set1_epi8(bias);
      for (; j + 16 <= k; j += 16) {
        __m512 v = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(xi + j), divisor), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        if (asymmetric) v = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(v, zero), _mm512_setzero_ps()), top);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(qi + j), _mm_xor_si128(_mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)), sign));
      }
#endif
      if (asymmetric) {
        for (; j < k; ++j) {
          const float v = std::min(std::max(std::nearbyint(xi[j] / s) + z, 0.f), 255.f);
          qi[j] = static_cast<int8_t>(static_cast<uint8_t>(static_cast<int32_t>(v)) ^ static_cast<uint8_t>(bias));
        }
      } else {
        for (; j < k; ++j) qi[j] = static_cast<int8_t>(static_cast<int8_t>(std::nearbyint(xi[j] / s)) ^ bias);
      }
      for (j = k; j < stride; ++j) qi[j] = 0;
    }
  });
}

// One row of oneDNN's int32 sums -> float(sum - zero point x column sum) x row scale x column scale (+ bias),
// the ATen sequence's operations in its order. Instantiated per case so each loop stays branch-free and vectorizes.
template <bool kZeroPoint, bool kBias>
inline void dequantize_row(const int32_t* a, int32_t z, const int32_t* ws, float s, const float* cs, const float* b, int64_t n,
                           float* y) {
  for (int64_t j = 0; j < n; ++j) {
    float v = static_cast<float>(kZeroPoint ? a[j] - z * ws[j] : a[j]) * s * cs[j];
    if constexpr (kBias) v += b[j];
    y[j] = v;
  }
}

// (tokens x in) float rows -> (tokens x out) float, then `epilogue` (an Activation) in the dequantization.
at::Tensor linear_rows(const at::Tensor& rows_in, int64_t levels, const at::Tensor& weight_t, const at::Tensor& scale,
                       const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& packed,
                       const std::optional<at::Tensor>& column_sum, int64_t epilogue) {
  const at::Tensor rows = rows_in.to(at::kFloat).contiguous();
  const int64_t m = rows.size(0), k = rows.size(1), n = weight_t.size(1);
  const at::Tensor column_scale = scale.to(at::kFloat).contiguous();
  TORCH_CHECK(column_scale.numel() == n, "per_token_int8_linear: one scale per output column expected");
  at::Tensor bias_f;
  if (bias.has_value() && bias->defined()) {
    bias_f = bias->to(at::kFloat).contiguous();
    TORCH_CHECK(bias_f.numel() == n, "per_token_int8_linear: one bias per output column expected");
  }
  const float* x = rows.data_ptr<float>();
  const float* cs = column_scale.data_ptr<float>();
  const float* b = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
  TORCH_CHECK(levels == kAsymmetricLevels || (levels >= 1 && levels <= 127),
              "per_token_int8_linear: levels must be 1-127 (symmetric) or 255 (asymmetric)");
  at::Tensor row_scale = at::empty({m}, rows.options());
  float* rs = row_scale.data_ptr<float>();
  at::Tensor row_zero = at::empty({m}, rows.options().dtype(at::kInt));
  int32_t* zp = row_zero.data_ptr<int32_t>();
  at::Tensor y = at::empty({m, n}, rows.options());

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
  const int64_t k4s = (k + 3) / 4, block_k4s = packed_k4s(k4s);
  const bool amx = kAmxBuilt && m >= kAmxMinRows && amx_allowed.load(std::memory_order_relaxed) && amx_permitted();
  if (packed.has_value() && packed->defined() && column_sum.has_value() && (amx || m <= kVnniMaxRows)) {
    TORCH_CHECK(packed->scalar_type() == at::kChar && packed->is_contiguous() && packed->dim() == 3 &&
                    packed->size(0) == (n + 63) / 64 && packed->size(1) == block_k4s && packed->size(2) == 256,
                "per_token_int8_linear: packed weights do not match weight_t (pack them with pack_weights)");
    TORCH_CHECK(column_sum->scalar_type() == at::kInt && column_sum->is_contiguous() && column_sum->numel() == n,
                "per_token_int8_linear: column_sum must hold weight_t's int32 column sums");
    // The tile GEMM runs whole 32-row steps over whole weight tiles: rows and inputs zero-padded to them.
    const int64_t padded = amx ? (m + 31) / 32 * 32 : m, row_bytes = (amx ? block_k4s : k4s) * 4;
    at::Tensor quantized = at::empty({padded, row_bytes}, rows.options().dtype(at::kChar));
    quantize_rows(x, m, k, row_bytes, levels, true, quantized.data_ptr<int8_t>(), rs, zp);
    std::memset(quantized.data_ptr<int8_t>() + m * row_bytes, 0, (padded - m) * row_bytes);
    const auto* u = reinterpret_cast<const uint8_t*>(quantized.data_ptr<int8_t>());
    if (amx) {
      amx_linear(u, m, block_k4s, packed->data_ptr<int8_t>(), column_sum->data_ptr<int32_t>(), n, rs, zp, cs, b, epilogue, y.data_ptr<float>());
    } else {
      vnni_linear(u, m, k4s, block_k4s, packed->data_ptr<int8_t>(), column_sum->data_ptr<int32_t>(), n, rs, zp, cs, b, epilogue,
                  y.data_ptr<float>());
    }
    return y;
  }
#endif

  at::Tensor quantized = at::empty({m, k}, rows.options().dtype(at::kChar));
  quantize_rows(x, m, k, k, levels, false, quantized.data_ptr<int8_t>(), rs, zp);
  const at::Tensor acc = at::_int_mm(quantized, weight_t);
  // Asymmetric rows: sum((q - 128) w) - (z - 128) x column sum, in int32 as the ATen sequence, but inside
  // the dequantization pass: as two whole-tensor ops (a product, a difference) it cost two m x n int32
  // temporaries and two more passes over memory, which left the batch-32 corpus of
  // scripts/bench_workloads.py behind ONNX Runtime on a CPU without AMX (0.85-0.89x; 1.26-1.40x after).
  at::Tensor sums;
  if (levels == kAsymmetricLevels)
    sums = column_sum.has_value() && column_sum->defined() ? column_sum->contiguous() : weight_t.sum(0, false, at::kInt);
  const int32_t* a = acc.data_ptr<int32_t>();
  const int32_t* ws = sums.defined() ? sums.data_ptr<int32_t>() : nullptr;
  float* out = y.data_ptr<float>();
  at::parallel_for(0, m, grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* yi = out + i * n;
      const int32_t z = ws != nullptr ? zp[i] : 0;
      if (ws != nullptr && b != nullptr) dequantize_row<true, true>(a + i * n, z, ws, rs[i], cs, b, n, yi);
      else if (ws != nullptr) dequantize_row<true, false>(a + i * n, z, ws, rs[i], cs, b, n, yi);
      else if (b != nullptr) dequantize_row<false, true>(a + i * n, z, ws, rs[i], cs, b, n, yi);
      else dequantize_row<false, false>(a + i * n, z, ws, rs[i], cs, b, n, yi);
      if (epilogue == kGelu) gelu_in_place(yi, n);
    }
  });
  return y;
}

// x's shape with the last dimension `out`.
std::vector<int64_t> output_shape(const at::Tensor& x, const at::Tensor& weight_t) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = weight_t.size(1);
  return shape;
}

// The layer's whole forward: (... x in) in any float dtype -> (... x out) in the same dtype, so a trace
// holds one node per layer instead of the reshapes and casts around it.
at::Tensor per_token_int8_linear(const at::Tensor& x, int64_t levels, const at::Tensor& weight_t, const at::Tensor& scale,
                                 const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& packed,
                                 const std::optional<at::Tensor>& column_sum, int64_t activation) {
  TORCH_CHECK(x.dim() >= 1 && weight_t.dim() == 2 && x.size(-1) == weight_t.size(0),
              "per_token_int8_linear: the input's last dimension and weight_t (in x out) do not match");
  TORCH_CHECK(weight_t.scalar_type() == at::kChar, "per_token_int8_linear: weight_t must be int8");
  TORCH_CHECK(activation == kNone || activation == kGelu, "per_token_int8_linear: activation must be 0 (none) or 1 (GELU)");
  const at::Tensor rows = x.reshape({-1, x.size(-1)});
  const bool gelu_after = activation == kGelu && rows.size(0) > kEpilogueGeluMaxRows;  // then a pass after the GEMM
  at::Tensor y = linear_rows(rows, levels, weight_t, scale, bias, packed, column_sum, gelu_after ? kNone : activation);
  if (gelu_after) gelu_rows(y);
  y = y.view(output_shape(x, weight_t));
  return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}

// y = LayerNorm(y + residual) over the last dimension, in place, on contiguous float32 tensors: ATen's
// CPU LayerNorm steps (its RowwiseMoments, rstd = 1 / sqrt(variance + eps) in float, then
// (x - mean) * rstd * weight + bias with the last multiply-add fused, as torch's build gives it). Not
// bit for bit ATen's: its row moments round differently there in the last bit (how torch's build
// compiles them could not be reproduced here), so a model using this agrees with the unfused one to
// float rounding. Unlike ATen's, rows are split across threads only when there are many: ATen wakes
// the second thread for even 8 rows, which is most of what this saves at batch-1 request sizes.
void add_layer_norm_rows(at::Tensor& y, const at::Tensor& residual, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  using Vec = at::vec::Vectorized<float>;
  const int64_t n = y.size(-1), m = y.numel() / std::max<int64_t>(n, 1);
  float* out = y.data_ptr<float>();
  const float* r = residual.data_ptr<float>();
  const float* g = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  const float epsilon = static_cast<float>(eps);  // ATen casts eps to the tensor's type first
  at::parallel_for(0, m, grain(n), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* row = out + i * n;
      at::vec::map2<float>([](Vec a, Vec c) { return a + c; }, row, row, r + i * n, n);
      auto [mean, variance] = at::native::RowwiseMoments(row, n);
      const float rstd = 1.f / std::sqrt(variance + epsilon), shift = -mean;
      at::vec::map3<float>([rstd, shift](Vec x, Vec gamma, Vec beta) { return at::vec::fmadd((x + Vec(shift)) * Vec(rstd), gamma, beta); },
                           row, row, g, b, n);
    }
  });
}

// A transformer block's `LayerNorm(dense(x) + residual)` as one op: the layer's forward, then the add and
// the norm on its output while it is still in cache (float32 inputs only).
at::Tensor per_token_int8_linear_add_norm(const at::Tensor& x, int64_t levels, const at::Tensor& weight_t, const at::Tensor& scale,
                                          const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& packed,
                                          const std::optional<at::Tensor>& column_sum, const at::Tensor& residual,
                                          const at::Tensor& norm_weight, const at::Tensor& norm_bias, double eps) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && residual.scalar_type() == at::kFloat && norm_weight.scalar_type() == at::kFloat &&
                  norm_bias.scalar_type() == at::kFloat,
              "per_token_int8_linear_add_norm: float32 tensors expected");
  const int64_t n = weight_t.size(1);
  TORCH_CHECK(norm_weight.numel() == n && norm_bias.numel() == n, "per_token_int8_linear_add_norm: one norm weight and bias per output column expected");
  at::Tensor y = per_token_int8_linear(x, levels, weight_t, scale, bias, packed, column_sum, kNone).contiguous();
  TORCH_CHECK(residual.sizes() == y.sizes(), "per_token_int8_linear_add_norm: the residual must have the output's shape");
  add_layer_norm_rows(y, residual.contiguous(), norm_weight.contiguous(), norm_bias.contiguous(), eps);
  return y;
}

// weight_t (in x out int8) in the layout `vnni_linear` reads: [column block of 64][packed_k4s(ceil(in / 4))][64 columns]
// [4 inputs], zero-padded, so each column block's weights are one contiguous run. Empty where the build has no VNNI path (the caller then passes no packed weights).
at::Tensor pack_weights(const at::Tensor& weight_t) {
  if (!kVnni) return at::empty({0}, weight_t.options().dtype(at::kChar));
  const at::Tensor w = weight_t.contiguous();
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kChar, "pack_weights: weight_t must be a 2-d int8 tensor");
  const int64_t k = w.size(0), n = w.size(1), k4s = packed_k4s((k + 3) / 4), padded_n = (n + 63) / 64 * 64;
  at::Tensor out = at::zeros({padded_n / 64, k4s, 256}, w.options());
  const int8_t* src = w.data_ptr<int8_t>();
  int8_t* dst = out.data_ptr<int8_t>();
  for (int64_t i = 0; i < k; ++i)
    for (int64_t j = 0; j < n; ++j) dst[((j / 64) * k4s + i / 4) * 256 + (j % 64) * 4 + i % 4] = src[i * n + j];
  return out;
}

// Shapes only: lets torch.compile / torch.export trace through a model that uses the op.
at::Tensor per_token_int8_linear_meta(const at::Tensor& x, int64_t, const at::Tensor& weight_t, const at::Tensor&,
                                      const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                      const std::optional<at::Tensor>&, int64_t) {
  return at::empty(output_shape(x, weight_t), x.options());
}

at::Tensor per_token_int8_linear_add_norm_meta(const at::Tensor& x, int64_t, const at::Tensor& weight_t, const at::Tensor&,
                                               const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                               const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, double) {
  return at::empty(output_shape(x, weight_t), x.options());
}

}  // namespace

TORCH_LIBRARY(pdo_hub, m) {
  m.def("per_token_int8_linear(Tensor x, int levels, Tensor weight_t, Tensor scale, Tensor? bias, "
        "Tensor? packed=None, Tensor? column_sum=None, int activation=0) -> Tensor");
  m.def("per_token_int8_linear_add_norm(Tensor x, int levels, Tensor weight_t, Tensor scale, Tensor? bias, Tensor? packed, "
        "Tensor? column_sum, Tensor residual, Tensor norm_weight, Tensor norm_bias, float eps) -> Tensor");
  m.def("pack_weights(Tensor weight_t) -> Tensor");
  m.def("allow_amx(bool allowed) -> bool", &allow_amx);
  m.def("gemm_limits() -> int[]", &gemm_limits);
}
TORCH_LIBRARY_IMPL(pdo_hub, CPU, m) {
  m.impl("per_token_int8_linear", &per_token_int8_linear);
  m.impl("per_token_int8_linear_add_norm", &per_token_int8_linear_add_norm);
  m.impl("pack_weights", &pack_weights);
}
TORCH_LIBRARY_IMPL(pdo_hub, Meta, m) {
  m.impl("per_token_int8_linear", &per_token_int8_linear_meta);
  m.impl("per_token_int8_linear_add_norm", &per_token_int8_linear_add_norm_meta);
}
