"""The one atomic-write helper: all-or-nothing files with the user's umask."""

from __future__ import annotations

import os
import stat

import pytest

from haloscope.atomic import (
    atomic_open,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    file_mode,
    is_temp_name,
)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_get_the_umask_mode_not_mkstemp_0600(tmp_path, umask_022):
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_write_text(tmp_path / "b.txt", "y")
    with atomic_path(tmp_path / "c.dat") as tmp:
        tmp.write_bytes(b"z")
    assert file_mode() == 0o644
    for name in ("a.bin", "b.txt", "c.dat"):
        assert _mode(tmp_path / name) == 0o644, name


def test_a_group_writable_umask_is_honoured(tmp_path):
    old = os.umask(0o002)
    try:
        atomic_write_text(tmp_path / "g.txt", "g")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "g.txt") == 0o664


def test_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as fh:
        fh.write("half of the new")
        raise RuntimeError("disk full, say")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_success_replaces_and_leaves_only_the_destination(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_a_writer_that_writes_nothing_is_an_error_not_an_empty_file(tmp_path):
    target = tmp_path / "never.parquet"
    with pytest.raises(FileNotFoundError), atomic_path(target) as tmp:
        tmp.unlink()
    assert not target.exists()


def test_temp_names_are_recognised_for_cleanup(tmp_path):
    seen = []
    with atomic_path(tmp_path / "manifest.json") as tmp:
        seen.append(tmp.name)
        tmp.write_text("{}")
    assert is_temp_name(seen[0])
    assert not is_temp_name("manifest.json")


def test_unwritable_parent_raises_oserror_naming_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError) as info:
        atomic_write_text(blocker / "out.txt", "x")
    assert str(blocker) in str(info.value.filename)


def test_text_mode_only():
    with pytest.raises(ValueError, match="mode"), atomic_open("x", "a"):
        pass


def test_an_oserror_without_a_filename_gets_the_destination(tmp_path):
    import errno

    target = tmp_path / "scores.parquet"
    with pytest.raises(OSError) as info, atomic_path(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []
