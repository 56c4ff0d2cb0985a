"""share-weights: Deep Compression's weight sharing, a k-means codebook per layer."""

from __future__ import annotations

import numpy as np
from nimbus.compiler.ir import Graph

from .layers import weight_layers
from .manager import PassContext, PassFailure
from .registry import register_pass

LLOYD_ITERATIONS = 30


def kmeans_1d(values: np.ndarray, clusters: int) -> np.ndarray:
    """Sorted centroids of 1-D k-means (Lloyd's algorithm) started evenly between the extremes,
    the initialization Deep Compression found best for large weights. In one dimension the
    nearest centroid is found by bisecting the midpoints between sorted centroids, so each step
    costs O(n log k); a centroid left without members keeps its place, which keeps them sorted."""
    values = values.astype(np.float64)
    centroids = np.linspace(values.min(), values.max(), clusters)
    for _ in range(LLOYD_ITERATIONS):
        labels = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
        counts = np.bincount(labels, minlength=clusters)
        sums = np.bincount(labels, weights=values, minlength=clusters)
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        if np.array_equal(updated, centroids):
            break
        centroids = updated
    return centroids


def codebook_and_indices(weight: np.ndarray, bits: int, keep_zero: bool) -> tuple[np.ndarray, np.ndarray]:
    """(f32 codebook of at most 2^bits values, u8 indices of the weight's shape) such that
    codebook[indices] approximates the weight. With ``keep_zero`` and pruned (exactly zero)
    weights, zero is entry 0 of the codebook and the other weights are clustered without them."""
    flat = weight.ravel()
    pinned = np.zeros(1) if keep_zero and not flat.all() else np.zeros(0)
    clustered = flat[flat != 0] if pinned.size else flat
    clusters = 2 ** bits - pinned.size
    distinct = np.unique(clustered)
    if distinct.size <= clusters:  # already shared: the codebook is exact
        centroids = distinct.astype(np.float64)
    else:
        centroids = kmeans_1d(clustered, clusters)
    codebook = np.concatenate([pinned, centroids]).astype(np.float32)
    nearest = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, flat) + pinned.size
    indices = np.where(flat == 0, 0, nearest) if pinned.size else nearest
    return codebook, indices.astype(np.uint8).reshape(weight.shape)


@register_pass("share-weights")
def share_weights(graph: Graph, ctx: PassContext, *, bits: int = 4, keep_zero: bool = True,
                  exclude: str = "") -> bool:
    """Weight sharing (Deep Compression): the weights of each conv, linear and constant-operand
    matmul layer are clustered by 1-D k-means into at most 2^bits shared values, started evenly
    between the smallest and largest weight. The layer's weight becomes
    ``gather(codebook, indices)``: an f32 codebook of at most 2^bits entries and u8 indices of
    the weight's shape, so the artifact stores one byte per weight plus the codebook
    (fold-constants never folds the lookup back). Pruned weights stay exactly zero: zero is a
    codebook entry of its own and the other weights are clustered without them. Statistics give
    the weight bytes before (f32) and after (u8 indices and codebooks), and what indices packed
    to `bits` bits would take. A later `quantize` decodes the lookups of the layers it makes
    integer: the int8 weight is what ships, and it holds at most 2^bits distinct values per
    channel, which a compressed artifact still benefits from.

    Options:
    bits: codebook size as a power of two, from 2 to 8
    keep-zero: keep exact zeros (pruned weights) exactly zero with a codebook entry of their own
    exclude: comma-separated name patterns (weights or module paths) left unshared
    """
    if not 2 <= bits <= 8:
        raise PassFailure(f"bits must be from 2 to 8 (u8 indices), got {bits}")
    weights = weight_layers(graph, ctx, exclude)
    for weight, layers in weights.items():
        codebook, indices = codebook_and_indices(weight.data, bits, keep_zero)
        codebook_value = graph.add_constant(graph.unique_constant_name(f"{weight.name}.codebook"),
                                            codebook)
        indices_value = graph.add_constant(graph.unique_constant_name(f"{weight.name}.indices"),
                                           indices)
        lookup = graph.add_node("gather", [codebook_value, indices_value], {"axis": 0},
                                layers[0].loc, before=layers[0])
        ctx.touched(lookup)
        for layer in layers:
            layer.operands[1] = lookup.result
            ctx.touched(layer)
        ctx.count("layers-shared")
        ctx.count("bytes-before", weight.data.nbytes)
        ctx.count("bytes-after", indices.nbytes + codebook.nbytes)
        ctx.count("bytes-after-packed", -(-indices.size * bits // 8) + codebook.nbytes)
    if weights:
        ctx.stats["bits"] = bits
        graph.remove_unused_constants()
    return bool(weights)
