"""The content scan looks at the project's files in processes where the scan reads enough to
pay for them: its work is Python, value by value, and the threads of one process shared one
core's worth of it (two threads gave 1.0x on a 3 GB project). Forked where the process is
alone (the command line), a fork server's children beside other threads (the service).

What it finds, and what the file cache keeps, is what the threads found and kept; a process
killed (out of memory), or one or a thread that hangs, stops the scan, and the erasure, instead
of passing its files as clean.
"""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import os
import signal
import threading
import time
import zipfile
from pathlib import Path

import pytest
from rights_fakes import http_caller, make_project

from visage_ml.privacy.datakeys import DataKeys
from visage_ml.rights import content_scan, embedded_spill, scan_cache
from visage_ml.rights.content_hashes import ContentHashes
from visage_ml.rights.erasure import Erasure

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this system")


class Sought(set):
    """What a scan seeks: digests, and the sizes they have (as ContentHashes)."""

    def __init__(self, *found: bytes) -> None:
        super().__init__(hashlib.sha256(f).hexdigest() for f in found)
        self.sizes = {len(f) for f in found}

    def may_match(self, size: int) -> bool:
        return size in self.sizes


def _files(root: Path, photo: bytes, other: bytes) -> None:
    """A log holding ``photo`` in base64, a zip holding it, a copy of it, a table-like CSV of hex
    ids, files of sizes nothing sought has, and ``other`` (of a size not sought) in a log."""
    (root / "logs").mkdir(parents=True)
    b64 = base64.b64encode(photo).decode()
    ids = "\n".join(hashlib.sha256(bytes([i])).hexdigest() for i in range(200))
    (root / "logs" / "a.csv").write_text(f"id,img\n1,{b64}\n{ids}\n", encoding="utf-8")
    (root / "logs" / "b.csv").write_text(
        f"id,img\n2,{base64.b64encode(other).decode()}\n{ids}\n", encoding="utf-8"
    )
    with zipfile.ZipFile(root / "shared.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("face.png", photo)
        z.writestr("notes.txt", "for a colleague")
    (root / "copy.png").write_bytes(photo)
    for i in range(30):
        (root / f"blob{i}.bin").write_bytes(bytes([i]) * (100 + i))


def _scan(root: Path, cache: Path, sought: Sought, pids: Path) -> list[content_scan.Hashed]:
    pids.unlink(missing_ok=True)
    return content_scan.hash_files([content_scan.Root(root)], sizes=sought, cache=cache)


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """Each file looked at writes the process it was looked at in, and that process's memory
    budget, to a file (a process's lists are not the test's)."""
    pids = tmp_path / "pids.txt"
    real = content_scan._looked_at

    def looked_at(path, sizes, cache=None, *, key=""):
        with open(pids, "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()} {embedded_spill.MEMORY_MAX}\n")
        return real(path, sizes, cache, key=key)

    monkeypatch.setattr(content_scan, "_looked_at", looked_at)
    monkeypatch.setattr(scan_cache, "RACY_NS", 0)
    monkeypatch.setattr(content_scan, "SCAN_PROCESSES", 2)
    # As the command line is: one thread (a test before may have left one of its own running).
    monkeypatch.setattr(content_scan, "_alone", lambda: True)
    return pids


def _seen(pids: Path) -> set[tuple[int, int]]:
    return {tuple(map(int, line.split())) for line in pids.read_text().splitlines()}


@needs_fork
def test_processes_find_and_cache_what_threads_do(tmp_path, monkeypatch, recorded):
    photo, other = os.urandom(3000), os.urandom(4000)
    root = tmp_path / "proj"
    _files(root, photo, other)
    sought = Sought(photo)
    # Threads: the scan reads less than the processes' threshold.
    by_threads = _scan(root, tmp_path / "threads.json", sought, recorded)
    assert {pid for pid, _ in _seen(recorded)} == {os.getpid()}

    monkeypatch.setattr(content_scan, "PROCESS_MIN_BYTES", 0)
    monkeypatch.setattr(content_scan, "BATCH_FILES", 4)
    by_processes = _scan(root, tmp_path / "processes.json", sought, recorded)
    seen = _seen(recorded)
    assert os.getpid() not in {pid for pid, _ in seen}, "looked at in this process"
    # Each process holds members in its share of the memory the scan may hold.
    assert {most for _, most in seen} == {embedded_spill.MEMORY_MAX // 2}
    assert embedded_spill.MEMORY_MAX == 256 << 20, "this process's budget was changed"

    assert by_processes == by_threads
    hits = {h.path.name for h in by_processes if h.matches(sought)}
    assert hits == {"a.csv", "shared.zip", "copy.png"}

    def files(name: str) -> dict:
        return json.loads((tmp_path / name).read_text(encoding="utf-8"))["files"]

    assert files("processes.json") == files("threads.json")
    # What the processes noted as passed over (the other photograph's size) is kept: a scan for
    # it reads the log again, and finds it.
    entry = files("processes.json")[str((root / "logs" / "b.csv").resolve())]
    assert len(other) in entry["refused"]
    again = _scan(root, tmp_path / "processes.json", Sought(other), recorded)
    assert {h.path.name for h in again if h.matches(Sought(other))} == {"b.csv"}

    # A scan taking its answers from the cache keeps them, as the threads' did.
    _scan(root, tmp_path / "threads.json", sought, recorded)
    monkeypatch.setattr(content_scan, "PROCESS_MIN_BYTES", 1 << 40)
    _scan(root, tmp_path / "threads2.json", sought, recorded)
    _scan(root, tmp_path / "threads2.json", sought, recorded)
    monkeypatch.setattr(content_scan, "PROCESS_MIN_BYTES", 0)
    warm = _scan(root, tmp_path / "processes.json", sought, recorded)
    assert warm == by_threads
    assert files("processes.json") == files("threads2.json")


def _a_log_holding_a_photo(project):
    """A project of two subjects, and a log holding the first one's photograph in base64."""
    proj = make_project(project, n_subjects=2)
    pid = proj.pids[0]
    photo = next(iter(proj.images[pid].values()))
    log = proj.paths.root / "data" / "labels" / "faces.csv"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"id,img\n1,{base64.b64encode(photo).decode()}\n", encoding="utf-8")
    return proj, pid, photo, log


@needs_fork
def test_a_scan_process_killed_stops_the_erasure(project, monkeypatch, recorded):
    """A process of the scan is killed (out of memory) while it reads a log holding the
    subject's photograph: the erasure stops saying why, and nothing is certified."""
    proj, pid, photo, log = _a_log_holding_a_photo(project)
    real = content_scan._read_open
    this = os.getpid()

    def killed(fh, path, sizes):
        if path.name == log.name and os.getpid() != this:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(fh, path, sizes)

    monkeypatch.setattr(content_scan, "_read_open", killed)
    monkeypatch.setattr(content_scan, "PROCESS_MIN_BYTES", 0)
    with pytest.raises(content_scan.ScanIncompleteError, match="nothing of this scan was taken"):
        Erasure(proj.paths).erase(pid)
    assert log.is_file() and base64.b64encode(photo).decode() in log.read_text(encoding="utf-8")
    assert not list(proj.paths.root.rglob("*.cert*")), "a certificate was made"


@needs_fork
def test_the_environment_keeps_a_scan_in_threads_of_its_own_process(
    tmp_path, monkeypatch, recorded
):
    """``VISAGE_SCAN_PROCESSES=1`` (a host that does not want a process with native libraries
    loaded forked): the scan stays in this process and finds the same; a word is refused."""
    photo, other = os.urandom(3000), os.urandom(4000)
    root = tmp_path / "proj"
    _files(root, photo, other)
    monkeypatch.setattr(content_scan, "PROCESS_MIN_BYTES", 0)
    monkeypatch.setenv(content_scan.PROCESSES_ENV, "1")
    found = _scan(root, tmp_path / "c.json", Sought(photo), recorded)
    assert {pid for pid, _ in _seen(recorded)} == {os.getpid()}
    assert {h.path.name for h in found if h.matches(Sought(photo))} == {
        "a.csv",
        "shared.zip",
        "copy.png",
    }
    monkeypatch.setenv(content_scan.PROCESSES_ENV, "two")
    with pytest.raises(ValueError, match="VISAGE_SCAN_PROCESSES"):
        _scan(root, tmp_path / "d.json", Sought(photo), recorded)


@needs_fork
@pytest.mark.timeout(180)  # the old scan waited on the hung process for good
def test_a_scan_process_that_hangs_stops_the_erasure_and_is_killed(
    project, monkeypatch, recorded, tmp_path
):
    """A process of the scan hangs while it reads a log holding the subject's photograph (a
    lock a thread of the parent held at the fork, which nobody in the child will release):
    the scan does not wait for it for good. When no batch has come back for longer than the
    slowest read the scan allows, the erasure stops saying why, nothing is certified, and the
    hung process is not left behind."""
    proj, pid, photo, log = _a_log_holding_a_photo(project)
    real = content_scan._read_open
    this = os.getpid()
    hung = tmp_path / "hung.pid"

    def hangs(fh, path, sizes):
        if path.name == log.name and os.getpid() != this:
            hung.write_text(str(os.getpid()), encoding="utf-8")
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # deaf, as a hang is
            while True:
                time.sleep(1)
        return real(fh, path, sizes)

    monkeypatch.setattr(content_scan, "_read_open", hangs)
    monkeypatch.setattr(content_scan, "PROCESS_MIN_BYTES", 0)
    monkeypatch.setattr(content_scan, "STALL_SECONDS", 3)
    with pytest.raises(content_scan.ScanIncompleteError, match="no batch came back"):
        Erasure(proj.paths).erase(pid)
    assert log.is_file() and base64.b64encode(photo).decode() in log.read_text(encoding="utf-8")
    assert not list(proj.paths.root.rglob("*.cert*")), "a certificate was made"
    child = int(hung.read_text(encoding="utf-8"))
    with pytest.raises(ProcessLookupError):  # killed and reaped, not a zombie
        os.kill(child, 0)


def test_the_scan_waits_longer_for_larger_batches():
    """The wait allowed for the next batch grows with the bytes still out: a large table alone
    in its batch, read at the slowest rate the scan allows, is not taken for a hang."""
    small = content_scan._stall_limit([1 << 20])
    large = content_scan._stall_limit([1 << 20, 8 << 30])
    assert small >= content_scan.STALL_SECONDS
    assert large >= (8 << 30) / content_scan.STALL_RATE


@pytest.fixture
def another_thread():
    """A second thread of this process, as the service's are (uvicorn's, a request's): the scan
    is then not alone, and no process is forked."""
    done = threading.Event()
    thread = threading.Thread(target=done.wait, name="service", daemon=True)
    thread.start()
    assert not content_scan._alone()
    yield thread
    done.set()
    thread.join()


@pytest.mark.timeout(60)  # the old scan waited on the hung read for good (its test: 120 s)
@pytest.mark.parametrize("where", ["threads asked for", "a small scan in the service"])
def test_a_read_that_hangs_in_a_thread_stops_the_erasure(
    project, monkeypatch, another_thread, where
):
    """A read of the scan hangs in a thread of this process (the disk or a network file system
    stopped answering), where the scan runs in threads (``VISAGE_SCAN_PROCESSES=1``, or a scan
    too small for processes in the service): the scan does not wait for it for good. When no
    batch has come back for the limit processes get, the erasure stops saying why, nothing is
    certified, and the hung thread is a daemon, which does not keep the process from ending."""
    proj, pid, photo, log = _a_log_holding_a_photo(project)
    real = content_scan._read_open
    release = threading.Event()
    hung: list[threading.Thread] = []

    def hangs(fh, path, sizes):
        if path.name == log.name:
            hung.append(threading.current_thread())
            release.wait(120)  # for good, as far as the scan goes
        return real(fh, path, sizes)

    monkeypatch.setattr(content_scan, "_read_open", hangs)
    monkeypatch.setattr(content_scan, "STALL_SECONDS", 3)
    if where == "threads asked for":
        monkeypatch.setenv(content_scan.PROCESSES_ENV, "1")
        monkeypatch.setattr(content_scan, "PROCESS_MIN_BYTES", 0)
    try:
        with pytest.raises(content_scan.ScanIncompleteError, match="a read hung"):
            Erasure(proj.paths).erase(pid)
        assert log.is_file() and base64.b64encode(photo).decode() in log.read_text("utf-8")
        assert not list(proj.paths.root.rglob("*.cert*")), "a certificate was made"
        assert [t.daemon for t in hung] == [True], "the hung read keeps the process from ending"
    finally:
        release.set()


needs_forkserver = pytest.mark.skipif(
    "forkserver" not in multiprocessing.get_all_start_methods(), reason="no fork server here"
)


class Noting:
    """What a scan seeks (as :class:`Sought`), noting in the file ``noted`` the process each
    asking of a size comes from. The scan hands its size filter to its processes, so this
    travels to a fork server's children (a monkeypatch of this process does not), and what
    they note comes back through the file. ``hang``: asked in another process, it hangs there
    instead (a read that never returns; deaf to SIGTERM, as a hang is)."""

    def __init__(self, noted: Path, *found: bytes, hang: bool = False) -> None:
        self.digests = {hashlib.sha256(f).hexdigest() for f in found}
        self.sizes = {len(f) for f in found}
        self.noted = noted
        self.hang = hang
        self.parent = os.getpid()

    def __contains__(self, digest: object) -> bool:
        return digest in self.digests

    def may_match(self, size: int) -> bool:
        with open(self.noted, "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()}\n")
        if self.hang and os.getpid() != self.parent:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            while True:
                time.sleep(1)
        return size in self.sizes


def _asked_in(noted: Path) -> set[int]:
    return {int(line) for line in noted.read_text(encoding="utf-8").split()}


def _a_project_scanned_in_processes(tmp_path, monkeypatch) -> tuple[Path, bytes, bytes]:
    """A project's files (:func:`_files`: a photo's copies among others), its root, the photo
    and the other file; its scans in two processes whatever their size."""
    photo, other = os.urandom(3000), os.urandom(4000)
    root = tmp_path / "proj"
    _files(root, photo, other)
    monkeypatch.setattr(content_scan, "SCAN_PROCESSES", 2)
    monkeypatch.setattr(content_scan, "PROCESS_MIN_BYTES", 0)
    return root, photo, other


@needs_forkserver
def test_a_scan_beside_another_thread_runs_in_processes_and_finds_what_threads_do(
    tmp_path, monkeypatch, another_thread
):
    """The service (another thread running): a scan large enough for processes is looked at in
    processes started from a fork server, not in this process's threads, and finds, and keeps
    in the file cache, what the threads found and kept."""
    root, photo, other = _a_project_scanned_in_processes(tmp_path, monkeypatch)
    monkeypatch.setattr(scan_cache, "RACY_NS", 0)
    monkeypatch.setattr(content_scan, "BATCH_FILES", 4)
    noted = tmp_path / "asked.txt"

    def scan(cache: str) -> list[content_scan.Hashed]:
        noted.unlink(missing_ok=True)
        sought = Noting(noted, photo)
        return content_scan.hash_files(
            [content_scan.Root(root)], sizes=sought, cache=tmp_path / cache
        )

    monkeypatch.setenv(content_scan.PROCESSES_ENV, "1")
    by_threads = scan("threads.json")
    assert _asked_in(noted) == {os.getpid()}
    monkeypatch.delenv(content_scan.PROCESSES_ENV)
    by_processes = scan("processes.json")
    asked = _asked_in(noted)
    assert asked and os.getpid() not in asked, "looked at in this process"

    assert by_processes == by_threads
    assert {h.path.name for h in by_processes if h.matches(Sought(photo))} == {
        "a.csv",
        "shared.zip",
        "copy.png",
    }

    def files(name: str) -> dict:
        return json.loads((tmp_path / name).read_text(encoding="utf-8"))["files"]

    assert files("processes.json") == files("threads.json")
    entry = files("processes.json")[str((root / "logs" / "b.csv").resolve())]
    assert len(other) in entry["refused"]


@needs_forkserver
@pytest.mark.timeout(180)
def test_a_fork_server_process_that_hangs_stops_the_scan_and_is_killed(
    tmp_path, monkeypatch, another_thread
):
    """Beside another thread, a process of the scan (a fork server's child) hangs: when no
    batch has come back for the limit, the scan stops saying why and the process is killed,
    as a forked one is."""
    root, photo, _ = _a_project_scanned_in_processes(tmp_path, monkeypatch)
    monkeypatch.setattr(content_scan, "STALL_SECONDS", 3)
    noted = tmp_path / "asked.txt"
    with pytest.raises(content_scan.ScanIncompleteError, match="no batch came back"):
        content_scan.hash_files(
            [content_scan.Root(root)], sizes=Noting(noted, photo, hang=True), cache=None
        )
    hung = _asked_in(noted) - {os.getpid()}
    assert hung, "nothing was looked at in another process"
    for child in hung:  # killed, and reaped by the fork server, not left behind
        for _ in range(100):
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            pytest.fail("a hung process of the scan was left running")


def _pools_started(monkeypatch) -> list[str]:
    """The start method of each process pool a scan starts from now on (two processes, for a
    scan of any size)."""
    started: list[str] = []
    real = content_scan.ProcessPoolExecutor

    class Pool(real):
        def __init__(self, *args, **kwargs):
            started.append(kwargs["mp_context"].get_start_method())
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(content_scan, "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(content_scan, "SCAN_PROCESSES", 2)
    monkeypatch.setattr(content_scan, "PROCESS_MIN_BYTES", 0)
    return started


@needs_forkserver
def test_an_erasure_asked_over_http_scans_in_processes_and_certifies(project, monkeypatch):
    """An erasure asked of the HTTP API (the request in a thread of the service), with a log
    holding the subject's photograph and a text file the subject's data key as unwrapped (the
    processes are handed the tombstones to test it): the scan runs in processes of a fork
    server, the log and the text file are rewritten without them, and the certificate
    verifies."""
    from visage_ml.rights.certify import verify_certificate

    proj, pid, photo, log = _a_log_holding_a_photo(project)
    key = DataKeys.for_project(proj.paths).key(pid)
    printed = proj.paths.root / "reports" / "debug.txt"
    printed.parent.mkdir(parents=True, exist_ok=True)
    printed.write_text(f"run 12\ndata key: {key.hex()}\n", encoding="utf-8")
    started = _pools_started(monkeypatch)
    call = http_caller(proj)
    r = call("POST", f"/v1/subjects/{pid}/erasure", "dpo")
    assert r.status_code == 200, r.text
    assert started and set(started) == {"forkserver"}
    assert base64.b64encode(photo).decode() not in log.read_text(encoding="utf-8")
    assert printed.read_text(encoding="utf-8") == "run 12\ndata key: \n"
    cert = call("GET", f"/v1/certificates/{r.json()['request_id']}", "auditor")
    assert cert.status_code == 200, cert.text
    path = proj.paths.root / "cert.json"
    path.write_bytes(cert.content)
    assert verify_certificate(path, root=proj.paths.root).ok


@needs_forkserver
def test_a_filter_that_made_its_key_test_is_handed_to_processes_and_finds_a_printed_key(
    project, monkeypatch, another_thread
):
    """After an erasure, what it sought (the tombstones: the erased subject's key among them),
    its key test already made (a closure, made again in each process): a scan beside another
    thread runs in processes and finds the key printed in a text file."""
    proj = make_project(project, n_subjects=2)
    pid = proj.pids[0]
    key = DataKeys.for_project(proj.paths).key(pid)
    Erasure(proj.paths).erase(pid)
    hashes = ContentHashes.of(proj.paths, [], pid=pid)
    assert hashes.key_tagger() is not None
    folder = project / "reports"
    folder.mkdir(exist_ok=True)
    (folder / "debug.txt").write_text(f"data key: {key.hex()}\n", encoding="utf-8")
    (folder / "other.txt").write_text(f"a digest: {os.urandom(32).hex()}\n", encoding="utf-8")
    started = _pools_started(monkeypatch)
    found = content_scan.hash_files([content_scan.Root(folder)], sizes=hashes)
    assert started == ["forkserver"]
    assert {h.path.name for h in found if h.matches(hashes)} == {"debug.txt"}


@pytest.mark.timeout(60)  # the old erasure waited on the hung read for good
def test_an_erasure_asked_over_http_whose_read_hangs_answers_503_saying_why(project, monkeypatch):
    """The service's erasure, whose scan (too small for processes: threads of the service) has a
    read that hangs: the DPO is answered 503 ``scan_incomplete``, saying what happened and what
    to do, rather than waiting for good; nothing is certified, the request stays open."""
    from visage_ml.privacy.requests import RequestBook

    proj, pid, photo, log = _a_log_holding_a_photo(project)
    real = content_scan._read_open
    release = threading.Event()

    def hangs(fh, path, sizes):
        if path.name == log.name:
            release.wait(120)  # for good, as far as the scan goes
        return real(fh, path, sizes)

    monkeypatch.setattr(content_scan, "_read_open", hangs)
    monkeypatch.setattr(content_scan, "STALL_SECONDS", 3)
    call = http_caller(proj)
    try:
        r = call("POST", f"/v1/subjects/{pid}/erasure", "dpo")
    finally:
        release.set()
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "scan_incomplete" and "a read hung" in error["message"]
    assert base64.b64encode(photo).decode() in log.read_text(encoding="utf-8")
    assert not list(proj.paths.root.rglob("*.cert*")), "a certificate was made"
    [st] = RequestBook(proj.core).all(pid=pid)
    assert st.status == "in_progress"  # for `visage privacy resume`, or the request again
