"""Process plumbing: binaries in a private folder are run from a copy the service user reaches."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from visage_ml.stack import proc


def test_a_binary_in_a_private_folder_runs_as_the_service_user_from_a_copy():
    # A virtual environment cloned into `mktemp -d` (0700): `nobody` cannot enter it.
    private = Path(tempfile.mkdtemp())
    tool = private / "pkg" / "bin" / "tool"
    tool.parent.mkdir(parents=True)
    tool.write_text('#!/bin/sh\ncat "$(dirname "$0")/../../libs/lib.txt"\n')
    tool.chmod(0o755)
    (private / "libs").mkdir()
    (private / "libs" / "lib.txt").write_text("bundled library\n")
    try:
        package = proc.service_copy(private / "pkg", keep=("libs",))
        runnable = package / "bin" / "tool"
        if proc.dropping():  # run as root: the servers run as nobody
            assert not proc.reachable(tool) and proc.reachable(runnable)
            assert private not in runnable.parents
            out = subprocess.run(
                proc.as_service([str(runnable)]), capture_output=True, text=True, check=True
            )
            assert out.stdout == "bundled library\n"  # the sibling folder came along
            # Asked again, the same copy (made once).
            assert proc.service_copy(private / "pkg", keep=("libs",)) == package
            cache = package.parent.parent
            assert cache.stat().st_uid == os.geteuid() and not cache.stat().st_mode & 0o022
        else:  # an unprivileged user runs the servers as itself: nothing to copy
            assert runnable == tool.resolve()
    finally:
        subprocess.run(["rm", "-rf", str(private)], check=False)


def test_a_copy_another_process_finished_first_is_kept_for_the_servers_running_from_it(
    monkeypatch,
):
    """Two processes (the suite's two workers) start their servers at once: each finds no copy
    and makes one. The second to finish must not remove the first's, from which a PostgreSQL
    is already reading (CI: initdb failed, "pg_ident.conf.sample does not exist")."""
    if not proc.dropping():  # an unprivileged user runs the servers as itself: nothing to copy
        return
    private = Path(tempfile.mkdtemp())
    (private / "pkg" / "share").mkdir(parents=True)
    (private / "pkg" / "share" / "sample.conf").write_text("in use\n")
    try:
        first = proc.service_copy(private / "pkg")
        in_use = open(first / "share" / "sample.conf")  # noqa: SIM115 - held as a server holds it
        # The second process looked (once) before the first had finished.
        looked = iter([False])
        complete = proc._complete
        monkeypatch.setattr(
            proc, "_complete", lambda target: next(looked, None) or complete(target)
        )
        second = proc.service_copy(private / "pkg")
        monkeypatch.undo()
        assert second == first
        with in_use:
            assert os.fstat(in_use.fileno()).st_nlink == 1  # the first's file is still there
        assert (first / "share" / "sample.conf").read_text() == "in use\n"
        assert not [p.name for p in first.parent.parent.glob(".staging-*")]
    finally:
        subprocess.run(["rm", "-rf", str(private)], check=False)
