"""Tests of the streaming count-matrix reader, with pandas.read_csv as the oracle."""

from __future__ import annotations

import csv
import hashlib
import io
import re

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from stimage_sd.errors import FormatError
from stimage_sd.io import Counts, read_counts

SETTINGS = settings(
    max_examples=int(__import__("os").environ.get("COUNTS_EXAMPLES", 60)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --------------------------------------------------------------------------- writer


def _fmt(v: float, style: str, rnd: np.random.Generator) -> str:
    """One value as some CSV writer would write it."""
    if v == 0:
        return (
            str(rnd.choice(["0", "0.0", "0.00", "-0.0", "0e0", "0.0e+00"]))
            if style == "mixed"
            else ("0" if style == "int" else "0.0")
        )
    if style == "int" and float(v).is_integer():
        return str(int(v))
    if style == "float" or not float(v).is_integer():
        return repr(float(v))
    return str(
        rnd.choice(
            [
                f"{int(v)}",
                f"{v:.1f}",
                f"{v:e}",
                f"{v:.2E}",
                f"{int(v)}.",
                f"+{int(v)}",
                f"{v * 10:.0f}e-1",
                f"{int(v)}00e-2",
                f"0.{int(v)}e{len(str(int(v)))}",
            ]
        )
    )


def write_counts(
    genes: list[str],
    ids: list[str],
    values: np.ndarray,
    *,
    style: str = "float",
    bom: bool = False,
    crlf: bool = False,
    final_newline: bool = True,
    quote_numbers: bool = False,
    quote_ids: bool = False,
    writer: str = "csv",
    seed: int = 0,
) -> bytes:
    """Write a release-format count file with the given dialect features."""
    rnd = np.random.default_rng(seed)
    eol = "\r\n" if crlf else "\n"
    if writer == "pandas":
        df = pd.DataFrame(
            values.astype(np.float64 if style != "int" else np.int64),
            index=ids,
            columns=range(len(genes)),
        )
        df.columns = genes
        text = df.to_csv(lineterminator=eol)
    else:
        out = io.StringIO()
        w = csv.writer(
            out, lineterminator=eol, quoting=csv.QUOTE_ALL if quote_numbers else csv.QUOTE_MINIMAL
        )
        w.writerow(["", *genes])
        for sid, row in zip(ids, values, strict=True):
            cells = [_fmt(v, style, rnd) for v in row]
            if quote_ids and not quote_numbers:
                out.write('"' + sid.replace('"', '""') + '",')
                w.writerow(cells)
            else:
                w.writerow([sid, *cells])
        text = out.getvalue()
    if not final_newline and text.endswith(eol) and len(ids):
        text = text[: -len(eol)]
    data = text.encode("utf-8")
    return (b"\xef\xbb\xbf" + data) if bom else data


def oracle(data: bytes) -> np.ndarray:
    """Values as pandas reads them, correctly rounded (``float_precision="round_trip"``)."""
    df = pd.read_csv(io.BytesIO(data), index_col=0, float_precision="round_trip")
    return df.to_numpy(dtype=np.float64)


def _significant_digits(v: float) -> int:
    digits = np.format_float_scientific(v, unique=True, trim="-").split("e")[0].replace(".", "")
    return len(digits.lstrip("0").rstrip("0")) or 1


def expected_dtype(values: np.ndarray) -> np.dtype:
    """The documented rule (docs/data_contract.md), from the values pandas reads."""
    v = values[values != 0]
    if np.all(v == np.round(v)):
        return np.dtype(np.int32 if v.size == 0 or v.max() <= 2**31 - 1 else np.int64)
    tiny, big = np.finfo(np.float32).tiny, np.finfo(np.float32).max
    f32 = all(
        float(np.float32(x)) == x or (_significant_digits(x) <= 6 and tiny <= x <= big) for x in v
    )
    return np.dtype(np.float32 if f32 else np.float64)


def assert_exact(X: np.ndarray, expected: np.ndarray) -> None:
    """Every value stored exactly: integers and float64 equal; a float32 gives back the decimal."""
    if X.dtype == np.float32:
        for x, e in zip(X.ravel(), expected.ravel(), strict=True):
            assert float(x) == e or float(np.format_float_positional(x, unique=True)) == e, (x, e)
    else:
        np.testing.assert_array_equal(X.astype(np.float64), expected)


def check_against_oracle(c: Counts, data: bytes, genes, ids) -> None:
    expected = oracle(data)
    assert isinstance(c.X, sp.csr_matrix)
    assert c.X.shape == expected.shape == (len(ids), len(genes))
    assert list(c.genes) == list(genes)
    assert list(c.spot_ids) == list(ids)
    assert c.spot_ids.dtype == object and c.genes.dtype == object
    assert c.X.dtype == expected_dtype(expected)
    assert_exact(c.X.toarray(), expected)
    # canonical CSR: no explicit zeros, sorted column indices
    assert np.all(c.X.data != 0)
    assert c.X.has_canonical_format
    assert c.X.indptr[-1] == c.X.nnz


# --------------------------------------------------------------------------- strategies

gene_names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00\r", exclude_categories=["Cs"]),
    max_size=6,
) | st.sampled_from(["MT-CO1", "ENSG00000252615.1", "RP11-6L6.2", 'a,"b"', "x,y", '"', "Gene"])
spot_ids = st.text(alphabet=st.sampled_from('ACGT-_.1+ ,"é'), min_size=1, max_size=10).map(
    lambda s: "s" + s
)


@st.composite
def count_files(draw):
    n_genes = draw(st.integers(1, 12))
    n_spots = draw(st.integers(0, 12))
    genes = draw(st.lists(gene_names, min_size=n_genes, max_size=n_genes))
    if draw(st.booleans()) and n_genes > 1:
        genes[-1] = genes[0]  # duplicated gene names occur in the release
    ids = draw(st.lists(spot_ids, min_size=n_spots, max_size=n_spots, unique=True))
    seed = draw(st.integers(0, 2**16))
    rnd = np.random.default_rng(seed)
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    values = (rnd.random((n_spots, n_genes)) < density) * rnd.geometric(
        0.3, size=(n_spots, n_genes)
    ).astype(float)
    if draw(st.booleans()):
        values[rnd.random(values.shape) < 0.2] = draw(
            st.sampled_from([0.5, 2.25, 1e-3, 1234.5678, 1e6 + 0.5])
        )
    if draw(st.booleans()):
        values[rnd.random(values.shape) < 0.05] = draw(
            st.sampled_from([1e3, 2**31 - 1, 3e9, 99999999])
        )
    opts = {
        "style": draw(st.sampled_from(["float", "int", "mixed"])),
        "bom": draw(st.booleans()),
        "crlf": draw(st.booleans()),
        "final_newline": draw(st.booleans()),
        "quote_numbers": draw(st.booleans()),
        "quote_ids": draw(st.booleans()),
        "writer": draw(st.sampled_from(["csv", "csv", "pandas"])),
        "seed": seed,
    }
    return genes, ids, values, opts


# --------------------------------------------------------------------------- oracle tests


@SETTINGS
@given(
    spec=count_files(),
    chunk=st.sampled_from([1, 7, 64, 1 << 20]),
    workers=st.sampled_from([1, 2]),
)
@pytest.mark.slow
def test_matches_pandas(spec, chunk, workers):
    genes, ids, values, opts = spec
    data = write_counts(genes, ids, values, **opts)
    c = read_counts(io.BytesIO(data), chunk_bytes=chunk, workers=workers, checksum=bool(chunk % 2))
    check_against_oracle(c, data, genes, ids)
    # the checksum is of every byte of the stream, whatever the block size
    assert c.sha256 == (hashlib.sha256(data).hexdigest() if chunk % 2 else None)


@SETTINGS
@given(spec=count_files(), chunk=st.sampled_from([5, 64, 1 << 20]), pick=st.integers(0, 2**16))
def test_spot_selection_keeps_file_order(spec, chunk, pick):
    genes, ids, values, opts = spec
    data = write_counts(genes, ids, values, **opts)
    full = read_counts(io.BytesIO(data))
    rnd = np.random.default_rng(pick)
    keep = [s for s in ids if rnd.random() < 0.5]
    sub = read_counts(io.BytesIO(data), spots=[*reversed(keep), "not-a-spot"], chunk_bytes=chunk)
    assert list(sub.spot_ids) == keep
    rows = [ids.index(s) for s in keep]
    np.testing.assert_array_equal(sub.X.toarray(), full.X.toarray()[rows].astype(sub.X.dtype))


def test_dialect_features_together(tmp_path):
    data = (
        b'\xef\xbb\xbf"",GAPDH,"HLA-A,B","say ""hi""",GAPDH\r\n'
        b"s1,0.0,3.0,1e+03,-0.0\r\n"
        b'"s,2",1,0,0.0,12.000\r\n'
        b's3,"2.0",0.0,1E2,0'
    )
    path = tmp_path / "x_count.csv"
    path.write_bytes(data)
    for source in (path, str(path), io.BytesIO(data)):
        c = read_counts(source)
        assert list(c.genes) == ["GAPDH", "HLA-A,B", 'say "hi"', "GAPDH"]
        assert list(c.spot_ids) == ["s1", "s,2", "s3"]
        assert c.X.dtype == np.int32
        np.testing.assert_array_equal(
            c.X.toarray(), [[0, 3, 1000, 0], [1, 0, 0, 12], [2, 0, 100, 0]]
        )


def test_multiline_quoted_header_counts_lines():
    data = b',"two\nlines",g\ns1,1,x\n'
    with pytest.raises(FormatError) as e:
        read_counts(io.BytesIO(data))
    assert e.value.line == 3 and e.value.column == "g"


@pytest.mark.parametrize("chunk", [3, 1 << 20])
def test_float_after_integers_converts_earlier_rows(chunk):
    rows = [f"s{i}," + ",".join(["0.0", "7.0", "16777217.0"]) for i in range(50)] + ["last,0.5,0,1"]
    data = (",a,b,c\n" + "\n".join(rows) + "\n").encode()
    c = read_counts(io.BytesIO(data), chunk_bytes=chunk, workers=2)
    # 16777217 is not a float32: a non-integer in the file makes the whole matrix float64
    assert c.X.dtype == np.float64
    np.testing.assert_array_equal(c.X.toarray(), oracle(data))


def test_int32_overflow_gives_int64():
    c = read_counts(io.BytesIO(b",a,b\ns1,2147483647,1\n"))
    assert c.X.dtype == np.int32 and c.X[0, 0] == 2**31 - 1
    c = read_counts(io.BytesIO(b",a,b\ns1,2147483653,1\n"))
    assert c.X.dtype == np.int64 and c.X[0, 0] == 2147483653
    c = read_counts(io.BytesIO(b",a,b\ns1,9007199254740992,1\n"))
    assert c.X.dtype == np.int64 and c.X[0, 0] == 2**53


@pytest.mark.parametrize("chunk", [3, 1 << 20])
@pytest.mark.parametrize(
    ("rows", "dtype"),
    [
        (["16777217,3.5", "0,1"], np.float64),  # the case: float32 would give 16777216
        (["16777216,3.5", "0,1"], np.float32),  # 2**24 is a float32
        (["0.1,3.5", "0,1"], np.float32),  # float32 gives back "0.1"
        (["0.1234567,1", "0,1"], np.float64),  # 7 significant digits
        (["0.30000000000000004,1", "0,1"], np.float64),  # 17 digits (Python's repr)
        (["1e-30,1", "0,2.5"], np.float32),
        (["1e-40,1", "0,2.5"], np.float64),  # below float32's normal range
        (["2147483653,0", "0,1"], np.int64),
        (["2147483653,0.5", "0,1"], np.float64),
        (["4294967296,0.5", "0,1"], np.float32),  # 2**32 is a float32
    ],
)
def test_dtype_holds_every_value_exactly(rows, dtype, chunk):
    data = (",a,b\n" + "".join(f"s{i},{r}\n" for i, r in enumerate(rows))).encode()
    for later in (False, True):  # the value that decides the dtype first, or in a later block
        text = data if not later else (",a,b\n" + "".join(f"t{i},0,1\n" for i in range(40))).encode() + data[5:]
        c = read_counts(io.BytesIO(text), chunk_bytes=chunk, workers=2)
        expected = oracle(text)
        assert c.X.dtype == dtype == expected_dtype(expected)
        assert_exact(c.X.toarray(), expected)


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        ("9007199254740993", "out of range"),  # 2**53 + 1: float64 cannot hold it
        ("1e20", "out of range"),
        ("1e39", "out of range"),
        ("1e-400", "out of range"),  # underflows float64
        ("1e-310", "out of range"),  # float64 subnormal: digits lost
        ("0.12345678901234567891", "more than 17 significant digits"),
    ],
)
def test_values_that_cannot_be_stored_exactly_are_refused(value, pattern):
    data = f",a,b\ns1,1,2\ns2,{value},1\n".encode()
    with pytest.raises(FormatError, match=pattern) as e:
        read_counts(io.BytesIO(data))
    assert e.value.line == 3


