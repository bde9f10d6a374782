// Weight-only int4 and int8 matmuls for x86-64 CPUs with AVX2 and FMA, as the torch operators
// `cameo::int4_linear` and `cameo::int8_linear` (server/model/int_dot.py builds and loads them).
//
// Contract: y = x @ W.T for a float32 input x (M, K) and a weight W (N, K) held as codes, in
// float32 (M, N). The input is quantized on the fly, per row in groups of 32 columns, to int8
// codes with one scale per group (absmax / 127), and each group's dot product with the weight
// codes is summed in integers (`maddubs`: 32 products in two instructions), then scaled in
// float. That is llama.cpp's Q4 x Q8 scheme; it cost about 0.5% relative error on a layer's
// output against the exact product with the same weight codes (random weights and inputs, an
// ad-hoc measurement; tests/model/test_int_dot.py bounds it by half a step of every group).
//   int4: codes (N, K/2) uint8 in the layout below, two codes (0..15) per byte; scales (N, K/32)
//         and mins (N, K/32) float32, so that W[n, 32g + i] = code * scale[n, g] + min[n, g].
//   int8: codes (N, K) int8 in -127..127 in the layout below, and scales (N,) float32:
//         W[n, k] = code * scale[n].
// Layout: each row of codes is a sequence of 32-code vectors. Groups of 32 inputs go in blocks
// of 8 groups: vector t of a block holds inputs 4t..4t+3 of each of the block's 8 groups, group j
// at codes 4j..4j+3, so that after the integer products lane j of every vector sums group j.
// The groups after the last whole block follow in order, one vector each. int4 packs two
// vectors, 2p and 2p + 1, in 32 bytes: byte i holds code i of the first in its low nibble and
// code i of the second in its high one (one load and three operations give both); a last vector
// without a partner packs its 32 codes in 16 bytes: code i low, code 16 + i high.
// `server.model.int_dot` writes and reads these layouts (`to_layout`, `pack_int4`).
// It does not check the CPU: the caller loads it only where AVX2 and FMA run.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace {

constexpr int64_t kGroup = 32;  // inputs per quantization group
constexpr int64_t kBlock = 8;   // groups interleaved in one block (see the layout above)

inline float sum_lanes(__m256 v) {
  __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  half = _mm_add_ps(half, _mm_movehl_ps(half, half));
  half = _mm_add_ss(half, _mm_movehdup_ps(half));
  return _mm_cvtss_f32(half);
}

// Where the 4 inputs 4t..4t+3 of group g sit in a row's layout, counted in 4-byte words.
inline int64_t word_of(int64_t g, int64_t t, int64_t groups) {
  const int64_t blocked = groups / kBlock * kBlock;
  if (g < blocked) return ((g / kBlock) * kBlock + t) * 8 + g % kBlock;
  return g * 8 + t;
}

// The input as int8 codes in the weights' layout: for row m and group g, codes * step[m, g] ~ x,
// and sums[m, g] = step[m, g] * (sum of the group's codes), the group's sum as the codes give it
// (the int4 min term must see the same rounded input as the products, or the errors add up).
struct QuantizedInput {
  at::Tensor codes, steps, sums;  // (M, K) int8, (M, G) float32, (M, G) float32
};

QuantizedInput quantize_input(const at::Tensor& x) {
  const int64_t rows = x.size(0), cols = x.size(1), groups = cols / kGroup;
  QuantizedInput q{at::empty({rows, cols}, x.options().dtype(at::kChar)),
                   at::empty({rows, groups}, x.options()), at::empty({rows, groups}, x.options())};
  const float* in = x.data_ptr<float>();
  int32_t* words = reinterpret_cast<int32_t*>(q.codes.data_ptr<int8_t>());
  float* steps = q.steps.data_ptr<float>();
  float* sums = q.sums.data_ptr<float>();
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t m = 0; m < rows; ++m) {
    for (int64_t g = 0; g < groups; ++g) {
      const float* p = in + m * cols + g * kGroup;
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
      // 4 x 8 int32 to 32 int8; the packs interleave 128-bit lanes, the permute restores order
      const __m256i pairs = _mm256_packs_epi16(_mm256_packs_epi32(n[0], n[1]), _mm256_packs_epi32(n[2], n[3]));
      alignas(32) int32_t group_words[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(group_words),
                         _mm256_permutevar8x32_epi32(pairs, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
      for (int t = 0; t < 8; ++t) words[m * cols / 4 + word_of(g, t, groups)] = group_words[t];
      const __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
      const __m128i t2 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0x4E));
      const __m128i t1 = _mm_add_epi32(t2, _mm_shuffle_epi32(t2, 0xB1));
      steps[m * groups + g] = step;
      sums[m * groups + g] = step * static_cast<float>(_mm_cvtsi128_si32(t1));
    }
  }
  return q;
}

