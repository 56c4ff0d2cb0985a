// The float32 GEMM driver: packs weights for a path, cuts the GEMM into blocks of rows x panel
// groups x depth, hands out the blocks to threads and feeds each block's rows to the path.
#include "sgemm.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <stdexcept>

#include "cache_line.h"
#include "sgemm_paths.h"
#include "sizes.h"
#include "worker_pool.h"

namespace nimbus::kernels {
namespace {

using PathKernel = void (*)(const SgemmBlock&);

struct Path {
    SgemmLayout layout;
    PathKernel kernel;
};

Path path_of(Isa isa) {
    switch (isa) {
#ifdef NIMBUS_X86_KERNELS
        case Isa::avx512_vnni:
            return {kSgemmAvx512Layout, run_sgemm_avx512};
        case Isa::avx2:
            return {kSgemmAvx2Layout, run_sgemm_avx2};
#endif
        default:
            return {kSgemmPortableLayout, run_sgemm_portable};
    }
}

// The largest depth per block: a block of kTileRegisterRows register tiles' rows (kc floats
// each) and a panel's kc x 32 floats stay in L2 while the rows pass; longer blocks reload and
// store the accumulators less often. 384 to 512 measured best on Zen 4 (128 and 256 lose 5 to
// 15%), with the broadcasts from L1 and the panel loads from L2.
constexpr std::size_t kDepthBlock = 512;
// Register tiles of rows per work item.
constexpr std::size_t kTileRegisterRows = 4;
// Work items per thread wanted when there are several threads, so that a late thread delays
// only a small share.
constexpr std::size_t kItemsPerThread = 4;
// The fewest multiply-adds of a work item while each thread still gets kItemsPerThread: taking
// an item moves its run's counter (parallel_items) between the cores and sets up a block. In
// items of 4 register tiles, MobileNetV2's 32 -> 16 projection at 112x112 (12544 x 16 x 32, 262
// items) took 0.047-0.09 ms on two threads, 0.041 in 8 items.
constexpr std::size_t kItemFmas = std::size_t{1} << 20;

// Weights of more than twice kGroupWeightBytes go in panel groups of about kGroupWeightBytes,
// taken group by group, when the rows are few enough to be read again for each group from the
// last-level cache (at most kRereadRowBytes): a row tile over all of the weights streamed them
// from memory again for every tile. BERT-base's 1024 x 3072 x 768 layer with cold caches, two
// threads: 11.1-12.3 -> 10.6-10.9 ms; its 1024 x 768 x 768 layers 2.8 -> 2.6 ms.
constexpr std::size_t kGroupWeightBytes = 512 * 1024;
constexpr std::size_t kRereadRowBytes = std::size_t{4} << 20;

// Padding of the rows of a scratch block: rows a multiple of 4 KiB apart would all fall into
// the same L1 set, which holds only 8 of them.
constexpr std::size_t kScratchPad = 16;
// Row strides (in bytes) that are a multiple of this put the rows of a register tile into one
// or two L1 sets.
constexpr std::size_t kAliasingStride = 2048;

// A plain row-major matrix. Blocks point into it, except where its row stride would make the
// rows of a register tile collide in L1: there they are copied into scratch rows kScratchPad
// floats longer than a block (the copy costs about 1 / N of the arithmetic).
class MatrixRows final : public SgemmRows {
public:
    MatrixRows(const float* a, std::size_t k) : a_(a), k_(k) {}
    const float* block(std::size_t row, std::size_t count, std::size_t k0, std::size_t kc,
                       float* scratch, std::size_t& stride) const override {
        if (!copies()) {
            stride = k_;
            return a_ + row * k_ + k0;
        }
        stride = kc + kScratchPad;
        for (std::size_t r = 0; r < count; ++r) {
            std::memcpy(scratch + r * stride, a_ + (row + r) * k_ + k0, kc * sizeof(float));
        }
        return scratch;
    }
    bool copies() const override { return k_ * sizeof(float) % kAliasingStride == 0; }

private:
    const float* a_;
    std::size_t k_;
};

// The depth blocks of a GEMM over `ranges` (the whole depth k when there are none): each range
// in blocks of equal size, at most kDepthBlock and a multiple of 16 floats (no short last
// block). A GEMM over no depth at all keeps one empty block, which runs the epilogue.
std::vector<DepthRange> depth_blocks(const std::vector<DepthRange>& ranges, std::size_t k) {
    const std::vector<DepthRange> whole{{0, k}};
    std::vector<DepthRange> blocks;
    for (const DepthRange& range : ranges.empty() ? whole : ranges) {
        const std::size_t depth = range.end - range.begin;
        if (depth == 0) {
            continue;
        }
        const std::size_t size = round_up(ceil_div(depth, ceil_div(depth, kDepthBlock)), 16);
        for (std::size_t k0 = range.begin; k0 < range.end; k0 += size) {
            blocks.push_back({k0, std::min(k0 + size, range.end)});
        }
    }
    if (blocks.empty()) {
        blocks.push_back({0, 0});
    }
    return blocks;
}

bool cpu_has_fma() {
#ifdef NIMBUS_X86_KERNELS
    __builtin_cpu_init();
    return __builtin_cpu_supports("fma");
#else
    return false;
#endif
}

}  // namespace

Activation activation_from_name(const std::string& name) {
    static const Activation all[] = {Activation::none,    Activation::relu,
                                     Activation::relu6,   Activation::gelu,
                                     Activation::gelu_tanh, Activation::silu,
                                     Activation::sigmoid, Activation::tanh,
                                     Activation::hardswish};
    std::string names;
    for (const Activation activation : all) {
        if (name == activation_name(activation)) {
            return activation;
        }
        names += names.empty() ? "" : ", ";
        names += std::string("'") + activation_name(activation) + "'";
    }
    throw std::invalid_argument("unknown activation '" + name + "'; the activations are " + names);
}

const char* activation_name(Activation activation) {
    switch (activation) {
        case Activation::none:
            return "none";
        case Activation::relu:
            return "relu";
        case Activation::relu6:
            return "relu6";
        case Activation::gelu:
            return "gelu";
        case Activation::gelu_tanh:
            return "gelu_tanh";
        case Activation::silu:
            return "silu";
        case Activation::sigmoid:
            return "sigmoid";
        case Activation::tanh:
            return "tanh";
        case Activation::hardswish:
            return "hardswish";
    }
    return "unknown";
}

Isa sgemm_path(Isa isa) {
    static const bool fma = cpu_has_fma();
    const Isa vector = vector_isa(isa);
    return vector == Isa::avx2 && !fma ? Isa::portable : vector;
}

void activate(float* data, std::size_t count, Activation activation, Isa isa) {
#ifdef NIMBUS_X86_KERNELS
    if (sgemm_path(isa) == Isa::avx512_vnni) {
        activate_avx512(data, count, activation);
        return;
    }
    if (sgemm_path(isa) == Isa::avx2) {
        activate_avx2(data, count, activation);
        return;
    }
#endif
    activate_portable(data, count, activation);
}

PackedSgemmWeights pack_sgemm_weights(const float* w, std::size_t n, std::size_t k, Isa isa) {
    PackedSgemmWeights packed;
    packed.isa = sgemm_path(isa);
    packed.n = n;
    packed.k = k;
    packed.panel_width = path_of(packed.isa).layout.panel_width;
    packed.padded_n = round_up(n, packed.panel_width);
    packed.data.assign(packed.padded_n * k, 0.0f);
    const std::size_t width = packed.panel_width;
    for (std::size_t col = 0; col < n; ++col) {
        float* panel = packed.data.data() + col / width * k * width;
        const std::size_t lane = col % width;
        for (std::size_t depth = 0; depth < k; ++depth) {
            panel[depth * width + lane] = w[col * k + depth];
        }
    }
    return packed;
}

void sgemm_rows(const SgemmRows& a, std::size_t m, const PackedSgemmWeights& weights,
                const SgemmEpilogue& epilogue, float* out, std::size_t out_stride,
                std::size_t threads, const std::vector<DepthRange>& depths) {
    if (m == 0 || weights.n == 0) {
        return;
    }
    threads = std::max<std::size_t>(threads, 1);
    const Path path = path_of(weights.isa);
    const std::vector<DepthRange> blocks = depth_blocks(depths, weights.k);
    // The depth that the sums run over, which sizes the work.
    std::size_t k = 0;
    std::size_t depth_block = 1;
    for (const DepthRange& range : blocks) {
        k += range.end - range.begin;
        depth_block = std::max(depth_block, range.end - range.begin);
    }
    const std::size_t panels = weights.padded_n / path.layout.panel_width;

    // Work items: row tiles (whole register blocks of rows) times groups of panels. Many row
    // tiles: as many as a multiple of the thread count, so that the threads finish together.
    // Few (a GEMM of one row): the panels split into groups too, two per thread when each
    // group copies the rows again, else 2 * kItemsPerThread items per thread, so that a
    // helper thread that starts late still takes its share.
    const std::size_t register_blocks = ceil_div(m, path.layout.rows);
    std::size_t row_tiles = ceil_div(register_blocks, kTileRegisterRows);
    // Rows cheap to compute (few outputs and little depth) go in tiles of kItemFmas, down to
    // kItemsPerThread tiles per thread.
    const std::size_t block_fmas = std::max<std::size_t>(weights.padded_n * k, 1) * path.layout.rows;
    const std::size_t item_blocks = ceil_div(kItemFmas, block_fmas);
    row_tiles = std::min(row_tiles, std::max(ceil_div(register_blocks, item_blocks),
                                             kItemsPerThread * threads));
    std::size_t panel_groups = 1;
    if (threads > 1 && row_tiles >= kItemsPerThread * threads) {
        row_tiles = round_up(row_tiles, threads);
    } else if (threads > 1) {
        const std::size_t per_thread = a.copies() ? 2 : 2 * kItemsPerThread;
        const std::size_t wanted = round_up(ceil_div(per_thread * threads, row_tiles), threads);
        panel_groups = std::min(panels, wanted);
    }
    row_tiles = std::min(row_tiles, register_blocks);
    const std::size_t weight_bytes = k * weights.padded_n * sizeof(float);
    const bool weights_in_groups = !a.copies() && weight_bytes > 2 * kGroupWeightBytes &&
                                   m * k * sizeof(float) <= kRereadRowBytes;
    if (weights_in_groups) {
        panel_groups = std::min(panels, std::max(panel_groups,
                                                 ceil_div(weight_bytes, kGroupWeightBytes)));
    }
    const std::size_t group_panels = ceil_div(panels, panel_groups);
    panel_groups = ceil_div(panels, group_panels);
    const std::size_t items = row_tiles * panel_groups;
    // Items in order of their panel groups, when the weights outweigh the rows or go in groups
    // for their size: a thread's run of items (parallel_items) then reads half of the weights
    // once, not all of them in turn with the other thread. BERT-base's layers at batch 1 (128
    // rows), two threads: 3.51-3.57 -> 3.33-3.37 ms in all. Otherwise in order of their row
    // tiles: a thread's run covers rows that it wrote itself in the layer before.
    const bool panels_outer = weights_in_groups || weights.padded_n > m;
    const std::size_t count = std::min(threads, items);
    // Tile t holds register blocks [t * blocks / tiles, (t + 1) * blocks / tiles).
    const auto tile_first_row = [&](std::size_t tile) {
        return std::min(m, tile * register_blocks / row_tiles * path.layout.rows);
    };
    const std::size_t tile_rows = ceil_div(register_blocks, row_tiles) * path.layout.rows;

    // Allocated here, not on the pool threads, where a failed allocation could not be reported;
    // left uninitialized, since every row is written before it is read.
    const std::size_t scratch_rows = whole_lines<float>(tile_rows * (depth_block + kScratchPad));
    const CacheLineArray<float> scratch = cache_line_array<float>(count * scratch_rows);
    parallel_items(items, count, [&](std::size_t participant, std::size_t item) {
        float* const own_scratch = scratch.get() + participant * scratch_rows;
        // Consecutive items share a row tile, whose rows are still in cache for the next, or
        // a group of panels, whose weights are.
        const std::size_t tile = panels_outer ? item % row_tiles : item / panel_groups;
        const std::size_t row = tile_first_row(tile);
        const std::size_t group = panels_outer ? item / row_tiles : item % panel_groups;
        SgemmBlock block{};
        block.rows = tile_first_row(tile + 1) - row;
        block.b = weights.data.data();
        block.k = weights.k;
        block.panel_begin = group * group_panels;
        block.panel_end = std::min(panels, block.panel_begin + group_panels);
        block.n = weights.n;
        block.out = out + row * out_stride;
        block.out_stride = out_stride;
        block.bias = epilogue.bias;
        block.residual = epilogue.residual == nullptr
                             ? nullptr
                             : epilogue.residual + row * epilogue.residual_stride;
        block.residual_stride = epilogue.residual_stride;
        block.activation = epilogue.activation;
        for (std::size_t index = 0; index < blocks.size(); ++index) {
            block.k0 = blocks[index].begin;
            block.kc = blocks[index].end - blocks[index].begin;
            block.first = index == 0;
            block.last = index + 1 == blocks.size();
            block.a = a.block(row, block.rows, block.k0, block.kc, own_scratch, block.a_stride);
            path.kernel(block);
        }
    });
}

void sgemm(const float* a, std::size_t m, const PackedSgemmWeights& weights,
           const SgemmEpilogue& epilogue, float* out, std::size_t threads) {
    sgemm_rows(MatrixRows(a, weights.k), m, weights, epilogue, out, weights.n, threads);
}

}  // namespace nimbus::kernels