def test_dtype_float32_refuses_inexact_values():
    with pytest.raises(FormatError, match="float32 was asked for"):
        read_counts(io.BytesIO(b",a,b\ns1,16777217,3.5\n"), dtype="float32")
    c = read_counts(io.BytesIO(b",a,b\ns1,16777217,3.5\n"), dtype="float64")
    assert c.X.dtype == np.float64 and c.X[0, 0] == 16777217


def test_dtype_float32_override():
    c = read_counts(io.BytesIO(b",a,b\ns1,3.0,0\ns2,0,1\n"), dtype="float32")
    assert c.X.dtype == np.float32
    np.testing.assert_array_equal(c.X.toarray(), [[3, 0], [0, 1]])
    with pytest.raises(ValueError, match="dtype"):
        read_counts(io.BytesIO(b",a\ns1,1\n"), dtype="int64")
    with pytest.raises(ValueError, match="positive"):
        read_counts(io.BytesIO(b",a\ns1,1\n"), workers=0)


def test_zero_rows_give_empty_matrix():
    for data in (b",a,b,c\n", b",a,b,c", b"\xef\xbb\xbf,a,b,c\r\n"):
        c = read_counts(io.BytesIO(data))
        assert c.X.shape == (0, 3) and c.X.nnz == 0
        assert list(c.genes) == ["a", "b", "c"] and len(c.spot_ids) == 0