// 4-bit codes: 16 bytes per 32 codes, unsigned 0..15, maddubs' unsigned operand as they are.
// 16 products of at most 15 * 127 fit int16, so a block's 8 vectors are summed in int16.
struct Int4Codes {
  static constexpr int64_t kBytes = 16;
  static constexpr bool kInt16Sums = true;
  static __m256i load(const uint8_t* p) {  // a vector without a partner
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m128i nibble = _mm_set1_epi8(0x0F);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), nibble), _mm_and_si128(raw, nibble));
  }
  static void load_pair(const uint8_t* p, __m256i& first, __m256i& second) {
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    first = _mm256_and_si256(raw, nibble);
    second = _mm256_and_si256(_mm256_srli_epi16(raw, 4), nibble);
  }
  static __m256i products(__m256i w, __m256i x) { return _mm256_maddubs_epi16(w, x); }
};

// 8-bit codes: 32 bytes per 32 codes, signed; maddubs takes |w| and x with w's sign. Two
// products reach 2 * 127 * 127, so each vector's pairs are widened to int32 at once.
struct Int8Codes {
  static constexpr int64_t kBytes = 32;
  static constexpr bool kInt16Sums = false;
  static __m256i load(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static void load_pair(const uint8_t* p, __m256i& first, __m256i& second) {
    first = load(p);
    second = load(p + kBytes);
  }
  static __m256i products(__m256i w, __m256i x) {
    return _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
  }
};

struct Operands {
  const uint8_t* codes;   // (N, G * Codes::kBytes)
  const float* scales;    // scale of (n, g) at scales[n * scale_row + g * scale_group]
  int64_t scale_row, scale_group;
  const float* mins;      // (N, G) or null
  const int8_t* x;        // (M, K), in the weights' layout
  const float* steps;     // (M, G)
  const float* sums;      // (M, G)
  float* out;             // (M, N)
  int64_t cols, groups, outputs;
};

template <typename Codes>
inline const uint8_t* codes_of(const Operands& o, int64_t n, int64_t v) {
  return o.codes + n * o.groups * Codes::kBytes + v * Codes::kBytes;
}

template <typename Codes>
inline __m256i accumulate(__m256i sums, __m256i products, __m256i ones) {
  return Codes::kInt16Sums ? _mm256_add_epi16(sums, products)
                           : _mm256_add_epi32(sums, _mm256_madd_epi16(products, ones));
}

inline __m256i input_of(const Operands& o, int64_t m, int64_t v) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(o.x + m * o.cols + v * kGroup));
}

inline __m256 scales_of(const Operands& o, int64_t n, int64_t g) {  // groups g..g+7
  return o.scale_group == 0 ? _mm256_set1_ps(o.scales[n * o.scale_row])
                            : _mm256_loadu_ps(o.scales + n * o.scale_row + g);
}

