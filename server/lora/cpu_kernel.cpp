// The int8 slot bank's LoRA term on the CPU, one call per layer group: `cameo::lora_int8`.
//
// Contract (server/lora/cpu_kernel.py builds, loads and documents it): for x (B, T, in) in
// bfloat16 or float32 and a group of P projections sharing that input, returns (B, T, sum of
// the projections' out) in x's dtype, where token t of row b gets, for each projection p,
//     (x[b, t] @ A_p[s]^T * scale_p[s]) @ B_p[s]^T,  s = slots[b],
// read from the bank's two flat storages (`codes` int8, `scales` float32) at the places
// `layout` names, up to the slot's real rank (`ranks[s]`; slot 0, the base, gives zeros).
// Accumulation is float32. Built with the compiler flags of this CPU (AVX-512, AVX2+FMA, or
// plain C++ where neither is on); nothing here allocates besides the output and per-thread rows.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace {

// One projection's place in the flat storages: its B as (S, r, out) rows `b_rank` apart and
// `b_slot` per slot, its scales as (S, r) rows `scale_slot` apart.
struct Part {
  int64_t b_offset, out, b_slot, b_rank, scale_offset, scale_slot;
};

// The group's A, (S, P * r, in) rows `a_rank` apart and `a_slot` per slot, and its parts.
struct Layout {
  int64_t a_offset, a_slot, a_rank, rank;
  std::vector<Part> parts;
  int64_t out = 0;
};

constexpr int64_t kHeader = 4, kPartFields = 6;

Layout parse(at::IntArrayRef values) {
  TORCH_CHECK(values.size() > kHeader && (values.size() - kHeader) % kPartFields == 0,
              "lora_int8: layout holds 4 integers, then 6 per projection");
  Layout layout{values[0], values[1], values[2], values[3], {}};
  for (size_t i = kHeader; i < values.size(); i += kPartFields) {
    layout.parts.push_back({values[i], values[i + 1], values[i + 2], values[i + 3],
                            values[i + 4], values[i + 5]});
    layout.out += values[i + 1];
  }
  return layout;
}

