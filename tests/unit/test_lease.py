"""The run-dir lease: flock, the stale rules, a Slurm requeue of the same job, the holder's one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from mltrain import lease as L
from mltrain.errors import RunDirError


def fake_lease(run_dir, **over) -> None:
    info = {
        "host": "other-node",
        "pid": 4242,
        "job_id": "77",
        "started": time.time() - 600,
        "heartbeat": time.time(),
        "heartbeat_interval_s": 30.0,
        "data_dir": None,
        "token": "x",
        **over,
    }
    (run_dir / "control").mkdir(parents=True, exist_ok=True)
    (run_dir / L.LEASE_FILE).write_text(json.dumps(info))


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_second_holder_refused_with_one_line_naming_the_first(tmp_path):
    first = L.acquire_lease(tmp_path, job_id="123", data_dir=tmp_path / "data")
    try:
        with pytest.raises(RunDirError) as e:
            L.acquire_lease(tmp_path)  # a second open file description: flock refuses it
        msg = str(e.value)
        assert "\n" not in msg
        assert f"pid {first.info['pid']}" in msg and "job 123" in msg and "since " in msg
        holder = L.lease_holder(tmp_path)
        assert holder is not None and holder["pid"] == first.info["pid"]
        assert holder["data_dir"] == str((tmp_path / "data").resolve())
    finally:
        first.release()
    assert L.lease_holder(tmp_path) is None
    assert not (tmp_path / L.LEASE_FILE).exists()
    L.acquire_lease(tmp_path).release()  # free again


def test_same_job_id_takes_over_a_held_lease(tmp_path):
    first = L.acquire_lease(tmp_path, job_id="555")
    said: list[str] = []
    second = L.acquire_lease(tmp_path, job_id="555", say=said.append)
    assert "same job id" in said[0]
    assert L.lease_holder(tmp_path)["token"] == second.token
    first.release()  # the old attempt's release must not remove the new holder's lease
    assert L.lease_holder(tmp_path)["token"] == second.token
    second.release()


def test_dead_pid_on_this_host_is_stale(tmp_path):
    import socket

    fake_lease(tmp_path, host=socket.gethostname(), pid=dead_pid())
    assert L.lease_holder(tmp_path) is None
    said: list[str] = []
    L.acquire_lease(tmp_path, say=said.append).release()
    assert "its holder is gone" in said[0]


def test_other_host_live_while_heartbeat_fresh(tmp_path):
    fake_lease(tmp_path, heartbeat=time.time() - 10)  # 10 s < 3 x 30 s
    assert L.lease_holder(tmp_path)["host"] == "other-node"
    with pytest.raises(RunDirError, match=r"in use by host other-node pid 4242 job 77 since "):
        L.acquire_lease(tmp_path, job_id="78")
    L.acquire_lease(tmp_path, job_id="77").release()  # a requeue of job 77 may take it

    fake_lease(tmp_path, heartbeat=time.time() - 100)  # > 90 s: the node died
    assert L.lease_holder(tmp_path) is None
    L.acquire_lease(tmp_path, job_id="78").release()


def test_heartbeat_refreshes_and_respects_a_takeover(tmp_path, monkeypatch):
    monkeypatch.setenv(L.HEARTBEAT_ENV, "3600")
    held = L.acquire_lease(tmp_path)
    before = L.lease_holder(tmp_path)["heartbeat"]
    time.sleep(0.01)
    held.heartbeat()
    assert L.lease_holder(tmp_path)["heartbeat"] > before
    fake_lease(tmp_path, token="someone-else")
    held.heartbeat()  # must not overwrite the new holder
    assert json.loads((tmp_path / L.LEASE_FILE).read_text())["token"] == "someone-else"
    held.release()
    assert (tmp_path / L.LEASE_FILE).exists()


def test_inherited_token(tmp_path, monkeypatch):
    held = L.acquire_lease(tmp_path)
    assert not L.inherited(tmp_path)
    monkeypatch.setenv(L.TOKEN_ENV, held.token)
    assert L.inherited(tmp_path)
    held.release()
    assert not L.inherited(tmp_path)


# --------------------------------------------------------------------------- the rules, one by one
# Fast and exact: each test pins one rule of the module docstring, so a changed comparison, constant or
# message fails here (these are the tests the mutation run over lease.py relies on).

LEASE_PATH = ("control", "lease.json")  # spelled out: a renamed file would strand every running lease


def _refused(run_dir, **kw) -> str:
    with pytest.raises(L.LeaseHeldError) as e:
        L.acquire_lease(run_dir, **kw).release()
    return str(e.value)


def test_no_job_id_on_either_side_is_never_the_same_job(tmp_path):
    """Two starts outside Slurm (no job id) are different jobs: neither takes over the other."""
    first = L.acquire_lease(tmp_path)  # job_id None
    try:
        said: list[str] = []
        with pytest.raises(L.LeaseHeldError) as e:
            L.acquire_lease(tmp_path, say=said.append)
        assert str(e.value).startswith(f"run dir {tmp_path} is in use by host ")
        assert f"pid {first.info['pid']} since " in str(e.value)
        with pytest.raises(L.LeaseHeldError):
            L.acquire_lease(tmp_path, job_id="")
        assert said == [] and L.lease_holder(tmp_path)["token"] == first.token
    finally:
        first.release()
    # the same without flock help: a holder on another node, fresh, with no job id (or an empty one)
    for old_job in (None, ""):
        fake_lease(tmp_path, job_id=old_job)
        assert " job " not in _refused(tmp_path)
        assert " job " not in _refused(tmp_path, job_id="")
        assert "in use by host other-node pid 4242 since " in _refused(tmp_path, job_id="77")
    # a job id on one side only is not a match either
    fake_lease(tmp_path, job_id="77")
    assert "in use by host other-node pid 4242 job 77 since " in _refused(tmp_path)
    assert "job 77" in _refused(tmp_path, job_id="None")


def test_same_job_id_takes_over_a_fresh_lease_on_another_node(tmp_path):
    fake_lease(tmp_path, job_id=77, started=0)  # a number in the file still matches the string "77"
    said: list[str] = []
    held = L.acquire_lease(tmp_path, job_id="77", say=said.append)
    held.release()
    assert said == [
        "taking over the run dir lease of host other-node pid 4242 job 77 since 1970-01-01 00:00:00 UTC "
        "(same job id, a requeue)"
    ]


def test_no_previous_lease_says_nothing(tmp_path):
    said: list[str] = []
    L.acquire_lease(tmp_path, job_id="5", say=said.append).release()
    assert said == []


def test_acquire_writes_the_holder_fields(tmp_path, monkeypatch):
    import socket

    monkeypatch.setenv("MLTRAIN_LEASE_HEARTBEAT_S", "3600")
    (tmp_path / "data").mkdir()
    t0 = time.time()
    held = L.acquire_lease(
        tmp_path / "new" / "run", job_id="99", data_dir=tmp_path / "new" / "run" / ".." / ".." / "data"
    )
    try:
        on_disk = json.loads(tmp_path.joinpath("new", "run", *LEASE_PATH).read_text())
        assert on_disk == held.info
        assert set(on_disk) == {
            "host",
            "pid",
            "job_id",
            "started",
            "heartbeat",
            "heartbeat_interval_s",
            "data_dir",
            "token",
        }
        assert on_disk["host"] == socket.gethostname() and on_disk["pid"] == os.getpid()
        assert on_disk["job_id"] == "99" and on_disk["data_dir"] == str((tmp_path / "data").resolve())
        assert t0 <= on_disk["started"] == on_disk["heartbeat"] <= time.time()
        assert on_disk["heartbeat_interval_s"] == 3600.0
        assert held.token == on_disk["token"] and len(held.token) == 32 and int(held.token, 16) >= 0
        umask = os.umask(0)
        os.umask(umask)
        assert oct(tmp_path.joinpath("new", "run", L.LOCK_FILE).stat().st_mode & 0o777) == oct(0o666 & ~umask)
        assert any(t.name == "mltrain-lease" and t.daemon for t in threading.enumerate())
    finally:
        held.release()
    second = L.acquire_lease(tmp_path / "new" / "run")
    assert second.info["job_id"] is None and second.info["data_dir"] is None and second.token != held.token
    second.release()


def test_heartbeat_interval_from_the_environment(monkeypatch):
    monkeypatch.delenv("MLTRAIN_LEASE_HEARTBEAT_S", raising=False)
    assert L._heartbeat_s() == 30.0
    for value, want in [("2.5", 2.5), ("0.001", 0.05), ("0.05", 0.05), ("not-a-number", 30.0)]:
        monkeypatch.setenv("MLTRAIN_LEASE_HEARTBEAT_S", value)
        assert L._heartbeat_s() == want, value


@pytest.mark.parametrize(
    "interval, age, fresh",
    [
        (None, 89.9, True),  # default interval 30 s x 3
        (None, 90.1, False),
        (30.0, 89.9, True),
        (30.0, 90.0, False),  # exactly 3 intervals old is stale
        (10.0, 29.9, True),
        (10.0, 30.1, False),
        (0.0, 89.9, True),  # a zero interval in the file falls back to the default
    ],
)
def test_fresh_is_younger_than_three_heartbeat_intervals(interval, age, fresh):
    info = {"heartbeat": 1000.0}
    if interval is not None:
        info["heartbeat_interval_s"] = interval
    assert L._fresh(info, 1000.0 + age) is fresh
    assert L._fresh({"heartbeat_interval_s": 30.0}, 80.0) is True  # no heartbeat: counted from time 0
    assert L._fresh({"heartbeat_interval_s": 30.0}, 90.0) is False


def test_alive_rules_for_this_host_and_another(tmp_path):
    import socket

    now = time.time()
    me, gone = os.getpid(), dead_pid()
    here = {"host": socket.gethostname(), "heartbeat": now, "heartbeat_interval_s": 30.0}
    assert L._alive({**here, "pid": me}, now) is True
    assert L._alive({**here, "pid": me}, now + 100) is False  # stale heartbeat, even with a live pid
    assert L._alive({**here, "pid": gone}, now) is False  # fresh heartbeat, dead pid
    assert L._alive({**here, "pid": 0}, now) is False
    assert L._alive({**here, "pid": 1}, now) is True  # pid 1 is a real process (init), not "no pid"
    assert L._alive(here, now) is False  # no pid
    there = {**here, "host": "elsewhere", "pid": gone}  # the pid means nothing on another host
    assert L._alive(there, now) is True
    assert L._alive(there, now + 100) is False
    assert L._alive({**there, "heartbeat": time.time()}) is True  # now defaults to the clock
    assert L._alive({**there, "heartbeat": time.time() - 100}) is False


def test_pid_alive(monkeypatch):
    assert L._pid_alive(os.getpid()) is True
    assert L._pid_alive(dead_pid()) is False

    def not_ours(pid, sig):  # a live process of another user: no such process to start here
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(L.os, "kill", not_ours)
    assert L._pid_alive(12345) is True


def test_read_tolerates_missing_bad_and_non_object_files(tmp_path):
    assert L._read(tmp_path) is None
    (tmp_path / "control").mkdir()
    path = tmp_path.joinpath(*LEASE_PATH)
    path.write_text("{not json")
    assert L._read(tmp_path) is None
    path.write_text("[1, 2]")
    assert L._read(tmp_path) is None
    path.write_text('{"host": "h"}')
    assert L._read(tmp_path) == {"host": "h"}


def test_describe_is_exact():
    info = {"host": "h1", "pid": 123, "job_id": "77", "started": 86400 + 3661}
    assert L.describe(info) == "host h1 pid 123 job 77 since 1970-01-02 01:01:01 UTC"
    assert L.describe({**info, "job_id": None}) == "host h1 pid 123 since 1970-01-02 01:01:01 UTC"
    assert L.describe({}) == "host ? pid ? since 1970-01-01 00:00:00 UTC"


def test_held_message_is_exact(tmp_path):
    fake_lease(tmp_path, started=0)
    assert _refused(tmp_path, job_id="1") == (
        f"run dir {tmp_path} is in use by host other-node pid 4242 job 77 since 1970-01-01 00:00:00 UTC; one "
        f"writer per run: wait for it, stop it with `mltrain stop {tmp_path}`, or pick another run name"
    )


def test_flock_held_with_an_unreadable_lease_file(tmp_path):
    first = L.acquire_lease(tmp_path)
    try:
        tmp_path.joinpath(*LEASE_PATH).write_text("garbage")
        msg = _refused(tmp_path, job_id="3")
        assert "in use by another process (its lease.json is unreadable)" in msg
        assert L.lease_holder(tmp_path) == {"host": "?", "pid": "?", "started": 0}
    finally:
        first.release()


def test_flock_held_by_another_process(tmp_path):
    """Rule 1 across processes: a child holding the flock (with a stale-looking lease.json) still wins."""
    lock = tmp_path / "control" / "lease.lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    fake_lease(tmp_path, heartbeat=0)  # stale by rules 3-4; only the flock says it is live
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
            "print('locked', flush=True); sys.stdin.read()",
            str(lock),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        assert L.lease_holder(tmp_path)["pid"] == 4242
        assert "pid 4242 job 77" in _refused(tmp_path, job_id="78")
    finally:
        child.stdin.close()
        child.wait(timeout=10)
    assert L.lease_holder(tmp_path) is None  # flock gone and the file is stale
    L.acquire_lease(tmp_path, job_id="78").release()


def test_this_host_with_flock_free_takes_over_even_a_fresh_live_looking_lease(tmp_path):
    """On this host a free flock proves the holder is gone (e.g. its pid was reused by another process)."""
    import socket

    fake_lease(tmp_path, host=socket.gethostname(), pid=os.getpid(), started=0)
    said: list[str] = []
    L.acquire_lease(tmp_path, say=said.append).release()
    assert said == [
        "taking over the run dir lease of host "
        f"{socket.gethostname()} pid {os.getpid()} job 77 since 1970-01-01 00:00:00 UTC (its holder is gone)"
    ]


def test_without_flock_the_stale_rules_decide(tmp_path, monkeypatch):
    """A filesystem without flock (simulated: tmpfs and ext4 both have it) falls back to rules 3-4."""
    import socket

    monkeypatch.setattr(L, "_try_flock", lambda fd: None)
    fake_lease(tmp_path, host=socket.gethostname(), pid=os.getpid())
    assert "pid " in _refused(tmp_path)  # this host, live pid, fresh: live
    fake_lease(tmp_path, host=socket.gethostname(), pid=dead_pid())
    held = L.acquire_lease(tmp_path)  # this host, dead pid: stale
    assert held._fd is None  # no flock to keep
    held.release()
    fake_lease(tmp_path)  # another host, fresh
    assert "other-node" in _refused(tmp_path)
    fake_lease(tmp_path, heartbeat=time.time() - 91)
    L.acquire_lease(tmp_path).release()


def test_try_flock_errno_mapping(tmp_path, monkeypatch):
    """How a filesystem's flock errors are read (simulated errors: no local filesystem returns them all)."""
    import errno
    import fcntl

    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        assert L._try_flock(fd) is True
        for code, want in [
            (errno.EAGAIN, False),
            (errno.EACCES, False),
            (errno.ENOLCK, None),
            (errno.EOPNOTSUPP, None),
            (errno.ENOSYS, None),
            (errno.EINVAL, None),
        ]:

            def fail(fd, op, code=code):
                raise OSError(code, os.strerror(code))

            monkeypatch.setattr(fcntl, "flock", fail)
            assert L._try_flock(fd) is want, errno.errorcode[code]

        def blocked(fd, op):
            raise BlockingIOError(errno.EWOULDBLOCK, "busy")

        monkeypatch.setattr(fcntl, "flock", blocked)
        assert L._try_flock(fd) is False

        def eio(fd, op):
            raise OSError(errno.EIO, "I/O error")

        monkeypatch.setattr(fcntl, "flock", eio)
        with pytest.raises(OSError):
            L._try_flock(fd)
    finally:
        os.close(fd)