def test_non_seekable_stream_without_readinto():
    class Pipe:
        def __init__(self, data: bytes):
            self._b = io.BytesIO(data)

        def read(self, n=-1):
            return self._b.read(min(n, 3))  # short reads, like a socket

    data = b",a,b\ns1,1.0,0.0\ns2,0.0,2.0\n"
    c = read_counts(Pipe(data), chunk_bytes=4)
    np.testing.assert_array_equal(c.X.toarray(), [[1, 0], [0, 2]])


def test_long_lines_and_real_writer_output():
    rnd = np.random.default_rng(1)
    values = (rnd.random((30, 3000)) < 0.05) * rnd.integers(1, 500, size=(30, 3000))
    genes = [f"G{i}" for i in range(3000)]
    ids = [f"Slide_AAAC{i:04d}-1" for i in range(30)]
    data = write_counts(genes, ids, values.astype(float), writer="pandas")
    for chunk in (100, 4096, 1 << 22):
        c = read_counts(io.BytesIO(data), chunk_bytes=chunk, workers=2)
        check_against_oracle(c, data, genes, ids)


def test_text_stream_is_rejected():
    with pytest.raises(TypeError, match="binary"):
        read_counts(io.StringIO(",a\ns,1\n"))


# --------------------------------------------------------------------------- errors

