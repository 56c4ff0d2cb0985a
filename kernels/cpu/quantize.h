// Quantize float32 to u8/s8 and dequantize back, per tensor, with the reference's arithmetic:
// q = clamp(rint(x / scale) + zero_point, lo, hi) in float32 (NaN gives 0, as numpy's cast
// does on the hosts nimbus runs on), and x = f32(q - zero_point) * scale.
#pragma once

#include <cstddef>
#include <cstdint>

namespace nimbus::kernels {

// out[count] (uint8 when `unsigned_result`, else int8) from x[count].
void quantize(const float* x, std::size_t count, float scale, std::int32_t zero_point,
              bool unsigned_result, void* out, std::size_t threads);

// The same for `rows` runs of `count` elements, x_stride and out_stride elements apart, on the
// calling thread: a GEMM tile quantized while it is in cache.
void quantize_rows(const float* x, std::size_t rows, std::size_t count, std::size_t x_stride,
                   float scale, std::int32_t zero_point, bool unsigned_result, void* out,
                   std::size_t out_stride);

// The same for x in NCHW [batch, channels, pixels], written to out in NHWC [batch, pixels,
// channels] order: the layout an int8 convolution reads, so that the model's input is not
// transposed a second time.
void quantize_to_channels_last(const float* x, std::size_t batch, std::size_t channels,
                               std::size_t pixels, float scale, std::int32_t zero_point,
                               bool unsigned_result, void* out, std::size_t threads);

// out[count] float32 from q[count] (uint8 when `unsigned_input`, else int8).
void dequantize(const void* q, bool unsigned_input, std::size_t count, float scale,
                std::int32_t zero_point, float* out, std::size_t threads);

// The same with a scale and zero point per index of the last axis, of size `channels`
// (an embedding lookup's int8 rows, quantized per column).
void dequantize_channels(const void* q, bool unsigned_input, std::size_t rows,
                         std::size_t channels, const float* scales,
                         const std::int32_t* zero_points, float* out, std::size_t threads);

}  // namespace nimbus::kernels
