"""The one atomic-write helper: all-or-nothing files with the user's umask."""

from __future__ import annotations

import errno
import os
import stat
import sys

import pytest

from haloscope import atomic
from haloscope.atomic import (
    atomic_open,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    check_writable,
    file_mode,
    is_temp_name,
)
from haloscope.evaluate import cli as eval_cli
from haloscope.evaluate import mine, outputs
from haloscope.train import failures
from tests.output_faults import unwritable_out


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
    target = tmp_path / "scores.parquet"
    with pytest.raises(OSError) as info, atomic_path(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def _tree(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_check_writable_creates_nothing_and_returns_the_path(tmp_path):
    before = _tree(tmp_path)
    out = tmp_path / "new" / "deeper" / "scores.parquet"
    assert check_writable(out) == out
    assert check_writable(tmp_path / "report", folder=True) == tmp_path / "report"
    assert _tree(tmp_path) == before


def test_check_writable_names_what_the_write_would_fail_on(tmp_path):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as err:
        check_writable(folder)
    assert err.value.filename == str(folder)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(NotADirectoryError) as err:
        check_writable(tmp_path / "a-file", folder=True)
    assert err.value.filename == str(tmp_path / "a-file")
    with pytest.raises(NotADirectoryError) as err:  # the first folder mkdir would fail on
        check_writable(tmp_path / "a-file" / "sub" / "out.csv")
    assert err.value.filename == str(tmp_path / "a-file" / "sub")
    (tmp_path / "u").mkdir()
    blocked = unwritable_out(tmp_path / "u")  # read-only folder (or, as root, under a file)
    with pytest.raises(OSError) as err:
        check_writable(blocked / "strat.csv")
    assert err.value.filename == str(blocked) and not blocked.exists()


def test_one_check_writable_for_every_stage():
    assert mine.check_writable is eval_cli.check_writable is check_writable
    assert not hasattr(outputs, "check_writable") and not hasattr(failures, "check_writable")


def test_file_mode_reads_the_umask_without_setting_it(monkeypatch):
    """Setting the umask to read it would let another thread create files under umask 0."""
    if not sys.platform.startswith("linux"):
        pytest.skip("/proc/self/status is Linux only (elsewhere the umask read at import is used)")
    old = os.umask(0o027)
    try:

        def refuse(_mask):
            raise AssertionError("file_mode() set the process umask")

        monkeypatch.setattr(atomic.os, "umask", refuse)
        assert atomic.file_mode() == 0o640
    finally:
        monkeypatch.undo()
        os.umask(old)
