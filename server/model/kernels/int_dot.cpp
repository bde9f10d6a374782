// Weight-only int4 and int8 matmuls for x86-64 CPUs with AVX2 and FMA, as the torch operators
// `cameo::int4_linear` and `cameo::int8_linear` (server/model/int_dot.py builds and loads them).
//
// Contract: y = x @ W.T for a float32 input x (M, K) and a weight W (N, K) held as codes, in
// float32 (M, N). The input is quantized on the fly, per row in groups of 32 columns, to int8
// codes with one scale per group (absmax / 127), and each group's dot product with the weight
// codes is summed in integers (`maddubs`: 32 products in two instructions), then scaled in
// float. That is llama.cpp's Q4 x Q8 scheme; it costs about 0.5% relative error on a layer's
// output against the exact product with the same weight codes (tests/model/test_int_dot.py).
//   int4: codes (N, K/2) uint8, byte j of group g holding the code (0..15) of input 32g + j in
//         its low nibble and of input 32g + 16 + j in its high nibble; scales (N, K/32) and
//         mins (N, K/32) float32, so that W[n, 32g + i] = code * scale[n, g] + min[n, g].
//   int8: codes (N, K) int8 in -127..127 and scales (N,) float32: W[n, k] = code * scale[n].
// It does not check the CPU: the caller loads it only where AVX2 and FMA run.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace {

constexpr int64_t kGroup = 32;

inline float sum_lanes(__m256 v) {
  __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  half = _mm_add_ps(half, _mm_movehl_ps(half, half));
  half = _mm_add_ss(half, _mm_movehdup_ps(half));
  return _mm_cvtss_f32(half);
}

// The input as int8 codes: for row m and group g, codes[m, 32g:32g+32] * step[m, g] ~ x, and
// sums[m, g] = step[m, g] * (sum of those codes), the group's sum as the codes give it (the
// int4 offset term must see the same rounded input as the products, or the errors add up).
struct QuantizedInput {
  at::Tensor codes, steps, sums;  // (M, K) int8, (M, G) float32, (M, G) float32
};

QuantizedInput quantize_input(const at::Tensor& x) {
  const int64_t rows = x.size(0), cols = x.size(1), groups = cols / kGroup;
  QuantizedInput q{at::empty({rows, cols}, x.options().dtype(at::kChar)),
                   at::empty({rows, groups}, x.options()), at::empty({rows, groups}, x.options())};
  const float* in = x.data_ptr<float>();
  int8_t* codes = q.codes.data_ptr<int8_t>();
  float* steps = q.steps.data_ptr<float>();
  float* sums = q.sums.data_ptr<float>();
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t i = 0; i < rows * groups; ++i) {
    const float* p = in + i * kGroup;  // (M, K) contiguous: group i of the flat input
    __m256 v[4];
    __m256 peak = _mm256_setzero_ps();
    for (int j = 0; j < 4; ++j) {
      v[j] = _mm256_loadu_ps(p + 8 * j);
      peak = _mm256_max_ps(peak, _mm256_andnot_ps(sign, v[j]));
    }
    __m128 top = _mm_max_ps(_mm256_castps256_ps128(peak), _mm256_extractf128_ps(peak, 1));
    top = _mm_max_ps(top, _mm_movehl_ps(top, top));
    top = _mm_max_ss(top, _mm_movehdup_ps(top));
    const float step = _mm_cvtss_f32(top) / 127.0f;
    const __m256 inverse = _mm256_set1_ps(step > 0.0f ? 1.0f / step : 0.0f);
    __m256i n[4];  // rounded to nearest (even), the CPU's default rounding
    for (int j = 0; j < 4; ++j) n[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], inverse));
    const __m256i total = _mm256_add_epi32(_mm256_add_epi32(n[0], n[1]), _mm256_add_epi32(n[2], n[3]));
    // pack 4 x 8 int32 to 32 int8; the packs interleave 128-bit lanes, the permute restores order
    const __m256i pairs = _mm256_packs_epi16(_mm256_packs_epi32(n[0], n[1]), _mm256_packs_epi32(n[2], n[3]));
    const __m256i ordered = _mm256_permutevar8x32_epi32(pairs, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(codes + i * kGroup), ordered);
    const __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
    const __m128i t2 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0x4E));
    const __m128i t1 = _mm_add_epi32(t2, _mm_shuffle_epi32(t2, 0xB1));
    steps[i] = step;
    sums[i] = step * static_cast<float>(_mm_cvtsi128_si32(t1));
  }
  return q;
}

