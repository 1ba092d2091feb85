"""LLVM instructions numba's Python subset does not reach, for the host batch kernels
(datamodules.host_gather): a prefetch hint, a row converted with streaming stores, and the
store fence that orders streaming stores.

Why streaming stores: a 33.5 MB float32 batch does not stay in any cache, and an ordinary
store first reads each line it writes (read-for-ownership), so the output costs twice its
size in memory traffic. A non-temporal store writes the line without reading it (x86-64
`movntps`), which took a third off the gather of 1024-dim uint8 rows. They bypass the cache
and are weakly ordered, hence `store_fence` at the end of each kernel call (before another
thread reads the batch), and they are used only where the batch is larger than the caches.

numba's on-disk cache of the kernels (cache=True in host_gather) is keyed on host_gather.py
alone: after editing this file, touch host_gather.py so the kernels are compiled again.
"""

from __future__ import annotations

import platform

import llvmlite.ir as lir
from numba.core import cgutils, types
from numba.extending import intrinsic

# Streaming stores and sfence are x86-64 instructions; elsewhere the plain kernels run.
HAS_STREAMING_STORES = platform.machine().lower() in ("x86_64", "amd64")
# Elements per streaming store: 16 float32 = one 64-byte cache line (rows must be multiples,
# and the output 64-byte aligned: datamodules.batch_buffers aligns its arrays).
LANES = 16
_I32 = lir.IntType(32)


def _declare(builder, name: str, args: list) -> lir.Function:
    return cgutils.get_or_insert_function(
        builder.module, lir.FunctionType(lir.VoidType(), args), name)


@intrinsic
def prefetch(typingctx, arr, byte):  # pragma: no cover - compiled into the kernels
    """Hint the CPU to fetch the cache line `byte` bytes into `arr`'s data (llvm.prefetch:
    read, keep in all cache levels, data); no value, no fault."""
    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        i8p = lir.IntType(8).as_pointer()
        line = builder.gep(builder.bitcast(data, i8p), [args[1]])
        builder.call(_declare(builder, "llvm.prefetch.p0", [i8p, _I32, _I32, _I32]),
                     [line, _I32(0), _I32(3), _I32(1)])
        return context.get_dummy_value()
    return types.void(arr, byte), codegen


@intrinsic
def stream_row(typingctx, src, src_start, dst, dst_start, count, scale, offset):
    """dst[dst_start + k] = float32(float32(src[src_start + k]) * scale) + offset for k in
    [0, count), with streaming stores: `src` uint8 and `dst` float32 (flat, C-contiguous);
    `count` a multiple of LANES and dst[dst_start] 64-byte aligned. The same two float32
    roundings as NumPy (fmul, then fadd; no contraction into a fused multiply-add)."""
    def codegen(context, builder, signature, args):
        src_data = context.make_array(signature.args[0])(context, builder, args[0]).data
        dst_data = context.make_array(signature.args[2])(context, builder, args[2]).data
        f32, i64 = lir.FloatType(), lir.IntType(64)
        codes, floats = lir.VectorType(lir.IntType(8), LANES), lir.VectorType(f32, LANES)
        src_row = builder.gep(src_data, [args[1]])
        dst_row = builder.gep(dst_data, [args[3]])
        scale, offset = (_splat(builder, floats, v) for v in args[5:7])
        nontemporal = builder.module.add_metadata([_I32(1)])
        with cgutils.for_range_slice(builder, i64(0), args[4], i64(LANES)) as (k, _):
            code = builder.load(builder.bitcast(builder.gep(src_row, [k]), codes.as_pointer()),
                                align=1)
            value = builder.fadd(builder.fmul(builder.uitofp(code, floats), scale), offset)
            store = builder.store(value, builder.bitcast(builder.gep(dst_row, [k]),
                                                         floats.as_pointer()), align=64)
            store.set_metadata("nontemporal", nontemporal)
        return context.get_dummy_value()
    return types.void(src, src_start, dst, dst_start, count, scale, offset), codegen


@intrinsic
def store_fence(typingctx):
    """sfence: the streaming stores before it are visible before any store after it."""
    def codegen(context, builder, signature, args):
        builder.call(_declare(builder, "llvm.x86.sse.sfence", []), [])
        return context.get_dummy_value()
    return types.void(), codegen


def _splat(builder, vector: lir.VectorType, value) -> lir.Value:
    """`value` in every lane of `vector`."""
    out = lir.Constant(vector, lir.Undefined)
    for lane in range(vector.count):
        out = builder.insert_element(out, value, _I32(lane))
    return out