def test_lease_holder_probe_leaves_the_lock_free(tmp_path):
    L.acquire_lease(tmp_path).release()  # leaves control/lease.lock behind
    fake_lease(tmp_path)  # fresh, another host
    assert L.lease_holder(tmp_path)["host"] == "other-node"
    assert L.lease_holder(tmp_path)["host"] == "other-node"
    (tmp_path / L.LEASE_FILE).unlink()
    assert L.lease_holder(tmp_path) is None
    held = L.acquire_lease(tmp_path)  # the probes took and dropped the flock
    held.release()


def test_lease_holder_without_a_lock_file(tmp_path):
    fake_lease(tmp_path)
    assert not (tmp_path / "control" / "lease.lock").exists()
    assert L.lease_holder(tmp_path)["pid"] == 4242
    fake_lease(tmp_path, heartbeat=time.time() - 100)
    assert L.lease_holder(tmp_path) is None


def test_unwritable_run_dir_is_one_line(tmp_path):
    (tmp_path / "run").write_text("a file, not a dir")
    with pytest.raises(RunDirError) as e:
        L.acquire_lease(tmp_path / "run")
    assert str(e.value) == f"{tmp_path}/run/control/lease.lock: cannot create the run dir lease: Not a directory"
    assert not isinstance(e.value, L.LeaseHeldError) and "\n" not in str(e.value)