// Outputs n .. n+NB-1 of rows m .. m+MB-1. In a block, lane j of every vector belongs to group
// j of the block, so a block's integer sums need no horizontal add: one conversion and one
// multiply-add per block scale all 8 groups at once. Groups past the last whole block are
// summed one by one.
template <typename Codes, int NB, int MB>
inline void tile(const Operands& o, int64_t n, int64_t m) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[NB][MB];
  for (int a = 0; a < NB; ++a)
    for (int b = 0; b < MB; ++b) acc[a][b] = _mm256_setzero_ps();
  const int64_t blocked = o.groups / kBlock * kBlock;
  for (int64_t g = 0; g < blocked; g += kBlock) {
    __m256i sums[NB][MB];
    for (int a = 0; a < NB; ++a)
      for (int b = 0; b < MB; ++b) sums[a][b] = _mm256_setzero_si256();
    for (int64_t v = g; v < g + kBlock; v += 2) {
      for (int a = 0; a < NB; ++a) {
        __m256i first, second;
        Codes::load_pair(codes_of<Codes>(o, n + a, v), first, second);
        for (int b = 0; b < MB; ++b) {
          sums[a][b] = accumulate<Codes>(sums[a][b], Codes::products(first, input_of(o, m + b, v)), ones);
          sums[a][b] = accumulate<Codes>(sums[a][b], Codes::products(second, input_of(o, m + b, v + 1)), ones);
        }
      }
    }
    for (int b = 0; b < MB; ++b) {
      const __m256 steps = _mm256_loadu_ps(o.steps + (m + b) * o.groups + g);
      for (int a = 0; a < NB; ++a) {
        const __m256i whole = Codes::kInt16Sums ? _mm256_madd_epi16(sums[a][b], ones) : sums[a][b];
        acc[a][b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(whole), _mm256_mul_ps(scales_of(o, n + a, g), steps),
                                    acc[a][b]);
        if (o.mins != nullptr)
          acc[a][b] = _mm256_fmadd_ps(_mm256_loadu_ps(o.mins + (n + a) * o.groups + g),
                                      _mm256_loadu_ps(o.sums + (m + b) * o.groups + g), acc[a][b]);
      }
    }
  }
  const int64_t paired = o.groups / 2 * 2;  // vectors with a partner (see the layout)
  for (int64_t g = blocked; g < o.groups; ++g) {
    for (int a = 0; a < NB; ++a) {
      __m256i w[2];
      if (g < paired) {
        Codes::load_pair(codes_of<Codes>(o, n + a, g - g % 2), w[0], w[1]);
      } else {
        w[g % 2] = Codes::load(codes_of<Codes>(o, n + a, g));
      }
      for (int b = 0; b < MB; ++b) {
        const __m256i dots = _mm256_madd_epi16(Codes::products(w[g % 2], input_of(o, m + b, g)), ones);
        const float scale = o.scales[(n + a) * o.scale_row + g * o.scale_group] * o.steps[(m + b) * o.groups + g];
        acc[a][b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), _mm256_set1_ps(scale), acc[a][b]);
      }
    }
  }
  for (int a = 0; a < NB; ++a) {
    for (int b = 0; b < MB; ++b) {
      float y = sum_lanes(acc[a][b]);
      if (o.mins != nullptr) {
        for (int64_t g = blocked; g < o.groups; ++g)
          y += o.mins[(n + a) * o.groups + g] * o.sums[(m + b) * o.groups + g];
      }
      o.out[(m + b) * o.outputs + n + a] = y;
    }
  }
}

// All rows for outputs n .. n+NB-1: tiles of 4 rows by one output, then 2 by 2, then 1 by 4
// (as many accumulators as the 16 vector registers hold).
template <typename Codes, int NB>
inline void all_rows(const Operands& o, int64_t n, int64_t rows) {
  int64_t m = 0;
  for (; m + 4 <= rows; m += 4)
    for (int a = 0; a < NB; ++a) tile<Codes, 1, 4>(o, n + a, m);
  for (; m + 2 <= rows; m += 2) {
    if constexpr (NB % 2 == 0) {
      for (int a = 0; a < NB; a += 2) tile<Codes, 2, 2>(o, n + a, m);
    } else {
      tile<Codes, NB, 2>(o, n, m);
    }
  }
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
  constexpr int64_t kOutputs = 4;  // outputs per task
  const int64_t tasks = outputs / kOutputs;
  at::parallel_for(0, tasks, 8, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) all_rows<Codes, kOutputs>(o, task * kOutputs, rows);
  });
  for (int64_t n = tasks * kOutputs; n < outputs; ++n) all_rows<Codes, 1>(o, n, rows);
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
