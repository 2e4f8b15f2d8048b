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
