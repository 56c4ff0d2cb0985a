// Float 3x3 stride-1 convolutions by Winograd's F(2x2, 3x3) on the AVX-512 path: each 2x2 tile
// of output pixels comes from a 4x4 tile of input, transformed (V = B^T d B) into 16 values per
// channel; 16 GEMMs over the channels (M[xi] = V[xi] @ U[xi], U = G g G^T packed once) replace
// the 36 multiplies per output pair of a direct 3x3 by 16 per 4 outputs, 2.25 times fewer; the
// output transform (A^T m A) then adds the bias and residual and applies the activation.
// Tiles go block by block, each block's transformed inputs and products staying in L2.
//
// The result differs from the direct convolution's by rounding only (the transforms add and
// subtract a few terms and halve exactly; about 2e-7 relative), well inside the float path's
// 1e-4; an infinite input, which the transforms subtract from itself, can give NaN where the
// direct sum gives infinity.
#include "sconv_winograd.h"

#ifdef NIMBUS_X86_KERNELS

#include <algorithm>
#include <vector>

#include "sgemm_paths.h"
#include "vector_math_avx512.h"
#include "worker_pool.h"

namespace nimbus::kernels {
namespace {

constexpr std::size_t kPositions = 16;  // values of a transformed 4x4 tile
constexpr std::size_t kLanes = 16;
// Transformed inputs and products of a block: about this many bytes, in L2.
constexpr std::size_t kBlockBytes = 512 * 1024;
// Tiles per block: whole register tiles of the GEMM (12 rows), at least one.
constexpr std::size_t kTileQuantum = 12;
// Padding of the rows of V: rows a multiple of 4 KiB apart would share L1 sets.
constexpr std::size_t kRowPad = 16;

inline __mmask16 lanes(std::size_t count) {
    return count >= kLanes ? __mmask16(0xffff) : static_cast<__mmask16>((1u << count) - 1);
}

// The 2x2 output tiles of the images, numbered image by image, row-major within each.
struct Tiles {
    std::size_t rows;     // per image
    std::size_t columns;  // per image