// 4-bit codes: 16 bytes per group, unsigned 0..15, used as maddubs' unsigned operand as they are.
struct Int4Codes {
  static constexpr int64_t kBytes = 16;
  static __m256i load(const uint8_t* p) {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i nibble = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), nibble), _mm_and_si128(raw, nibble));
  }
  static __m256i magnitude(__m256i w) { return w; }
  static __m256i signed_input(__m256i, __m256i x) { return x; }
};

// 8-bit codes: 32 bytes per group, signed; maddubs takes |w| and x with w's sign.
struct Int8Codes {
  static constexpr int64_t kBytes = 32;
  static __m256i load(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static __m256i magnitude(__m256i w) { return _mm256_sign_epi8(w, w); }
  static __m256i signed_input(__m256i w, __m256i x) { return _mm256_sign_epi8(x, w); }
};

struct Operands {
  const uint8_t* codes;   // (N, groups * Codes::kBytes)
  const float* scales;    // scale of (n, g) at scales[n * scale_row + g * scale_group]
  int64_t scale_row, scale_group;
  const float* mins;      // (N, G) or null
  const int8_t* x;        // (M, K)
  const float* steps;     // (M, G)
  const float* sums;      // (M, G)
  float* out;             // (M, N)
  int64_t cols, groups, outputs;
};

// Outputs n .. n+NB-1 of rows m .. m+MB-1: each group's codes are read once for MB rows.
template <typename Codes, int NB, int MB>
inline void tile(const Operands& o, int64_t n, int64_t m) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[NB][MB];
  for (int a = 0; a < NB; ++a)
    for (int b = 0; b < MB; ++b) acc[a][b] = _mm256_setzero_ps();
  const int64_t row_bytes = o.groups * Codes::kBytes;
  for (int64_t g = 0; g < o.groups; ++g) {
    __m256i w[NB], magnitude[NB];
    for (int a = 0; a < NB; ++a) {
      w[a] = Codes::load(o.codes + (n + a) * row_bytes + g * Codes::kBytes);
      magnitude[a] = Codes::magnitude(w[a]);
    }
    for (int b = 0; b < MB; ++b) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(o.x + (m + b) * o.cols + g * kGroup));
      const float step = o.steps[(m + b) * o.groups + g];
      for (int a = 0; a < NB; ++a) {
        const __m256i products = _mm256_maddubs_epi16(magnitude[a], Codes::signed_input(w[a], x));
        const __m256 dots = _mm256_cvtepi32_ps(_mm256_madd_epi16(products, ones));  // 8 sums of 4
        const float scale = o.scales[(n + a) * o.scale_row + g * o.scale_group] * step;
        acc[a][b] = _mm256_fmadd_ps(dots, _mm256_set1_ps(scale), acc[a][b]);
      }
    }
  }
  for (int a = 0; a < NB; ++a) {
    for (int b = 0; b < MB; ++b) {
      float y = sum_lanes(acc[a][b]);
      if (o.mins != nullptr) {
        const float* mins = o.mins + (n + a) * o.groups;
        const float* sums = o.sums + (m + b) * o.groups;
        for (int64_t g = 0; g < o.groups; ++g) y += mins[g] * sums[g];
      }
      o.out[(m + b) * o.outputs + n + a] = y;
    }
  }
}

