"""Temporary and trash siblings stay within NAME_MAX (255 bytes) for long slide ids."""

from __future__ import annotations

from stimage_sd.io._transaction import (
    TMP_TAG,
    TRASH_TAG,
    cleanup_partial,
    sibling_stem,
    temp_sibling,
)


def test_long_names_get_a_hashed_stem_and_are_cleaned_up(tmp_path):
    short = tmp_path / "GSE1_GSM2.zarr"
    assert sibling_stem(short) == short.name
    for name in ("A" * 240 + ".zarr", "é" * 125 + ".zarr"):  # 245 and 255 bytes
        path = tmp_path / name
        stem = sibling_stem(path)
        assert stem.endswith(".zarr") and "~" in stem
        assert sibling_stem(path) == stem  # deterministic
        siblings = [temp_sibling(path, tag, kind) for tag in (TMP_TAG, TRASH_TAG) for kind in ("", "table")]
        for s in siblings:
            assert len(s.name.encode()) <= 255, len(s.name.encode())
            s.mkdir()  # the file system accepts the name
        other = tmp_path / f".{sibling_stem(tmp_path / ('B' * 240 + '.zarr'))}{TMP_TAG}1-abcdef12"
        other.mkdir()
        removed = cleanup_partial(path)
        assert sorted(removed) == sorted(siblings)
        assert other.exists()  # another store's sibling is left alone
        other.rmdir()
