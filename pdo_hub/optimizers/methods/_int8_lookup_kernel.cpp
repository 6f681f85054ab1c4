// pdo_hub::int8_lookup: an elementwise function of an 8-bit quantized tensor as one table lookup.
//
// torch.ao has no int8 SiLU, GELU or Mish: between two int8 layers such a function ran as dequantize ->
// float function -> quantize, three passes over a float copy of the tensor. With the input's and
// output's scales fixed, the output level is a function of the input level alone, so `_int8_lookup`
// computes the 256 output levels once with those same ATen ops and this op maps each byte through them:
// bit-identical to the three ops, one pass over bytes. The output keeps the input's shape and memory
// format and takes the given scale and zero point.
//
// pdo_hub::int8_scale_channels: quantized::mul of an (N, C, H, W) int8 map by an (N, C, 1, 1) int8 gate.
//
// Built into the same library as the per-token int8 op (`_token_int8_kernel.py`).
// Per-operator headers, not <ATen/ATen.h>: parsing every operator's declarations was most of the build.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/core/Tensor.h>
#include <ATen/ops/_empty_affine_quantized.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// target[i] = levels[source[i]] for i in [0, n).
void look_up(const uint8_t* __restrict source, uint8_t* __restrict target, int64_t n, const uint8_t* __restrict levels) {
  int64_t i = 0;
#if defined(__AVX512VBMI__) && defined(__AVX512BW__)
  // 64 bytes at a time: two 128-entry byte permutes, chosen between by each byte's top bit (about 5x the
  // scalar loop's speed, which is bound by one table load per byte).
  const __m512i t0 = _mm512_loadu_si512(levels), t1 = _mm512_loadu_si512(levels + 64);
  const __m512i t2 = _mm512_loadu_si512(levels + 128), t3 = _mm512_loadu_si512(levels + 192);
  for (; i < n; i += 64) {
    const __mmask64 live = n - i >= 64 ? ~__mmask64(0) : (__mmask64(1) << (n - i)) - 1;
    const __m512i index = _mm512_maskz_loadu_epi8(live, source + i);
    const __m512i low = _mm512_permutex2var_epi8(t0, index, t1), high = _mm512_permutex2var_epi8(t2, index, t3);
    _mm512_mask_storeu_epi8(target + i, live, _mm512_mask_blend_epi8(_mm512_movepi8_mask(index), low, high));
  }
#endif
  for (; i < n; ++i) target[i] = levels[source[i]];
}

at::Tensor int8_lookup(const at::Tensor& x, const at::Tensor& table, double scale, int64_t zero_point) {
  TORCH_CHECK(x.scalar_type() == at::kQUInt8, "int8_lookup: the input must be quint8, got ", x.scalar_type());
  TORCH_CHECK(table.scalar_type() == at::kByte && table.numel() == 256 && table.is_contiguous(),
              "int8_lookup: the table must be 256 contiguous uint8 values");
  const auto format = x.suggest_memory_format();
  const at::Tensor input = x.contiguous(format);
  at::Tensor out = at::_empty_affine_quantized(input.sizes(), input.options(), scale, zero_point, format);
  const uint8_t* levels = table.data_ptr<uint8_t>();
  const auto* source = reinterpret_cast<const uint8_t*>(input.data_ptr());
  auto* target = reinterpret_cast<uint8_t*>(out.data_ptr());
  // Both tensors are dense in the same layout, so element i of one is element i of the other.
  at::parallel_for(0, input.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
    look_up(source + begin, target + begin, end - begin, levels);
  });
  return out;
}

