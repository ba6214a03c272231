"""The dispatcher turns an OS refusal into one line naming the path (no traceback)."""

from __future__ import annotations

import errno

from haloscope import cli


def _fake_verb(monkeypatch, exc: BaseException) -> None:
    class Module:
        @staticmethod
        def main(argv):
            raise exc

    monkeypatch.setattr(cli.importlib, "import_module", lambda name: Module)


def test_disk_full_is_one_line_with_the_path(monkeypatch, capsys):
    _fake_verb(monkeypatch, OSError(errno.ENOSPC, "No space left on device", "runs/x/last.pt"))
    assert cli.run_verb("train", []) == 2
    err = capsys.readouterr().err
    assert err == "haloscope train: error: runs/x/last.pt: No space left on device\n"


def test_rename_error_names_both_paths(monkeypatch, capsys):
    exc = PermissionError(errno.EACCES, "Permission denied", "a.tmp", None, "a")
    _fake_verb(monkeypatch, exc)
    assert cli.run_verb("eval", []) == 2
    assert capsys.readouterr().err.strip().endswith("a.tmp -> a: Permission denied")


def test_traceback_on_request(monkeypatch):
    monkeypatch.setenv("HALOSCOPE_TRACEBACK", "1")
    _fake_verb(monkeypatch, OSError(errno.EROFS, "Read-only file system", "/x"))
    try:
        cli.run_verb("shards", [])
    except OSError as exc:
        assert exc.errno == errno.EROFS
    else:
        raise AssertionError("HALOSCOPE_TRACEBACK=1 must re-raise")