def test_failed_lease_write_is_one_line_and_drops_the_flock(tmp_path, monkeypatch):
    import errno

    def full(path, text, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(L, "atomic_write", full)
    with pytest.raises(RunDirError) as e:
        L.acquire_lease(tmp_path)
    assert str(e.value) == f"{tmp_path}/control/lease.json: cannot write the run dir lease: No space left on device"
    assert not isinstance(e.value, L.LeaseHeldError)
    monkeypatch.undo()
    L.acquire_lease(tmp_path).release()  # the failed attempt did not keep the flock


def test_heartbeat_thread_beats_and_stops_at_release(tmp_path, monkeypatch):
    monkeypatch.setenv("MLTRAIN_LEASE_HEARTBEAT_S", "0.05")
    held = L.acquire_lease(tmp_path)
    first = held.info["heartbeat"]
    deadline = time.time() + 3  # 60 intervals
    while json.loads(tmp_path.joinpath(*LEASE_PATH).read_text())["heartbeat"] == first:
        assert time.time() < deadline, "the heartbeat thread never wrote"
        time.sleep(0.02)
    held.release()
    assert not tmp_path.joinpath(*LEASE_PATH).exists()
    time.sleep(0.2)  # several intervals: a thread still running would write the file again
    assert not tmp_path.joinpath(*LEASE_PATH).exists()
    held._thread.join(timeout=5)
    assert not held._thread.is_alive()


def test_heartbeat_rewrites_a_missing_file_but_not_after_release(tmp_path, monkeypatch):
    monkeypatch.setenv("MLTRAIN_LEASE_HEARTBEAT_S", "3600")
    held = L.acquire_lease(tmp_path)
    tmp_path.joinpath(*LEASE_PATH).unlink()
    held.heartbeat()  # still ours (nobody else wrote one): written back
    assert json.loads(tmp_path.joinpath(*LEASE_PATH).read_text())["token"] == held.token
    held.release()
    held.heartbeat()
    assert not tmp_path.joinpath(*LEASE_PATH).exists()


def test_release_is_idempotent_and_frees_the_flock(tmp_path):
    held = L.acquire_lease(tmp_path)
    held.release()
    held.release()
    assert held._fd is None
    other = L.acquire_lease(tmp_path)  # a fresh holder ...
    held.release()  # ... is never removed by an old holder's late release
    assert json.loads(tmp_path.joinpath(*LEASE_PATH).read_text())["token"] == other.token
    other.release()


def test_inherited_needs_the_same_token_in_file_and_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MLTRAIN_LEASE_TOKEN", "abc")
    assert not L.inherited(tmp_path)  # no lease file
    fake_lease(tmp_path, token="abc")
    assert L.inherited(tmp_path)
    fake_lease(tmp_path, token="abd")
    assert not L.inherited(tmp_path)
    monkeypatch.setenv("MLTRAIN_LEASE_TOKEN", "")
    fake_lease(tmp_path, token="")
    assert not L.inherited(tmp_path)  # an empty token is no token


def test_live_users_of_data(tmp_path):
    data, other = tmp_path / "data", tmp_path / "other"
    runs = tmp_path / "runs"
    fake_lease(runs / "a", data_dir=str(data.resolve()))
    fake_lease(runs / "b", data_dir=str(other.resolve()))
    fake_lease(runs / "c", data_dir=str(data.resolve()), heartbeat=time.time() - 100)  # stale
    fake_lease(runs / "d", data_dir=None)
    users = L.live_users_of_data(tmp_path / "x" / ".." / "data", tmp_path)
    assert [u["run_dir"] for u in users] == [str(runs / "a")]
    assert users[0]["pid"] == 4242 and users[0]["data_dir"] == str(data.resolve())
    assert L.live_users_of_data(data, tmp_path / "nowhere") == []


def test_pid_alive_sends_no_signal():
    """The liveness probe is signal 0: probing a holder must never signal (or kill) it."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert L._pid_alive(child.pid) is True
        time.sleep(0.2)
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_lock_file_mode(tmp_path):
    old = os.umask(0o002)
    try:
        L.acquire_lease(tmp_path).release()
    finally:
        os.umask(old)
    assert (tmp_path / "control" / "lease.lock").stat().st_mode & 0o777 == 0o664  # 0o666 less the umask


def test_unopenable_lock_file_falls_back_to_the_stale_rules(tmp_path, monkeypatch):
    """A lock file this user cannot open (simulated: root opens anything) is skipped, not an error."""
    L.acquire_lease(tmp_path).release()
    fake_lease(tmp_path)
    real_open = os.open

    def no_lock(path, *a, **kw):
        if str(path).endswith("lease.lock"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **kw)

    monkeypatch.setattr(L.os, "open", no_lock)
    assert L.lease_holder(tmp_path)["pid"] == 4242
    fake_lease(tmp_path, heartbeat=0)
    assert L.lease_holder(tmp_path) is None


def test_heartbeat_and_release_survive_filesystem_errors(tmp_path, monkeypatch):
    """A failed heartbeat write or cleanup never raises into the training loop or its exit."""
    monkeypatch.setenv("MLTRAIN_LEASE_HEARTBEAT_S", "3600")
    held = L.acquire_lease(tmp_path)
    path = tmp_path.joinpath(*LEASE_PATH)
    path.unlink()
    path.mkdir()  # lease.json is now a directory: unreadable, and the rewrite fails
    held.heartbeat()
    path.rmdir()
    held.heartbeat()
    assert json.loads(path.read_text())["token"] == held.token

    def cannot_unlink(self, missing_ok=False):
        raise OSError(16, "Device or resource busy")

    monkeypatch.setattr(L.Path, "unlink", cannot_unlink)  # simulated: root may unlink anything here
    os.close(held._fd)  # the fd is gone already: closing it again fails too
    held.release()  # both failures are swallowed
    assert held._fd is None and path.exists()


def test_a_lease_file_that_is_there_but_cannot_be_read_is_not_taken_for_no_lease(tmp_path, monkeypatch):
    """Without flock (Lustre without the flock mount option, simulated) the lease file alone says whether a
    trainer on another node holds the run. A read that fails for a reason other than "no such file" (EIO,
    ESTALE; here a directory in its place, which fails the same way) stops the start in one line; status
    (lease_holder) still reads it as no holder rather than failing."""
    import errno

    monkeypatch.setattr(L, "_try_flock", lambda fd: None)
    path = tmp_path.joinpath(*LEASE_PATH)
    path.mkdir(parents=True)  # IsADirectoryError on read: an OSError other than FileNotFoundError
    with pytest.raises(RunDirError) as e:
        L.acquire_lease(tmp_path, job_id="5")
    msg = str(e.value)
    assert msg.startswith(f"{path}: cannot read the run dir lease (") and "\n" not in msg
    assert msg.endswith("not starting while another trainer may hold it")
    assert L.lease_holder(tmp_path) is None and L._read(tmp_path) is None
    path.rmdir()
    real_read_text = type(path).read_text

    def eio(self, *a, **k):
        if self.name == "lease.json":
            raise OSError(errno.EIO, "Input/output error")
        return real_read_text(self, *a, **k)

    monkeypatch.setattr(type(path), "read_text", eio)
    with pytest.raises(RunDirError, match=r"cannot read the run dir lease \(Input/output error\)"):
        L.acquire_lease(tmp_path)