#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
using Vec = __m512;
inline Vec zero() { return _mm512_setzero_ps(); }
inline Vec load(const float* p) { return _mm512_loadu_ps(p); }
inline Vec broadcast(float v) { return _mm512_set1_ps(v); }
inline void store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
inline Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
inline float sum(Vec v) { return _mm512_reduce_add_ps(v); }
inline Vec load_codes(const int8_t* p) {  // 16 int8 codes -> 16 float32
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int64_t kLanes = 8;
using Vec = __m256;
inline Vec zero() { return _mm256_setzero_ps(); }
inline Vec load(const float* p) { return _mm256_loadu_ps(p); }
inline Vec broadcast(float v) { return _mm256_set1_ps(v); }
inline void store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
inline Vec fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
inline float sum(Vec v) {
  __m128 half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  half = _mm_add_ps(half, _mm_movehl_ps(half, half));
  return _mm_cvtss_f32(_mm_add_ss(half, _mm_movehdup_ps(half)));
}
inline Vec load_codes(const int8_t* p) {  // 8 int8 codes -> 8 float32
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
#else
constexpr int64_t kLanes = 0;  // no vector path: the scalar loops below do everything
#endif

// h[j] = A[j, :n] . x for `rows` rows of A, `stride` apart; four rows share each load of x.
void shrink(const int8_t* a, int64_t stride, int64_t rows, const float* x, int64_t n, float* h) {
  int64_t j = 0;
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
  const int64_t vector_end = n - n % kLanes;
  for (; j + 4 <= rows; j += 4) {
    const int8_t* a0 = a + j * stride;
    Vec s0 = zero(), s1 = zero(), s2 = zero(), s3 = zero();
    for (int64_t k = 0; k < vector_end; k += kLanes) {
      const Vec xv = load(x + k);
      s0 = fma(load_codes(a0 + k), xv, s0);
      s1 = fma(load_codes(a0 + stride + k), xv, s1);
      s2 = fma(load_codes(a0 + 2 * stride + k), xv, s2);
      s3 = fma(load_codes(a0 + 3 * stride + k), xv, s3);
    }
    float partial[4] = {sum(s0), sum(s1), sum(s2), sum(s3)};
    for (int64_t k = vector_end; k < n; ++k)
      for (int q = 0; q < 4; ++q) partial[q] += static_cast<float>(a0[q * stride + k]) * x[k];
    std::copy(partial, partial + 4, h + j);
  }
#endif
  for (; j < rows; ++j) {
    float total = 0.f;
    for (int64_t k = 0; k < n; ++k) total += static_cast<float>(a[j * stride + k]) * x[k];
    h[j] = total;
  }
}

// y[:n] = sum over j < rows of h[j] * B[j, :n], B's rows `stride` apart.
void expand(const int8_t* b, int64_t stride, int64_t rows, const float* h, int64_t n, float* y) {
  int64_t o = 0;
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
  for (; o + kLanes <= n; o += kLanes) {
    Vec acc = zero();
    for (int64_t j = 0; j < rows; ++j) acc = fma(broadcast(h[j]), load_codes(b + j * stride + o), acc);
    store(y + o, acc);
  }
#endif
  for (; o < n; ++o) {
    float total = 0.f;
    for (int64_t j = 0; j < rows; ++j) total += h[j] * static_cast<float>(b[j * stride + o]);
    y[o] = total;
  }
}

// Ask for `bytes` from `p` on in L2, one line at a time, without waiting for them.
void prefetch(const int8_t* p, int64_t bytes) {
  for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(p + i, 0, 2);
}

// Every code `token_term` will read for `slot` up to `rank`: A's rows, then each B's.
void prefetch_slot(const Layout& layout, const int8_t* codes, int64_t slot, int64_t rank) {
  const int64_t parts = static_cast<int64_t>(layout.parts.size());
  const int8_t* a_slot = codes + layout.a_offset + slot * layout.a_slot;
  for (int64_t p = 0; p < parts; ++p)
    prefetch(a_slot + p * layout.rank * layout.a_rank, rank * layout.a_rank);
  for (const Part& part : layout.parts)
    prefetch(codes + part.b_offset + slot * part.b_slot, rank * part.b_rank);
}

// One token's term, (out,) float32, into y; xf is the token's input in float32.
void token_term(const Layout& layout, const int8_t* codes, const float* scales, int64_t slot,
                int64_t rank, const float* xf, int64_t d_in, float* h, float* y) {
  const int8_t* a_slot = codes + layout.a_offset + slot * layout.a_slot;
  for (size_t p = 0; p < layout.parts.size(); ++p) {
    const Part& part = layout.parts[p];
    float* hp = h + p * layout.rank;  // (rank,) this projection's x @ A^T
    shrink(a_slot + p * layout.rank * layout.a_rank, layout.a_rank, rank, xf, d_in, hp);
    const float* scale = scales + part.scale_offset + slot * part.scale_slot;
    for (int64_t j = 0; j < rank; ++j) hp[j] *= scale[j];
    expand(codes + part.b_offset + slot * part.b_slot, part.b_rank, rank, hp, part.out, y);
    y += part.out;
  }
}

template <typename T>
void run(const Layout& layout, const at::Tensor& x, const int8_t* codes, const float* scales,
         const int64_t* slots, const int32_t* ranks, int64_t num_slots, at::Tensor& out) {
  const int64_t width = x.size(1), d_in = x.size(2), tokens = x.size(0) * width;
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, tokens, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> xf(d_in), h(layout.parts.size() * layout.rank), y(layout.out);
    for (int64_t token = begin; token < end; ++token) {
      const int64_t slot = slots[token / width];
      TORCH_CHECK(slot >= 0 && slot < num_slots, "lora_int8: slot ", slot, " out of range");
      const int64_t rank = slot == 0 ? 0 : std::min<int64_t>(ranks[slot], layout.rank);
      if (token + 1 < end) {  // the next token's codes load while this one computes
        const int64_t next = slots[(token + 1) / width];
        if (next != slot && next > 0 && next < num_slots)
          prefetch_slot(layout, codes, next, std::min<int64_t>(ranks[next], layout.rank));
      }
      if (rank == 0) {
        std::fill(y.begin(), y.end(), 0.f);
      } else {
        std::transform(xp + token * d_in, xp + (token + 1) * d_in, xf.begin(),
                       [](T v) { return static_cast<float>(v); });
        token_term(layout, codes, scales, slot, rank, xf.data(), d_in, h.data(), y.data());
      }
      std::transform(y.begin(), y.end(), op + token * layout.out,
                     [](float v) { return static_cast<T>(v); });
    }
  });
}

at::Tensor lora_int8(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scales,
                     const at::Tensor& slots, const at::Tensor& ranks, at::IntArrayRef layout) {
  TORCH_CHECK(x.dim() == 3, "lora_int8: x is (B, T, in)");
  TORCH_CHECK(codes.scalar_type() == at::kChar && codes.dim() == 1 && codes.is_contiguous(),
              "lora_int8: codes is the bank's flat int8 storage");
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.dim() == 1 && scales.is_contiguous(),
              "lora_int8: scales is the bank's flat float32 storage");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.is_contiguous() &&
                  slots.numel() == x.size(0), "lora_int8: slots is (B,) int64");
  TORCH_CHECK(ranks.scalar_type() == at::kInt && ranks.is_contiguous(),
              "lora_int8: ranks is (S,) int32");
  const Layout parsed = parse(layout);
  const at::Tensor input = x.contiguous();
  at::Tensor out = at::empty({x.size(0), x.size(1), parsed.out}, x.options());
  const auto* codes_p = codes.data_ptr<int8_t>();
  const auto* scales_p = scales.data_ptr<float>();
  if (x.scalar_type() == at::kBFloat16) {
    run<c10::BFloat16>(parsed, input, codes_p, scales_p, slots.data_ptr<int64_t>(),
                       ranks.data_ptr<int32_t>(), ranks.numel(), out);
  } else {
    TORCH_CHECK(x.scalar_type() == at::kFloat, "lora_int8: x is bfloat16 or float32");
    run<float>(parsed, input, codes_p, scales_p, slots.data_ptr<int64_t>(),
               ranks.data_ptr<int32_t>(), ranks.numel(), out);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(cameo, m) {
  m.def("lora_int8(Tensor x, Tensor codes, Tensor scales, Tensor slots, Tensor ranks, "
        "int[] layout) -> Tensor");
}

TORCH_LIBRARY_IMPL(cameo, CPU, m) { m.impl("lora_int8", &lora_int8); }