HEADER = b",g0,g1,g2\n"
GOOD = b"s1,0.0,1.0,2.0\n"


@pytest.mark.parametrize("chunk", [4, 1 << 20])
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize(
    ("bad_row", "gene", "pattern"),
    [
        (b"s9,1.0,2.0\n", "g2", "too few values"),
        (b"s9,1.0,2.0", "g2", "too few values"),  # a file cut in its last line
        (b"s9\n", "g0", "no value"),
        (b"s9,1.0,2.0,3.0,4.0\n", "g2", "too many values"),
        (b"s9,1.0,2.0,3.0,\n", "g2", "too many values"),
        (b"s9,0.0,0.0,0.0,0.0\n", "g2", "too many values"),
        (b"s9,0,0,0,0,0,0,0\n", "g2", "too many values"),
        (b"s9,1.0,,2.0\n", "g1", "empty value"),
        (b"s9,1.0,2.0,\n", "g2", "empty value"),
        (b"s9,1.0,  ,2.0\n", "g1", "empty value"),
        (b's9,1.0,"",2.0\n', "g1", "empty value"),
        (b"s9,NaN,1,2\n", "g0", "non-finite value 'NaN'"),
        (b"s9,1,nan,2\n", "g1", "non-finite"),
        (b"s9,1,2,inf\n", "g2", "non-finite value 'inf'"),
        (b"s9,1,-inf,2\n", "g1", "non-finite"),
        (b"s9,1,Infinity,2\n", "g1", "non-finite"),
        (b"s9,1,-3.0,2\n", "g1", "negative count '-3.0'"),
        (b"s9,-1,0,0\n", "g0", "negative"),
        (b"s9,1,abc,2\n", "g1", "not a number: 'abc'"),
        (b"s9,1,1.2.3,2\n", "g1", "not a number"),
        (b"s9,1,1e,2\n", "g1", "not a number"),
        (b"s9,1,3x,2\n", "g1", "not a number"),
        (b"s9,1, 3x,2\n", "g1", "not a number"),
        (b"s9,1,0x1F,2\n", "g1", "not a number"),
        (b"s9,1,1e39,2\n", "g1", "out of range"),
    ],
)
def test_malformed_values_name_line_and_gene(bad_row, gene, pattern, chunk, workers):
    data = HEADER + GOOD * 5 + bad_row + (GOOD if bad_row.endswith(b"\n") else b"")
    with pytest.raises(FormatError) as e:
        read_counts(io.BytesIO(data), chunk_bytes=chunk, workers=workers)
    err = e.value
    assert err.line == 7, str(err)
    assert err.column == gene, str(err)
    assert err.spot == "s9"
    assert err.path == "<stream>"
    assert pattern in str(err)
    assert "line 7" in str(err) and repr(gene) in str(err)