    struct Position {
        std::size_t image;
        std::size_t oh;  // the tile's top left output pixel
        std::size_t ow;
    };
    Position position(std::size_t tile) const {
        const std::size_t within = tile % (rows * columns);
        return {tile / (rows * columns), 2 * (within / columns), 2 * (within % columns)};
    }
};

// V[xi][t] (channels c0 .. c0 + 16) of the 4x4 input tile whose top left is (top, left),
// zeros outside the image.
NIMBUS_AVX512F void transform_input(const float* image, const ConvGeometry& g,
                                            std::size_t top, std::size_t left, std::size_t c0,
                                            float* v, std::size_t position_stride) {
    const __mmask16 mask = lanes(g.channels - c0);
    __m512 d[4][4];
    for (std::size_t i = 0; i < 4; ++i) {
        const std::size_t ih = top + i;  // unsigned wrap-around: above the image is past it
        for (std::size_t j = 0; j < 4; ++j) {
            const std::size_t iw = left + j;
            d[i][j] = ih < g.height && iw < g.width
                          ? _mm512_maskz_loadu_ps(mask, image + (ih * g.width + iw) * g.channels + c0)
                          : _mm512_setzero_ps();
        }
    }
    __m512 t[4][4];  // B^T d
    for (std::size_t j = 0; j < 4; ++j) {
        t[0][j] = _mm512_sub_ps(d[0][j], d[2][j]);
        t[1][j] = _mm512_add_ps(d[1][j], d[2][j]);
        t[2][j] = _mm512_sub_ps(d[2][j], d[1][j]);
        t[3][j] = _mm512_sub_ps(d[1][j], d[3][j]);
    }
    for (std::size_t i = 0; i < 4; ++i) {  // (B^T d) B
        const __m512 row[4] = {_mm512_sub_ps(t[i][0], t[i][2]), _mm512_add_ps(t[i][1], t[i][2]),
                               _mm512_sub_ps(t[i][2], t[i][1]), _mm512_sub_ps(t[i][1], t[i][3])};
        for (std::size_t j = 0; j < 4; ++j) {
            _mm512_mask_storeu_ps(v + (i * 4 + j) * position_stride + c0, mask, row[j]);
        }
    }
}

// The 2x2 outputs (channels o0 .. o0 + 16) of the products m[xi] of one tile, with the bias,
// residual and a clamping activation; `rows` x `columns` of them lie inside the image.
NIMBUS_AVX512F void transform_output(const float* m, std::size_t position_stride,
                                             std::size_t o0, std::size_t outputs,
                                             const SgemmEpilogue& epilogue, float* out,
                                             const float* residual, std::size_t row_stride,
                                             std::size_t rows, std::size_t columns) {
    const __mmask16 mask = lanes(outputs - o0);
    __m512 p[4][4];
    for (std::size_t xi = 0; xi < kPositions; ++xi) {
        p[xi / 4][xi % 4] = _mm512_maskz_loadu_ps(mask, m + xi * position_stride + o0);
    }
    __m512 t[2][4];  // A^T m
    for (std::size_t j = 0; j < 4; ++j) {
        t[0][j] = _mm512_add_ps(_mm512_add_ps(p[0][j], p[1][j]), p[2][j]);
        t[1][j] = _mm512_sub_ps(_mm512_sub_ps(p[1][j], p[2][j]), p[3][j]);
    }
    const __m512 bias = epilogue.bias != nullptr ? _mm512_maskz_loadu_ps(mask, epilogue.bias + o0)
                                                 : _mm512_setzero_ps();
    const bool relu = epilogue.activation == Activation::relu ||
                      epilogue.activation == Activation::relu6;
    for (std::size_t i = 0; i < rows; ++i) {  // (A^T m) A
        const __m512 y[2] = {
            _mm512_add_ps(_mm512_add_ps(t[i][0], t[i][1]), t[i][2]),
            _mm512_sub_ps(_mm512_sub_ps(t[i][1], t[i][2]), t[i][3])};
        for (std::size_t j = 0; j < columns; ++j) {
            const std::size_t offset = i * row_stride + j * outputs + o0;
            __m512 value = _mm512_add_ps(y[j], bias);
            if (residual != nullptr) {
                value = _mm512_add_ps(value, _mm512_maskz_loadu_ps(mask, residual + offset));
            }
            if (relu) {
                value = _mm512_max_ps(_mm512_setzero_ps(), value);
            }
            if (epilogue.activation == Activation::relu6) {
                value = _mm512_min_ps(_mm512_set1_ps(6.0f), value);
            }
            _mm512_mask_storeu_ps(out + offset, mask, value);
        }
    }
}

// One block of tiles [first, first + count), numbered as Tiles numbers them.
void run_block(const float* x, const ConvGeometry& g, const PackedSconvWeights& w,
               const SgemmEpilogue& epilogue, float* out, const Tiles& tiles, std::size_t first,
               std::size_t count, float* v, float* m) {
    const std::size_t channels = g.channels;
    const std::size_t outputs = w.out_channels;
    const std::size_t v_stride = channels + kRowPad;  // between the tiles of one position
    const std::size_t v_position = count * v_stride;
    const std::size_t m_position = count * outputs;
    for (std::size_t t = 0; t < count; ++t) {
        const Tiles::Position at = tiles.position(first + t);
        const float* pixels = x + at.image * g.height * g.width * channels;
        for (std::size_t c0 = 0; c0 < channels; c0 += kLanes) {
            transform_input(pixels, g, at.oh - g.pad_top, at.ow - g.pad_left, c0,
                            v + t * v_stride, v_position);
        }
    }
    for (std::size_t xi = 0; xi < kPositions; ++xi) {
        const PackedSgemmWeights& u = w.winograd_weights[xi];
        SgemmBlock block{};
        block.a = v + xi * v_position;
        block.a_stride = v_stride;
        block.rows = count;
        block.b = u.data.data();
        block.k = channels;
        block.k0 = 0;
        block.kc = channels;
        block.panel_begin = 0;
        block.panel_end = u.padded_n / u.panel_width;
        block.n = outputs;
        block.out = m + xi * m_position;
        block.out_stride = outputs;
        block.activation = Activation::none;
        block.first = true;
        block.last = true;
        run_sgemm_avx512(block);
    }
    const std::size_t row_stride = g.out_w * outputs;
    for (std::size_t t = 0; t < count; ++t) {
        const Tiles::Position at = tiles.position(first + t);
        const std::size_t offset = ((at.image * g.out_h + at.oh) * g.out_w + at.ow) * outputs;
        const std::size_t rows = std::min<std::size_t>(2, g.out_h - at.oh);
        const std::size_t columns = std::min<std::size_t>(2, g.out_w - at.ow);
        for (std::size_t o0 = 0; o0 < outputs; o0 += kLanes) {
            transform_output(m + t * outputs, m_position, o0, outputs, epilogue, out + offset,
                             epilogue.residual == nullptr ? nullptr : epilogue.residual + offset,
                             row_stride, rows, columns);
        }
        if (epilogue.activation != Activation::none && epilogue.activation != Activation::relu &&
            epilogue.activation != Activation::relu6) {
            for (std::size_t r = 0; r < rows; ++r) {
                activate(out + offset + r * row_stride, columns * outputs, epilogue.activation,
                         w.isa);
            }
        }
    }
}

}  // namespace

void pack_winograd(const float* w, PackedSconvWeights& packed) {
    const std::size_t outputs = packed.out_channels;
    const std::size_t channels = packed.group_channels;
    // U = G g G^T with G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]].
    std::vector<float> u(kPositions * outputs * channels);
    for (std::size_t o = 0; o < outputs; ++o) {
        for (std::size_t c = 0; c < channels; ++c) {
            const float* g = w + (o * channels + c) * 9;
            float t[4][3];  // G g
            for (std::size_t j = 0; j < 3; ++j) {
                t[0][j] = g[j];
                t[1][j] = 0.5f * (g[j] + g[3 + j] + g[6 + j]);
                t[2][j] = 0.5f * (g[j] - g[3 + j] + g[6 + j]);
                t[3][j] = g[6 + j];
            }
            for (std::size_t i = 0; i < 4; ++i) {
                const float row[4] = {t[i][0], 0.5f * (t[i][0] + t[i][1] + t[i][2]),
                                      0.5f * (t[i][0] - t[i][1] + t[i][2]), t[i][2]};
                for (std::size_t j = 0; j < 4; ++j) {
                    u[((i * 4 + j) * outputs + o) * channels + c] = row[j];
                }
            }
        }
    }
    packed.winograd_weights.clear();
    for (std::size_t xi = 0; xi < kPositions; ++xi) {
        packed.winograd_weights.push_back(pack_sgemm_weights(
            u.data() + xi * outputs * channels, outputs, channels, packed.isa));
    }
}

void sconv2d_winograd(const float* x, const ConvGeometry& g, const PackedSconvWeights& w,
                      const SgemmEpilogue& epilogue, float* out, std::size_t threads) {
    const Tiles tiles{(g.out_h + 1) / 2, (g.out_w + 1) / 2};
    const std::size_t total = g.batch * tiles.rows * tiles.columns;
    const std::size_t per_tile = kPositions * (g.channels + kRowPad + w.out_channels);
    const std::size_t fitting = kBlockBytes / sizeof(float) / per_tile;
    std::size_t block = std::max(kTileQuantum, fitting / kTileQuantum * kTileQuantum);
    // Enough blocks that every thread gets a few.
    const std::size_t wanted = threads * 4;
    if (total / block < wanted) {
        block = std::max(kTileQuantum, (total + wanted - 1) / wanted);
    }
    const std::size_t blocks = (total + block - 1) / block;
    const std::size_t count = std::min(threads, blocks);
    // Allocated here, not on the pool threads, where a failed allocation could not be reported.
    std::vector<float> scratch(count * block * per_tile);
    parallel_items(blocks, count, [&](std::size_t participant, std::size_t b) {
        float* const v = scratch.data() + participant * block * per_tile;
        float* const m = v + kPositions * block * (g.channels + kRowPad);
        const std::size_t first = b * block;
        run_block(x, g, w, epilogue, out, tiles, first, std::min(block, total - first), v, m);
    });
}

}  // namespace nimbus::kernels

#endif  // NIMBUS_X86_KERNELS

namespace nimbus::kernels {

bool winograd_packable(std::size_t out_channels, std::size_t group_channels,
                       std::size_t kernel_h, std::size_t kernel_w, std::size_t groups, Isa isa) {
#ifdef NIMBUS_X86_KERNELS
    return isa == Isa::avx512_vnni && kernel_h == 3 && kernel_w == 3 && groups == 1 &&
           group_channels >= kWinogradMinChannels && out_channels >= kWinogradMinChannels &&
           group_channels * out_channels <= kWinogradMaxProducts;
#else
    return false;
#endif
}

}  // namespace nimbus::kernels
