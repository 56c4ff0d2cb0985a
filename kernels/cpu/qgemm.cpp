// The int8 GEMM driver: packs weights for a path, prepares activations, folds the activation
// zero point into per-column offsets and splits the work over threads.
#include "qgemm.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <stdexcept>

#include "qgemm_paths.h"
#include "quantize.h"
#include "sizes.h"
#include "worker_pool.h"

namespace nimbus::kernels {
namespace {

using PathKernel = void (*)(const GemmTask&, std::size_t, std::size_t, std::size_t, std::size_t);

struct Path {
    PathLayout layout;
    PathKernel kernel;
    // Whether the kernel's epilogue applies GemmTask::activation itself (the AVX-512 store).
    bool activates_in_registers = false;
    // Called on each thread after its last tile of a call, where the kernel keeps state.
    void (*release)() = nullptr;
};

Path path_of(Isa isa) {
    switch (isa) {
#ifdef NIMBUS_X86_KERNELS
        case Isa::amx:
            return {kAmxLayout, run_amx, true, release_amx};
        case Isa::amx_emulated:
            return {kAmxLayout, run_amx_emulated, true, release_amx_emulated};
        case Isa::avx512_vnni:
            return {kAvx512VnniLayout, run_avx512_vnni, true};
        case Isa::avx2:
            return {kAvx2Layout, run_avx2};
#endif
        default:
            return {kPortableLayout, run_portable};
    }
}

// Activations as the path reads them: unsigned (s8 values shifted by +128, which the caller
// compensates in the zero point), rows padded with zeros to padded_k, of activation_bytes each.
// Returns `a` itself when it already has that form.
template <typename Element>
const void* prepare_activations(const void* a, bool a_signed, std::size_t m, std::size_t k,
                                std::size_t padded_k, std::vector<Element>& storage) {
    if (sizeof(Element) == 1 && !a_signed && k == padded_k) {
        return a;
    }
    const auto* source = static_cast<const std::uint8_t*>(a);
    const std::uint8_t flip = a_signed ? 0x80 : 0x00;
    storage.assign(m * padded_k, 0);
    for (std::size_t row = 0; row < m; ++row) {
        Element* target = storage.data() + row * padded_k;
        for (std::size_t depth = 0; depth < k; ++depth) {
            target[depth] = static_cast<Element>(source[row * k + depth] ^ flip);
        }
    }
    return storage.data();
}

// Packed weights up to this size stay in a core's L2 cache whatever the order of the tiles.
constexpr std::size_t kCachedWeightBytes = 256 * 1024;

// What follows the kernel on each tile while the tile is in cache: an f32 result's activation,
// or (quantizing) a float activation and the quantization of a u8/s8 result.
struct TileFinish {
    Activation activation = Activation::none;
    Isa isa = Isa::portable;        // the path of the activation
    bool quantizing = false;
    float output_scale = 0.0f;
    std::int32_t zero_point = 0;
    bool unsigned_result = true;
};

// A quantizing tile of `rows` rows from `row_begin` x the columns of `panel`: the kernel writes
// it as f32 into `buffer` (rows x its columns, which stays in L1), the activation and the
// quantization run there, and only the u8/s8 values reach the result.
void run_quantizing_tile(const Path& path, const GemmTask& task, std::size_t row_begin,
                         std::size_t rows, std::size_t panel, const TileFinish& finish,
                         float* buffer) {
    const std::size_t width = path.layout.panel_width;
    const std::size_t column = panel * width;
    GemmTask tile = task;  // the tile alone, as a GEMM of `rows` rows and one panel
    ActivationRuns tile_runs{};
    if (task.runs != nullptr) {
        tile_runs = *task.runs;
        tile_runs.rows += row_begin;
        tile_runs.strides += row_begin;
        tile.runs = &tile_runs;
    } else {
        tile.a = static_cast<const std::uint8_t*>(task.a) +
                 row_begin * task.padded_k * path.layout.activation_bytes;
    }
    tile.b = task.b + panel * task.padded_k * width;
    tile.n = std::min(width, task.n - column);
    tile.column_offset = task.column_offset + column;
    tile.scale = task.scale + column;
    tile.type = OutputType::f32;
    tile.out = buffer;
    path.kernel(tile, 0, rows, 0, 1);
    activate(buffer, rows * tile.n, finish.activation, finish.isa);
    quantize_rows(buffer, rows, tile.n, tile.n, finish.output_scale, finish.zero_point,
                  finish.unsigned_result,
                  static_cast<std::uint8_t*>(task.out) + row_begin * task.n + column, task.n);
}

// Runs kernel over tiles of the path's tile_rows rows on up to `threads` threads (fewer when the
// pool has fewer or is busy), each tile followed by `finish`, shared out by parallel_items, so
// a thread that the OS preempts or wakes late delays no fixed share.
// A tile covers one panel, and consecutive tiles share it, so its weights stay in cache. When
// all the weights fit in cache anyway (`rows_outer`, a pointwise convolution's few output
// channels), a tile covers every panel of its rows instead (or a group of consecutive panels,
// where the rows alone give each thread fewer than kTilesPerThread tiles): the activations
// stream once, and two threads do not write parts of one cache line of the result. With a tile
// per panel there, rows whose outputs are not whole lines (96 u8 outputs under 64-column
// panels) had both threads writing every line: MobileNetV2's 16 -> 96 layer at batch 8 took
// 2.3 ms on two threads and 1.7 ms on one.
void run_parallel(const Path& path, const GemmTask& task, std::size_t m, std::size_t panels,
                  bool rows_outer, const TileFinish& finish, std::size_t threads) {
    constexpr std::size_t kTilesPerThread = 4;
    const std::size_t tile_rows = path.layout.tile_rows;
    const std::size_t row_tiles = (m + tile_rows - 1) / tile_rows;
    std::size_t group_panels = 1;  // panels per tile
    if (rows_outer) {
        const std::size_t wanted =
            threads > 1 ? ceil_div(kTilesPerThread * threads, std::max<std::size_t>(row_tiles, 1))
                        : 1;
        group_panels = ceil_div(panels, std::min(wanted, panels));
    }
    const std::size_t groups = ceil_div(panels, group_panels);
    const std::size_t tiles = row_tiles * groups;
    const std::size_t count = std::min(threads, tiles);
    const std::size_t width = path.layout.panel_width;
    // Allocated here, not on the pool threads, where a failed allocation could not be reported.
    std::vector<float> buffers(finish.quantizing ? count * tile_rows * width : 0);
    // Without rows outer, the row tiles split into one part per thread when each thread gets
    // two or more: a thread's run of tiles (parallel_items) then covers its own rows of every
    // panel, rows that it mostly wrote itself in the layer before, for the layer after to read
    // on the same thread, at the cost of each thread streaming all of the weights. BERT-base int8
    // at batch 8, two threads: 11.4 -> 10.7 ms while memory was contended, 10.0 either way
    // otherwise; MobileNetV2 int8 at batch 8 7.9 -> 7.6 ms. One part: each thread's panels for
    // all rows.
    const std::size_t row_parts = !rows_outer && row_tiles >= 2 * count ? count : 1;
    const auto part_first = [&](std::size_t part) { return part * row_tiles / row_parts; };
    const auto run_tile = [&](std::size_t participant, std::size_t tile) {
        float* const buffer =
            finish.quantizing ? buffers.data() + participant * tile_rows * width : nullptr;
        // Rows outer: the groups of a row tile in turn; else, part by part of the row tiles,
        // the part's row tiles of a panel in turn.
        std::size_t group = tile % groups;
        std::size_t row_tile = tile / groups;
        if (!rows_outer) {
            std::size_t part = row_parts - 1;
            while (part_first(part) * groups > tile) {
                --part;
            }
            const std::size_t first = part_first(part);
            const std::size_t index = tile - first * groups;
            group = index / (part_first(part + 1) - first);
            row_tile = first + index % (part_first(part + 1) - first);
        }
        const std::size_t panel_begin = group * group_panels;
        const std::size_t panel_end = std::min(panels, panel_begin + group_panels);
        const std::size_t row_begin = row_tile * tile_rows;
        const std::size_t row_end = std::min(m, row_begin + tile_rows);
        if (finish.quantizing) {
            for (std::size_t panel = panel_begin; panel < panel_end; ++panel) {
                run_quantizing_tile(path, task, row_begin, row_end - row_begin, panel, finish,
                                    buffer);
            }
            return;
        }
        path.kernel(task, row_begin, row_end, panel_begin, panel_end);
        if (finish.activation == Activation::none) {
            return;
        }
        const std::size_t column = std::min(task.n, panel_begin * width);
        const std::size_t columns = std::min(task.n, panel_end * width) - column;
        for (std::size_t row = row_begin; row < row_end && columns > 0; ++row) {
            activate(static_cast<float*>(task.out) + row * task.n + column, columns,
                     finish.activation, finish.isa);
        }
    };
    std::function<void(std::size_t)> release;
    if (path.release != nullptr) {
        release = [&](std::size_t) { path.release(); };
    }
    parallel_items(tiles, count, run_tile, release);
}

// The GEMM of `m` rows of prepared activations (`a`, or `runs`) whose zero point, as the path
// reads them (u8), is `zero_point`.
void run_gemm(const void* a, const ActivationRuns* runs, std::size_t m, std::uint32_t zero_point,
              const PackedWeights& weights, const Epilogue& epilogue, void* out,
              std::size_t threads) {
    const Path path = path_of(weights.isa);
    // acc = sum(a' * w) - a_zp' * column_sum + bias. Unsigned arithmetic wraps like the int32
    // accumulators of the reference.
    std::vector<std::int32_t> column_offset(weights.padded_n, 0);
    std::vector<float> scale(weights.padded_n, 0.0f);
    for (std::size_t col = 0; col < weights.n; ++col) {
        const auto bias = static_cast<std::uint32_t>(epilogue.bias ? epilogue.bias[col] : 0);
        const auto sum = static_cast<std::uint32_t>(weights.column_sums[col]);
        column_offset[col] = static_cast<std::int32_t>(bias - zero_point * sum);
        scale[col] = epilogue.scale ? epilogue.scale[col] : 0.0f;
    }

    GemmTask task{a, runs, weights.data.data(), weights.padded_k, weights.n,
                  column_offset.data(), scale.data(), epilogue.type, epilogue.zero_point,
                  epilogue.lo, epilogue.hi, epilogue.residual, out};
    const std::size_t panels = weights.padded_n / path.layout.panel_width;
    const bool rows_outer = weights.data.size() <= kCachedWeightBytes;
    // The activation computed as this process's unfused activation kernel computes it: in the
    // AVX-512 epilogue's registers when that kernel runs AVX-512 too (the same functions; the
    // GELU and u8 quantization of BERT's 1024 x 3072 x 768 FFN GEMM add 0.43 ms on two threads
    // there, 0.75-0.92 ms as passes over each tile in L1), else over each tile after it.
    const Isa activation_isa = selected_isa();
    TileFinish finish;
    if (path.activates_in_registers && epilogue.type != OutputType::s32 &&
        sgemm_path(activation_isa) == Isa::avx512_vnni) {
        task.activation = epilogue.activation;
        task.output_scale = epilogue.output_scale;
    } else {
        finish.activation = epilogue.activation;
        finish.isa = activation_isa;
        finish.quantizing = epilogue.type != OutputType::f32 &&
                            epilogue.type != OutputType::s32 &&
                            epilogue.activation != Activation::none;
        finish.output_scale = epilogue.output_scale;
        finish.zero_point = epilogue.zero_point;
        finish.unsigned_result = epilogue.type == OutputType::u8;
    }
    run_parallel(path, task, m, panels, rows_outer, finish, std::max<std::size_t>(threads, 1));
}

using PeakLoop = std::uint64_t (*)(std::size_t, std::uint32_t&);

PeakLoop peak_loop(Isa isa) {
    switch (isa) {
#ifdef NIMBUS_X86_KERNELS
        case Isa::amx:
            return peak_amx;
        case Isa::avx512_vnni:
            return peak_avx512_vnni;
        case Isa::avx2:
            return peak_avx2;
        case Isa::amx_emulated:
            throw std::invalid_argument("the emulated AMX path has no peak");
#endif
        default:
            return peak_portable;
    }
}

// Seconds that `work` takes.
template <typename Work>
double seconds_of(Work&& work) {
    const auto start = std::chrono::steady_clock::now();
    work();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

double multiply_peak_gops(Isa isa, std::size_t threads) {
    constexpr double kSeconds = 0.05;
    const PeakLoop loop = peak_loop(isa);
    threads = std::max<std::size_t>(threads, 1);
    std::uint32_t sink = 0;
    // Iterations for about kSeconds on one thread (doubled from a short run).
    std::size_t iterations = 1024;
    const auto calibrate = [&] { loop(iterations, sink); };
    double seconds = seconds_of(calibrate);
    while (seconds < kSeconds / 8) {
        iterations *= 2;
        seconds = seconds_of(calibrate);
    }
    iterations = static_cast<std::size_t>(static_cast<double>(iterations) * kSeconds / seconds);
    std::atomic<std::uint64_t> operations{0};
    const double elapsed = seconds_of([&] {
        parallel_for(threads, threads, [&](std::size_t) {
            std::uint32_t own = 0;
            operations += loop(iterations, own);
        });
    });
    return static_cast<double>(operations.load()) / elapsed / 1e9;
}

std::size_t packed_depth(std::size_t k, Isa isa) {
    return round_up(k, path_of(isa).layout.depth_multiple);
}

PackedWeights pack_weights(const std::int8_t* w, std::size_t n, std::size_t k, Isa isa) {
    const PathLayout layout = path_of(isa).layout;
    PackedWeights packed;
    packed.isa = isa;
    packed.n = n;
    packed.k = k;
    packed.padded_n = round_up(n, layout.panel_width);
    packed.padded_k = round_up(k, layout.depth_multiple);
    packed.data.assign(packed.padded_n * packed.padded_k, 0);
    packed.column_sums.assign(packed.padded_n, 0);
    const std::size_t panel_size = packed.padded_k * layout.panel_width;
    const std::size_t group_size = layout.k_group * layout.panel_width;
    // Column col's k_group depths of each group go to its lane of the group; no division per
    // weight (a divide by the run-time k_group per byte made packing ResNet-18 take 30 ms).
    for (std::size_t col = 0; col < n; ++col) {
        std::int8_t* target = packed.data.data() + col / layout.panel_width * panel_size +
                              col % layout.panel_width * layout.k_group;
        const std::int8_t* row = w + col * k;
        std::int32_t sum = 0;
        for (std::size_t depth = 0; depth < k; depth += layout.k_group, target += group_size) {
            const std::size_t count = std::min(layout.k_group, k - depth);
            for (std::size_t r = 0; r < count; ++r) {
                target[r] = row[depth + r];
                sum += row[depth + r];
            }
        }
        packed.column_sums[col] = sum;
    }
    return packed;
}

void qgemm(const void* a, bool a_signed, std::size_t m, std::int32_t a_zero_point,
           const PackedWeights& weights, const Epilogue& epilogue, void* out,
           std::size_t threads) {
    if (m == 0 || weights.n == 0) {
        return;
    }
    const Path path = path_of(weights.isa);
    std::vector<std::uint8_t> bytes;
    std::vector<std::uint16_t> words;
    const void* prepared =
        path.layout.activation_bytes == 1
            ? prepare_activations(a, a_signed, m, weights.k, weights.padded_k, bytes)
            : prepare_activations(a, a_signed, m, weights.k, weights.padded_k, words);
    // s8 activations are read as a' = a + 128.
    const auto zero_point = static_cast<std::uint32_t>(a_zero_point + (a_signed ? 128 : 0));
    run_gemm(prepared, nullptr, m, zero_point, weights, epilogue, out, threads);
}

void qgemm_runs(const ActivationRuns& a, std::size_t m, std::int32_t a_zero_point,
                const PackedWeights& weights, const Epilogue& epilogue, void* out,
                std::size_t threads) {
    if (m == 0 || weights.n == 0) {
        return;
    }
    run_gemm(nullptr, &a, m, static_cast<std::uint32_t>(a_zero_point), weights, epilogue, out,
             threads);
}

}  // namespace nimbus::kernels
