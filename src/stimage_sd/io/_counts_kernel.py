"""Compiled parser of the data rows of a dense count CSV (numba, releases the GIL).

One call parses a byte block made of whole lines (the last one may lack its newline at the
end of the file) into CSR pieces: the column index and value of every non-zero field, the
number of non-zeros of each row and the spot ids (unquoted, one per line). Zero fields are
skipped without being converted: runs of ``0.0,`` and ``0,`` are compared eight bytes at a
time, which is what makes dense-on-disk, sparse-in-content files fast to read.

Numbers are parsed exactly as decimal mantissa and exponent: a value is *integral* when it
is an integer in ``[0, 2**31)`` (``3``, ``3.0``, ``1e+03``, ``2.50e1``), which decides the
``int32`` output; others are converted to float64 (correctly rounded when the mantissa has at
most 15 significant digits and the exponent is within ±22) and stored as float32 later.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = [
    "ERR_EMPTY",
    "ERR_EMPTY_LINE",
    "ERR_ID",
    "ERR_NEGATIVE",
    "ERR_NONNUMERIC",
    "ERR_RANGE",
    "ERR_TOO_FEW",
    "ERR_TOO_MANY",
    "parse_block",
]

ERR_TOO_FEW = 1
ERR_TOO_MANY = 2
ERR_EMPTY = 3
ERR_NONNUMERIC = 4
ERR_NEGATIVE = 5
ERR_RANGE = 6
ERR_ID = 7
ERR_EMPTY_LINE = 8

_COMMA, _LF, _CR, _QUOTE = 44, 10, 13, 34
# little-endian words of "0.0,0.0," (two zero fields) and "0,0,0,0," (four)
_ZF8 = int.from_bytes(b"0.0,0.0,", "little")
_ZI8 = int.from_bytes(b"0,0,0,0,", "little")
_ZF4 = int.from_bytes(b"0.0,", "little")
_ZI2 = int.from_bytes(b"0,", "little")
_DF4 = int.from_bytes(b"\0.0,", "little")  # "<digit>.0," with the digit masked out
_DI2 = int.from_bytes(b"\0,", "little")
_INT32_MAX = 2**31 - 1
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_POW10_INT = np.array([10**i for i in range(19)], dtype=np.int64)
_POW10_FLOAT = np.array([10.0**i for i in range(23)], dtype=np.float64)


def _unaligned_loader(bits: int):
    @intrinsic
    def load(typingctx, arr, idx):
        # signed: numba compares uint64 with int64 as float64, which loses the low bits
        sig = getattr(types, f"int{bits}")(arr, types.intp)

        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            ptr = builder.gep(ary.data, [args[1]])
            wide = builder.bitcast(ptr, ir.IntType(bits).as_pointer())
            return builder.load(wide, align=1)

        return sig, codegen

    return load


_load64 = _unaligned_loader(64)


@njit(nogil=True, cache=True)
def parse_block(buf, n, n_genes, out_idx, out_val, row_nnz, ids, err):
    r"""Parse ``buf[:n]`` (whole data lines) into CSR pieces.

    Parameters
    ----------
    buf
        ``uint8`` array holding the block, then at least 8 more bytes, the first one 0.
    n
        Number of bytes of the block.
    n_genes
        Number of value fields per row.
    out_idx, out_val
        Outputs: column (``int32``) and value (``float64``) of each non-zero, at least
        ``n // 2 + 2`` long.
    row_nnz
        Output: non-zeros per row (``int64``), at least ``n // 2 + 2`` long.
    ids
        Output: spot ids (``uint8``), each followed by ``\n``, at least ``n + 1`` long.
    err
        Output (``int64[4]``): error code (0 if none), row in block, column, byte offset.

    Returns
    -------
    (rows, nnz, id_bytes, all_integral)

    """
    p = 0
    row = 0
    k = 0
    q = 0
    integral = True
    while p < n:
        line_start = p
        k_row = k
        # ---- spot id
        c = buf[p]
        if c == _LF or c == _CR:
            err[0] = ERR_EMPTY_LINE
            err[1] = row
            err[2] = -1
            err[3] = p
            return row, k, q, integral
        if c == _QUOTE:
            p += 1
            while True:
                if p >= n:
                    err[0] = ERR_ID
                    err[1] = row
                    err[2] = -1
                    err[3] = line_start
                    return row, k, q, integral
                c = buf[p]
                if c == _QUOTE:
                    if p + 1 < n and buf[p + 1] == _QUOTE:
                        ids[q] = _QUOTE
                        q += 1
                        p += 2
                        continue
                    p += 1
                    break
                if c == _LF or c == _CR:
                    err[0] = ERR_ID
                    err[1] = row
                    err[2] = -1
                    err[3] = line_start
                    return row, k, q, integral
                ids[q] = c
                q += 1
                p += 1
            if p < n and buf[p] != _COMMA and buf[p] != _LF and buf[p] != _CR:
                err[0] = ERR_ID
                err[1] = row
                err[2] = -1
                err[3] = line_start
                return row, k, q, integral
        else:
            while p < n:
                c = buf[p]
                if c == _COMMA or c == _LF or c == _CR:
                    break
                ids[q] = c
                q += 1
                p += 1
        ids[q] = _LF
        q += 1
        # ---- fields
        col = 0
        if p < n and buf[p] == _COMMA:
            p += 1
            while True:
                # p is at the start of field `col` (after a comma). The block is followed by
                # 8 readable bytes starting with a NUL sentinel, so that a word compared
                # here never matches across the end of the block.
                if col >= n_genes:
                    err[0] = ERR_TOO_MANY
                    err[1] = row
                    err[2] = col
                    err[3] = p
                    return row, k, q, integral
                w = _load64(buf, p)
                if w == _ZF8:  # "0.0,0.0,"
                    p += 8
                    col += 2
                    continue
                w4 = w & 0xFFFFFFFF
                if w4 == _ZF4:  # "0.0,"
                    p += 4
                    col += 1
                    continue
                if (w4 & 0xFFFFFF00) == _DF4 and 0x31 <= (w4 & 0xFF) <= 0x39:  # "3.0,"
                    out_idx[k] = col
                    out_val[k] = (w4 & 0xFF) - 48
                    k += 1
                    p += 4
                    col += 1
                    continue
                if w == _ZI8:  # "0,0,0,0,"
                    p += 8
                    col += 4
                    continue
                w2 = w & 0xFFFF
                if w2 == _ZI2:  # "0,"
                    p += 2
                    col += 1
                    continue
                if (w2 & 0xFF00) == _DI2 and 0x31 <= (w2 & 0xFF) <= 0x39:  # "3,"
                    out_idx[k] = col
                    out_val[k] = (w2 & 0xFF) - 48
                    k += 1
                    p += 2
                    col += 1
                    continue
                # ---- general field
                start = p
                if p >= n or buf[p] == _COMMA or buf[p] == _LF or buf[p] == _CR:
                    err[0] = ERR_EMPTY
                    err[1] = row
                    err[2] = col
                    err[3] = start
                    return row, k, q, integral
                quoted = buf[p] == _QUOTE
                if quoted:
                    p += 1
                neg = False
                if p < n and buf[p] == 45:  # '-'
                    neg = True
                    p += 1
                elif p < n and buf[p] == 43:  # '+'
                    p += 1
                mant = 0
                nd = 0
                exp10 = 0
                while p < n:
                    d = np.int64(buf[p]) - 48
                    if d < 0 or d > 9:
                        break
                    if mant < 100_000_000_000_000_000:
                        mant = mant * 10 + d
                    else:
                        exp10 += 1
                    nd += 1
                    p += 1
                if p < n and buf[p] == 46:  # '.'
                    p += 1
                    while p < n:
                        d = np.int64(buf[p]) - 48
                        if d < 0 or d > 9:
                            break
                        if mant < 100_000_000_000_000_000:
                            mant = mant * 10 + d
                            exp10 -= 1
                        nd += 1
                        p += 1
                bad = nd == 0
                if not bad and p < n and (buf[p] == 101 or buf[p] == 69):  # 'e' 'E'
                    p += 1
                    eneg = False
                    if p < n and (buf[p] == 45 or buf[p] == 43):
                        eneg = buf[p] == 45
                        p += 1
                    e = 0
                    ne = 0
                    while p < n:
                        d = np.int64(buf[p]) - 48
                        if d < 0 or d > 9:
                            break
                        if e < 100_000:
                            e = e * 10 + d
                        ne += 1
                        p += 1
                    if ne == 0:
                        bad = True
                    exp10 += -e if eneg else e
                if quoted and not bad:
                    if p < n and buf[p] == _QUOTE:
                        p += 1
                    else:
                        bad = True
                if not bad and p < n:
                    c = buf[p]
                    if c != _COMMA and c != _LF and c != _CR:
                        bad = True
                if bad:
                    if quoted and start + 1 < n and buf[start + 1] == _QUOTE:
                        err[0] = ERR_EMPTY
                    else:
                        err[0] = ERR_NONNUMERIC
                    err[1] = row
                    err[2] = col
                    err[3] = start
                    return row, k, q, integral
                if mant != 0:
                    if neg:
                        err[0] = ERR_NEGATIVE
                        err[1] = row
                        err[2] = col
                        err[3] = start
                        return row, k, q, integral
                    is_int = False
                    val = 0.0
                    if exp10 >= 0:
                        if exp10 <= 9 and mant <= _INT32_MAX:
                            iv = mant * _POW10_INT[exp10]
                            if iv <= _INT32_MAX:
                                is_int = True
                                val = float(iv)
                        if not is_int:
                            if exp10 <= 22:
                                val = float(mant) * _POW10_FLOAT[exp10]
                            else:
                                val = float(mant) * 10.0**exp10
                    else:
                        if exp10 >= -18:
                            pw = _POW10_INT[-exp10]
                            if mant % pw == 0 and mant // pw <= _INT32_MAX:
                                is_int = True
                                val = float(mant // pw)
                        if not is_int:
                            if exp10 >= -22:
                                val = float(mant) / _POW10_FLOAT[-exp10]
                            else:
                                val = float(mant) * 10.0**exp10
                    if not (val <= _FLOAT32_MAX):
                        err[0] = ERR_RANGE
                        err[1] = row
                        err[2] = col
                        err[3] = start
                        return row, k, q, integral
                    if not is_int:
                        integral = False
                    if val != 0.0:  # (0.0 here: an underflow, read as zero)
                        out_idx[k] = col
                        out_val[k] = val
                        k += 1
                # ---- delimiter after the field
                col += 1
                if p >= n:
                    break
                c = buf[p]
                if c == _COMMA:
                    p += 1
                    continue
                break
        # ---- end of line: p is at "\n", "\r\n" or the end of the block
        if p < n:
            c = buf[p]
            if c == _LF:
                p += 1
            elif c == _CR and p + 1 < n and buf[p + 1] == _LF:
                p += 2
            elif c == _CR and p + 1 == n:
                p += 1
            else:
                # a bare "\r" or a stray character after the spot id
                err[0] = ERR_NONNUMERIC if col > 0 else ERR_ID
                err[1] = row
                err[2] = col - 1 if col > 0 else -1
                err[3] = p
                return row, k, q, integral
        if col < n_genes:
            err[0] = ERR_TOO_FEW
            err[1] = row
            err[2] = col
            err[3] = line_start
            return row, k, q, integral
        row_nnz[row] = k - k_row
        row += 1
    return row, k, q, integral