// Rows in tiles of 4, then 2, then 1, for NB outputs from n.
template <typename Codes, int NB>
inline void all_rows(const Operands& o, int64_t n, int64_t rows) {
  int64_t m = 0;
  for (; m + 4 <= rows; m += 4) {
    if constexpr (NB >= 2) {
      for (int a = 0; a < NB; a += 2) tile<Codes, 2, 4>(o, n + a, m);
    } else {
      tile<Codes, 1, 4>(o, n, m);
    }
  }
  for (; m + 2 <= rows; m += 2) tile<Codes, NB, 2>(o, n, m);
  for (; m < rows; ++m) tile<Codes, NB, 1>(o, n, m);
}

template <typename Codes>
at::Tensor matmul(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scales,
                  const float* mins, int64_t scale_row, int64_t scale_group) {
  const at::Tensor x = input.contiguous();
  const int64_t rows = x.size(0), cols = x.size(1), outputs = codes.size(0);
  const QuantizedInput q = quantize_input(x);
  at::Tensor out = at::empty({rows, outputs}, x.options());
  const Operands o{codes.data_ptr<uint8_t>(), scales.data_ptr<float>(), scale_row, scale_group, mins,
                   q.codes.data_ptr<int8_t>(), q.steps.data_ptr<float>(), q.sums.data_ptr<float>(),
                   out.data_ptr<float>(), cols, cols / kGroup, outputs};
  constexpr int64_t kBlock = 4;  // outputs per task
  const int64_t blocks = outputs / kBlock;
  at::parallel_for(0, blocks, 8, [&](int64_t first, int64_t last) {
    for (int64_t block = first; block < last; ++block) all_rows<Codes, kBlock>(o, block * kBlock, rows);
  });
  for (int64_t n = blocks * kBlock; n < outputs; ++n) all_rows<Codes, 1>(o, n, rows);
  return out;
}

void check_input(const at::Tensor& x, const at::Tensor& codes, int64_t bytes_per_group) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.device().is_cpu(),
              "input must be a 2-D float32 CPU tensor");
  TORCH_CHECK(x.size(1) % kGroup == 0, "input columns must be a multiple of 32");
  TORCH_CHECK(codes.dim() == 2 && codes.is_contiguous() &&
                  codes.size(1) == x.size(1) / kGroup * bytes_per_group,
              "codes must be contiguous (N, ", x.size(1) / kGroup * bytes_per_group, ")");
}

at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                       const at::Tensor& mins) {
  check_input(x, codes, Int4Codes::kBytes);
  TORCH_CHECK(codes.scalar_type() == at::kByte, "int4 codes must be uint8");
  const int64_t groups = x.size(1) / kGroup;
  for (const at::Tensor* t : {&scales, &mins})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->size(0) == codes.size(0) &&
                    t->size(1) == groups, "scales and mins must be contiguous float32 (N, K/32)");
  return matmul<Int4Codes>(x, codes, scales, mins.data_ptr<float>(), groups, 1);
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales) {
  check_input(x, codes, Int8Codes::kBytes);
  TORCH_CHECK(codes.scalar_type() == at::kChar, "int8 codes must be int8");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() &&
                  scales.numel() == codes.size(0), "scales must be contiguous float32 (N,)");
  return matmul<Int8Codes>(x, codes.view(at::kByte), scales, nullptr, 1, 0);
}

}  // namespace

TORCH_LIBRARY(cameo, m) {
  m.def("int4_linear(Tensor x, Tensor codes, Tensor scales, Tensor mins) -> Tensor");
  m.def("int8_linear(Tensor x, Tensor codes, Tensor scales) -> Tensor");
}

TORCH_LIBRARY_IMPL(cameo, CPU, m) {
  m.impl("int4_linear", &int4_linear);
  m.impl("int8_linear", &int8_linear);
}