@pytest.mark.parametrize(
    ("data", "line", "pattern"),
    [
        (b"", 1, "empty count file"),
        (b"\xef\xbb\xbf", 1, "empty"),
        (b"\n", 1, "empty header"),
        (HEADER + GOOD + b"\n" + GOOD, 3, "empty line"),
        (HEADER + GOOD + b'"s9,1,2,3\n', 3, "quoted spot id"),
        (HEADER + GOOD + b'"s9"x,1,2,3\n', 3, "quoted spot id"),
        (HEADER + GOOD + b"\xff\xfe,1,2,3\n", 3, "UTF-8"),
        (b',"g0,g1\ns1,1,2\n', 1, "header"),
    ],
)
def test_malformed_structure(data, line, pattern):
    with pytest.raises(FormatError, match=re.escape(pattern)) as e:
        read_counts(io.BytesIO(data), chunk_bytes=8)
    assert e.value.line == line


@pytest.mark.parametrize("spots", [None, ["s1", "s2", "s3"]])
def test_duplicate_spot_ids(spots):
    data = HEADER + b"s1,1,2,3\ns2,1,2,3\ns0,1,1,1\ns2,0,0,0\ns3,1,1,1\n"
    with pytest.raises(FormatError, match=r"duplicated spot id \(first on line 3\)") as e:
        read_counts(io.BytesIO(data), spots=spots, chunk_bytes=10)
    assert e.value.line == 5 and e.value.spot == "s2"


