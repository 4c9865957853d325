"""Compiled parser of the data rows of a dense count CSV (numba, releases the GIL).

One call parses a byte block made of whole lines (the last one may lack its newline at the
end of the file) into CSR pieces: the column index and value of every non-zero field, the
number of non-zeros of each row and the spot ids (unquoted, one per line). Zero fields are
skipped without being converted: runs of ``0.0,`` and ``0,`` are compared eight bytes at a
time, which is what makes dense-on-disk, sparse-in-content files fast to read.

Numbers are parsed exactly as decimal mantissa and exponent, and classified so that the
caller can pick the narrowest dtype that stores every value of the file *exactly* (flags
returned per block, see :data:`F_NONINT` ...):

- an *integer* (``3``, ``3.0``, ``1e+03``, ``2.50e1``) up to ``2**53`` is carried exactly in
  float64; above ``2**31 - 1`` it needs ``int64`` (:data:`F_INT64`); above ``2**53`` it is
  refused (:data:`ERR_RANGE`);
- a *non-integer* (:data:`F_NONINT`) is converted to the nearest float64: here when the
  mantissa, stripped of trailing zeros, has at most 15 digits and the exponent is within
  ±22 (exact fast path), else by the caller (:data:`F_SLOW`: the value is left as
  ``-(byte offset + 1)`` for Python's correctly rounded ``float``). More than 17 significant
  digits cannot be stored exactly (:data:`ERR_DIGITS`); a value that underflows float64's
  normal range is refused (:data:`ERR_RANGE`);
- any value that float32 does not hold (:data:`F_F32_INEXACT`): an integer ``float32``
  rounds, or a non-integer with more than 6 significant digits (float32's decimal precision)
  that is not a float32 number itself, or outside float32's normal range.

Spaces and tabs around a number are ignored (``pandas.read_csv`` does the same).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = [
    "ERR_DIGITS",
    "ERR_EMPTY",
    "ERR_EMPTY_LINE",
    "ERR_ID",
    "ERR_LONE_CR",
    "ERR_NEGATIVE",
    "ERR_NONNUMERIC",
    "ERR_RANGE",
    "ERR_TOO_FEW",
    "ERR_TOO_MANY",
    "F_F32_INEXACT",
    "F_INT64",
    "F_NONINT",
    "F_SLOW",
    "F_TRAILING_BLANK",
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
ERR_DIGITS = 9
ERR_LONE_CR = 10

#: Block flags returned by :func:`parse_block`.
F_NONINT = 1  # a non-integer value
F_INT64 = 2  # an integer above 2**31 - 1
F_F32_INEXACT = 4  # a value float32 does not hold exactly
F_SLOW = 8  # values left for the caller to convert (see the module docstring)
F_TRAILING_BLANK = 16  # the block ends with blank lines (err[3]: offset of the first)

_COMMA, _LF, _CR, _QUOTE = 44, 10, 13, 34
# little-endian words of "0.0,0.0," (two zero fields) and "0,0,0,0," (four)
_ZF8 = int.from_bytes(b"0.0,0.0,", "little")
_ZI8 = int.from_bytes(b"0,0,0,0,", "little")
_ZF4 = int.from_bytes(b"0.0,", "little")
_ZI2 = int.from_bytes(b"0,", "little")
_DF4 = int.from_bytes(b"\0.0,", "little")  # "<digit>.0," with the digit masked out
_DI2 = int.from_bytes(b"\0,", "little")
_INT32_MAX = 2**31 - 1
_INT53 = 2**53
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32
_FLOAT64_TINY = float(np.finfo(np.float64).tiny)
_SP, _TAB = 32, 9
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
    (rows, nnz, id_bytes, flags)

    """
    p = 0
    row = 0
    k = 0
    q = 0
    flags = 0
    while p < n:
        line_start = p
        k_row = k
        # ---- spot id
        c = buf[p]
        if c == _LF or c == _CR:
            # blank lines: legal only at the end of the file (as pandas and R read them);
            # the caller learns whether more data follows in a later block
            t = p
            while t < n and (buf[t] == _LF or buf[t] == _CR):
                t += 1
            err[1] = row
            err[2] = -1
            err[3] = p
            if t == n:
                flags |= F_TRAILING_BLANK
            else:
                err[0] = ERR_EMPTY_LINE
            return row, k, q, flags
        if c == _QUOTE:
            p += 1
            while True:
                if p >= n:
                    err[0] = ERR_ID
                    err[1] = row
                    err[2] = -1
                    err[3] = line_start
                    return row, k, q, flags
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
                    return row, k, q, flags
                ids[q] = c
                q += 1
                p += 1
            if p < n and buf[p] != _COMMA and buf[p] != _LF and buf[p] != _CR:
                err[0] = ERR_ID
                err[1] = row
                err[2] = -1
                err[3] = line_start
                return row, k, q, flags
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
                    return row, k, q, flags
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
                    return row, k, q, flags
                quoted = buf[p] == _QUOTE
                if quoted:
                    p += 1
                while p < n and (buf[p] == _SP or buf[p] == _TAB):
                    p += 1
                if p >= n or buf[p] == _COMMA or buf[p] == _LF or buf[p] == _CR:
                    err[0] = ERR_EMPTY  # blank (spaces only)
                    err[1] = row
                    err[2] = col
                    err[3] = start
                    return row, k, q, flags
                neg = False
                if p < n and buf[p] == 45:  # '-'
                    neg = True
                    p += 1
                elif p < n and buf[p] == 43:  # '+'
                    p += 1
                mant = 0
                nd = 0
                exp10 = 0
                lost = False  # a non-zero digit beyond the 18 kept
                while p < n:
                    d = np.int64(buf[p]) - 48
                    if d < 0 or d > 9:
                        break
                    if mant < 100_000_000_000_000_000:
                        mant = mant * 10 + d
                    else:
                        exp10 += 1
                        if d != 0:
                            lost = True
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
                        elif d != 0:
                            lost = True
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
                while p < n and (buf[p] == _SP or buf[p] == _TAB):
                    p += 1
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
                    return row, k, q, flags
                if mant != 0:
                    if neg:
                        err[0] = ERR_NEGATIVE
                        err[1] = row
                        err[2] = col
                        err[3] = start
                        return row, k, q, flags
                    # exact integer, or non-integer (see the module docstring)
                    ms = mant
                    e2 = exp10
                    while ms % 10 == 0:
                        ms //= 10
                        e2 += 1
                    sig = 1
                    t = ms
                    while t >= 10:
                        t //= 10
                        sig += 1
                    val = 0.0
                    if e2 >= 0:  # an integer
                        if lost or e2 > 15 or ms > _INT53 // _POW10_INT[e2]:
                            err[0] = ERR_RANGE
                            err[1] = row
                            err[2] = col
                            err[3] = start
                            return row, k, q, flags
                        iv = ms * _POW10_INT[e2]
                        val = float(iv)
                        if iv > _INT32_MAX:
                            flags |= F_INT64
                        if iv > 16_777_216 and float(np.float32(val)) != val:
                            flags |= F_F32_INEXACT
                    else:
                        flags |= F_NONINT
                        if lost or sig > 17:
                            err[0] = ERR_DIGITS
                            err[1] = row
                            err[2] = col
                            err[3] = start
                            return row, k, q, flags
                        if ms <= _INT53 and e2 >= -22:
                            val = float(ms) / _POW10_FLOAT[-e2]
                            if val < _FLOAT64_TINY:
                                err[0] = ERR_RANGE
                                err[1] = row
                                err[2] = col
                                err[3] = start
                                return row, k, q, flags
                            if not (
                                (sig <= 6 and _FLOAT32_TINY <= val <= _FLOAT32_MAX)
                                or float(np.float32(val)) == val
                            ):
                                flags |= F_F32_INEXACT
                        else:
                            flags |= F_SLOW
                            if sig > 6:
                                flags |= F_F32_INEXACT
                            val = -float(start + 1)
                    if val != 0.0:
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
            elif c == _CR:
                err[0] = ERR_LONE_CR
                err[1] = row
                err[2] = -1
                err[3] = p
                return row, k, q, flags
            else:
                # a bare "\r" or a stray character after the spot id
                err[0] = ERR_NONNUMERIC if col > 0 else ERR_ID
                err[1] = row
                err[2] = col - 1 if col > 0 else -1
                err[3] = p
                return row, k, q, flags
        if col < n_genes:
            err[0] = ERR_TOO_FEW
            err[1] = row
            err[2] = col
            err[3] = line_start
            return row, k, q, flags
        row_nnz[row] = k - k_row
        row += 1
    return row, k, q, flags