// out = requantize((x - zx) * (s - zs)) per element, where s is constant over each channel's map (a
// squeeze-excitation gate); torch.ao's quantized::mul did this broadcast in a slow elementwise loop.
// The formula is quantized::mul's, in its order: multiplier = (x scale * s scale) * (1 / out scale) in
// float, then zero point + round-to-nearest-even(float(product) * multiplier), saturated to [0, 255].
void scale_channels(const uint8_t* __restrict x, uint8_t* __restrict out, const int32_t* __restrict gate, int64_t channels,
                    int32_t x_zero, float multiplier, int32_t out_zero) {
  int64_t c = 0;
#if defined(__AVX512F__) && defined(__AVX512BW__)
  const __m512i xz = _mm512_set1_epi32(x_zero), oz = _mm512_set1_epi32(out_zero);
  const __m512 mult = _mm512_set1_ps(multiplier);
  for (; c + 16 <= channels; c += 16) {
    const __m512i values = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + c))), xz);
    const __m512i product = _mm512_mullo_epi32(values, _mm512_loadu_si512(gate + c));
    __m512i level = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_cvtepi32_ps(product), mult)), oz);
    level = _mm512_max_epi32(level, _mm512_setzero_si512());
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + c), _mm512_cvtusepi32_epi8(level));
  }
#endif
  for (; c < channels; ++c) {
    const int64_t level = out_zero + static_cast<int64_t>(std::nearbyint(static_cast<float>((x[c] - x_zero) * gate[c]) * multiplier));
    out[c] = static_cast<uint8_t>(std::clamp<int64_t>(level, 0, 255));
  }
}

at::Tensor int8_scale_channels(const at::Tensor& x, const at::Tensor& gate, double scale, int64_t zero_point) {
  TORCH_CHECK(x.scalar_type() == at::kQUInt8 && gate.scalar_type() == at::kQUInt8, "int8_scale_channels: quint8 inputs only");
  TORCH_CHECK(x.dim() == 4 && gate.dim() == 4 && gate.size(2) == 1 && gate.size(3) == 1 && gate.size(1) == x.size(1) &&
                  (gate.size(0) == x.size(0) || gate.size(0) == 1),
              "int8_scale_channels: the gate must be (N or 1, C, 1, 1) for an (N, C, H, W) input");
  const at::Tensor input = x.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t batch = x.size(0), channels = x.size(1), pixels = x.size(2) * x.size(3);
  at::Tensor out = at::_empty_affine_quantized(input.sizes(), input.options(), scale, zero_point, at::MemoryFormat::ChannelsLast);
  const float multiplier = static_cast<float>(x.q_scale()) * static_cast<float>(gate.q_scale()) * (1.0f / static_cast<float>(scale));
  // The gate's levels less its zero point, one row of channels per image, in one pass (no ATen ops: a
  // gate is small, and their dispatch cost showed on small maps).
  const at::Tensor gate_levels = gate.contiguous();
  const auto* gate_bytes = reinterpret_cast<const uint8_t*>(gate_levels.data_ptr());
  const int64_t gate_images = gate.size(0);
  const int32_t gate_zero = static_cast<int32_t>(gate.q_zero_point());
  std::vector<int32_t> gate_rows(gate_images * channels);
  for (int64_t i = 0; i < gate_images * channels; ++i) gate_rows[i] = static_cast<int32_t>(gate_bytes[i]) - gate_zero;
  const auto* source = reinterpret_cast<const uint8_t*>(input.data_ptr());
  auto* target = reinterpret_cast<uint8_t*>(out.data_ptr());
  const int32_t x_zero = static_cast<int32_t>(x.q_zero_point()), out_zero = static_cast<int32_t>(zero_point);
  // One task per pixel row of channels (channels-last: a pixel's channels are contiguous).
  at::parallel_for(0, batch * pixels, std::max<int64_t>(1, 16384 / std::max<int64_t>(channels, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int32_t* g = gate_rows.data() + (gate_images == 1 ? 0 : row / pixels) * channels;
      scale_channels(source + row * channels, target + row * channels, g, channels, x_zero, multiplier, out_zero);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pdo_hub, m) {
  m.def("int8_lookup(Tensor x, Tensor table, float scale, int zero_point) -> Tensor");
  m.def("int8_scale_channels(Tensor x, Tensor gate, float scale, int zero_point) -> Tensor");
}
TORCH_LIBRARY_IMPL(pdo_hub, QuantizedCPU, m) {
  m.impl("int8_lookup", &int8_lookup);
  m.impl("int8_scale_channels", &int8_scale_channels);
}