def test_error_names_the_file(tmp_path):
    path = tmp_path / "Slide_count.csv"
    path.write_bytes(HEADER + GOOD + b"s2,1,x,3\n")
    with pytest.raises(FormatError) as e:
        read_counts(path)
    assert e.value.path == str(path) and str(path) in str(e.value)
    with open(path, "rb") as f, pytest.raises(FormatError) as e:
        read_counts(f)
    assert e.value.path == str(path)


BAD_TOKENS = [
    "",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "-1",
    "-0.5",
    "abc",
    "1.2.3",
    "1e",
    "--1",
    "1-",
    "e5",
    ".",
    "1 x",
]


@SETTINGS
@given(
    spec=count_files(),
    token=st.sampled_from(BAD_TOKENS),
    where=st.tuples(st.integers(0, 2**16), st.integers(0, 2**16)),
    chunk=st.sampled_from([3, 50, 1 << 20]),
)
def test_corrupted_cell_is_located(spec, token, where, chunk):
    genes, ids, values, opts = spec
    assume(len(ids) > 0)
    opts = {**opts, "quote_numbers": False, "writer": "csv", "style": "float"}
    r, j = where[0] % len(ids), where[1] % len(genes)
    good = write_counts(genes, ids, values, **opts)
    # rebuild the file with one cell replaced (the writer is deterministic for style=float)
    text = good.decode("utf-8-sig")
    eol = "\r\n" if opts["crlf"] else "\n"
    header = next(csv.reader(io.StringIO(text, newline="")))
    physical = sum(g.count("\n") for g in header) + 1  # physical lines of the header
    lines = text.split(eol)
    at = sum(g.count(eol) for g in header) + 1 + r  # index of the row in `lines`
    row = next(csv.reader([lines[at]]))
    row[1 + j] = token
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(row)
    lines[at] = out.getvalue()
    data = (b"\xef\xbb\xbf" if opts["bom"] else b"") + eol.join(lines).encode()
    with pytest.raises(FormatError) as e:
        read_counts(io.BytesIO(data), chunk_bytes=chunk, workers=2)
    assert e.value.line == physical + r + 1
    assert e.value.column == genes[j]
    assert e.value.spot == ids[r]


def test_unbalanced_quote_in_header_does_not_read_the_whole_file(monkeypatch):
    from stimage_sd.io import _counts

    monkeypatch.setattr(_counts, "_MAX_HEADER", 1000)
    data = b',"g0,g1\n' + b"s1,1,2\n" * 1000
    with pytest.raises(FormatError, match="unbalanced quote") as e:
        read_counts(io.BytesIO(data), chunk_bytes=64)
    assert e.value.line == 1


def test_control_character_in_spot_id_is_an_error():
    import io

    from stimage_sd.errors import FormatError
    from stimage_sd.io import read_counts

    with pytest.raises(FormatError, match=r"line 3\).*control character"):
        read_counts(io.BytesIO(b",g1,g2\na,1.0,0.0\nb\x00x,0,2\n"))


@pytest.mark.parametrize("chunk", [3, 100, 1 << 20])
@pytest.mark.parametrize(
    ("seq", "dtype"),
    [
        (["4294967296,0", "0,0.5"], np.float32),  # int32 -> int64 -> float32 (narrowed in place)
        (["2147483653,0", "0,0.5"], np.float64),  # int32 -> int64 -> float64
        (["3,1", "2147483653,0", "0.1234567,1", "7,7"], np.float64),
        (["0.5,1", "16777217,2"], np.float64),  # float32 -> float64
    ],
)
def test_dtype_changes_across_blocks_keep_earlier_values(seq, dtype, chunk):
    rng = np.random.default_rng(0)
    rows = [f"s{i},{rng.integers(0, 9)},{rng.integers(0, 9)}" for i in range(300)]
    for j, r in enumerate(seq):
        rows.insert(50 + 80 * j, f"x{j},{r}")
    data = (",a,b\n" + "\n".join(rows) + "\n").encode()
    c = read_counts(io.BytesIO(data), chunk_bytes=chunk, workers=2)
    assert c.X.dtype == dtype
    assert_exact(c.X.toarray(), oracle(data))
