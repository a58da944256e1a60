"""`umx batch --ray` on a real Ray cluster that the tests start on this machine: a head node and
a second node, one CPU each, in their own temporary directory and process sessions, stopped by
killing exactly those sessions (`ray stop` would stop every Ray instance of the user)."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import pytest

from processes import BOUND_S, children, in_session, running, wait_for
from test_batch import (
    MODEL,
    assert_complete,
    hidden_files,
    latest,
    output_paths,
    write_song,
)
from umx.batch.job import MANIFEST_FILE
from umx.cli import main
from umx.jobs import read_records

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'umx[ray]')")
RAY = Path(sys.executable).parent / "ray"
ENV = {
    "RAY_AUTH_MODE": "disabled",  # a local test cluster; no token to share with the driver
    "RAY_USAGE_STATS_ENABLED": "0",
    "UMX_OFFLINE": "1",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_node(*options, temp_dir):
    """`ray start` in a session of its own, whose id names the node's processes."""
    ports = [
        f"--{name}={free_port()}"
        for name in (
            "node-manager-port",
            "object-manager-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
        )
    ]
    command = [
        str(RAY),
        "start",
        "--num-cpus=1",
        "--node-ip-address=127.0.0.1",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        *ports,
        *options,
    ]
    node = subprocess.Popen(
        command,
        env={**os.environ, **ENV},
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _ = node.communicate(timeout=BOUND_S)
    return node.pid, node.returncode, out.decode(errors="replace")


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second node on 127.0.0.1; yields the head's address."""
    temp_dir = tempfile.mkdtemp(prefix="umxray")  # short: Ray's socket paths must fit
    port = free_port()
    sessions = set()
    try:
        head, code, out = start_node(
            "--head",
            f"--port={port}",
            "--include-dashboard=false",
            temp_dir=temp_dir,
        )
        sessions.add(head)
        assert code == 0, out
        second, code, out = start_node(f"--address=127.0.0.1:{port}", temp_dir=temp_dir)
        sessions.add(second)
        assert code == 0, out
        yield f"127.0.0.1:{port}"
    finally:
        for pid in in_session(*sessions):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while in_session(*sessions) and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(temp_dir, ignore_errors=True)


def start_driver(tmp_path, address, *options):
    command = [sys.executable, "-m", "umx.cli", "batch", "songs", "--outdir", "out"]
    return subprocess.Popen(
        [*command, "--model", MODEL, "--ray", address, "-q", *options],
        cwd=tmp_path,
        env={**os.environ, **ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def busy_actors():
    """The Ray worker processes separating a file now (Ray names them by the method)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::BatchWorker.separate"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture
def songs(tmp_path):
    return [write_song(tmp_path / "songs" / f"{n}.wav", 3.0, seed=n) for n in range(5)]


def test_an_actor_killed_mid_file_and_a_corrupt_input(cluster, tmp_path, songs):
    (tmp_path / "songs" / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    driver = start_driver(tmp_path, cluster, "--jobs", "2")
    try:
        wait_for(lambda: hidden_files(tmp_path / "out"), "a stem being written")
        victim = wait_for(busy_actors, "a busy actor")[0]
        os.kill(victim, signal.SIGKILL)
        _, err = driver.communicate(timeout=BOUND_S)
    finally:
        driver.kill()
    assert driver.returncode == 1, err.decode()  # the corrupt input failed, the rest went on
    assert_complete(tmp_path / "out", songs)
    records = read_records(tmp_path / "out" / ".umx-job" / MANIFEST_FILE)
    corrupt = latest(tmp_path / "out" / ".umx-job")[str(tmp_path / "songs" / "corrupt.wav")]
    assert corrupt["status"] == "failed" and "corrupt.wav" in corrupt["error"]
    assert "\n" not in corrupt["error"]
    assert len({r["input"] for r in records}) == len(records)  # compacted at the end
    # the killed actor held two inputs: the one it was separating is retried, charged with the
    # death; the one waiting behind it is handed to another actor as it was
    assert err.decode().count("a worker separating") == 1, err.decode()
    retried = [r for r in records if r.get("attempt") == 2]
    assert len(retried) == 1
    assert retried[0]["status"] == "done" and not retried[0]["worker"].endswith(f":{victim}")


def test_a_killed_ray_driver_is_resumed_locally(cluster, tmp_path, songs, monkeypatch, capsys):
    """The driver killed in the middle of a run; the same job finished in local mode, without
    rewriting what was done."""
    driver = start_driver(tmp_path, cluster, "--jobs", "2")
    job_dir = tmp_path / "out" / ".umx-job"
    try:
        wait_for(
            lambda: any(r["status"] == "done" for r in latest(job_dir).values()),
            "a file done",
        )
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=BOUND_S)
    finally:
        driver.kill()
    before = latest(job_dir)
    done = {k for k, r in before.items() if r["status"] == "done"}
    assert 1 <= len(done) < len(songs)
    times = {p: p.stat().st_mtime_ns for k in done for p in map(Path, output_paths(before[k]))}
    assert main(["batch", "--status", str(tmp_path / "out")]) == 0
    status = capsys.readouterr().out
    assert f"inputs: {len(songs)}: {len(done)} done, 0 failed" in status
    assert "2 ray workers" in status
    monkeypatch.chdir(tmp_path)
    assert main(["batch", "songs", "--outdir", "out", "--model", MODEL, "--jobs", "1", "-q"]) == 0
    assert_complete(tmp_path / "out", songs)
    assert all(p.stat().st_mtime_ns == t for p, t in times.items())  # never rewritten


def test_workers_that_do_not_fit_the_cluster_are_refused(cluster, tmp_path, capsys):
    song = write_song(tmp_path / "a.wav", 0.5)
    options = ["--outdir", str(tmp_path / "out"), "--model", MODEL, "--ray", cluster]
    with pytest.MonkeyPatch.context() as patch:
        for name, value in ENV.items():
            patch.setenv(name, value)
        assert main(["batch", str(song), *options, "--gpus-per-worker", "1"]) == 1
        assert "cluster has 0 GPUs for --gpus-per-worker 1: no worker fits" in (
            capsys.readouterr().err
        )
        assert main(["batch", str(song), *options, "--threads", "3"]) == 1
        assert "cluster has 2 CPUs for --threads 3: no worker fits" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # no job made: another --model may start it


def test_no_cluster_for_ray_auto_is_said_before_the_model_loads(tmp_path, monkeypatch, capsys):
    """`--ray auto` where no cluster runs: umx's advice (Ray's names an --address flag that umx
    lacks), before the model loads, and no job directory that a run with other settings would
    then be refused by."""
    import umx.api

    def init(**kwargs):
        raise ConnectionError("Could not find any running Ray instance. Please specify ...")

    def load(*args, **kwargs):
        raise AssertionError("the model loaded")

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(umx.api, "load_model", load)
    song = write_song(tmp_path / "a.wav", 0.5)
    args = ["batch", str(song), "--outdir", str(tmp_path / "out"), "--model", MODEL]
    assert main([*args, "--ray", "auto"]) == 1
    assert capsys.readouterr().err == (
        "umx: error: no Ray cluster is running here: start one with `ray start --head`, give "
        "--ray HOST:PORT, or --ray local\n"
    )
    assert not (tmp_path / "out").exists()


def test_an_address_where_no_cluster_listens_is_refused_before_any_work(tmp_path):
    """Ray retries an address where nothing listens for ever, writing warnings: the run is
    refused in one line instead, before the model loads or the job is made."""
    song = write_song(tmp_path / "a.wav", 0.5)
    address = f"127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "umx.cli", "batch", str(song), "--outdir", "out"]
    command += ["--model", MODEL, "--ray", address]
    run = subprocess.run(
        command, cwd=tmp_path, env={**os.environ, **ENV}, capture_output=True, text=True,
        timeout=BOUND_S,
    )  # fmt: skip
    assert run.returncode == 1
    assert run.stderr == (
        f"umx: error: cannot connect to the Ray cluster at {address} (Connection refused): "
        "start its head there (ray start --head) or give the address it printed\n"
    )
    assert not (tmp_path / "out").exists()
    run = subprocess.run(
        [*command[:-1], "nowhere\n:1"], cwd=tmp_path, env={**os.environ, **ENV},
        capture_output=True, text=True, timeout=BOUND_S,
    )  # fmt: skip
    assert run.returncode == 1 and run.stderr.startswith(  # one line: the break shown escaped
        "umx: error: cannot connect to the Ray cluster at nowhere\\n:1 ("
    )
    assert run.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_an_address_where_another_server_listens_is_refused_in_one_line(tmp_path):
    """A server that accepts connections but is no Ray head (a web server): Ray would retry it
    for ever, writing its warnings; the run is refused in one line instead."""
    song = write_song(tmp_path / "a.wav", 0.5)
    with socket.socket() as server:  # the kernel accepts connections; nothing answers them
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        command = [sys.executable, "-m", "umx.cli", "batch", str(song), "--outdir", "out"]
        run = subprocess.run(
            [*command, "--model", MODEL, "--ray", address], cwd=tmp_path,
            env={**os.environ, **ENV, "RAY_gcs_rpc_server_connect_timeout_s": "1"},
            capture_output=True, text=True, timeout=BOUND_S,
        )  # fmt: skip
    assert run.returncode == 1
    assert run.stderr == (
        f"umx: error: cannot connect to the Ray cluster at {address}: no Ray head answers "
        "there; start one with `ray start --head` or give its address\n"
    )
    assert not (tmp_path / "out").exists()


def test_a_signal_caught_inside_ray_stops_the_run(monkeypatch):
    """umx's stop on SIGHUP or SIGTERM raised while Ray's C++ code waits comes out of it as a
    SystemError "returned a result with an exception set": the stop itself is raised again,
    the actors killed and Ray shut down."""
    from umx.batch import ray_backend
    from umx.cli_run import Stopped

    def wait(*args, **kwargs):
        try:
            raise Stopped(signal.SIGHUP)
        except Stopped as stop:
            raise SystemError("<cyfunction CoreWorker.wait> returned a result") from stop

    class Actor:
        ready = separate = types.SimpleNamespace(remote=lambda *args: object())

    actor_class = types.SimpleNamespace(remote=lambda spec: Actor())
    killed = []
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(
        ray, "remote", lambda cls: types.SimpleNamespace(options=lambda **kw: actor_class)
    )
    monkeypatch.setattr(ray, "wait", wait)
    monkeypatch.setattr(ray, "kill", killed.append)
    monkeypatch.setattr(ray, "shutdown", lambda: killed.append("shutdown"))
    pool = ray_backend.RayPool(ray_backend.WorkerSpec(None, "0" * 64), None, 1)
    with pytest.raises(Stopped):
        list(pool.run(iter([]), lambda task: None))
    assert len(killed) == 2 and killed[-1] == "shutdown"


def test_a_ray_run_stopped_by_sigterm(cluster, tmp_path, songs):
    """SIGTERM while the driver waits on the actors stops it as it stops a local run (not
    Ray's handler, which ray.init installs): one line and the shell's status for it."""
    driver = start_driver(tmp_path, cluster, "--jobs", "1")
    try:
        wait_for(lambda: latest(tmp_path / "out" / ".umx-job"), "a file handed out")
        driver.send_signal(signal.SIGTERM)
        _, err = driver.communicate(timeout=BOUND_S)
    finally:
        driver.kill()
    assert driver.returncode == 128 + signal.SIGTERM, err.decode()
    assert (
        err.decode() == "umx: stopped; the same command resumes the job\numx: stopped by SIGTERM\n"
    )


def test_a_local_ray_run_stopped_through_its_process_group_leaves_nothing(tmp_path, songs):
    """A closed terminal (SIGHUP to the process group, as `timeout` and `kill -- -PGID` send
    theirs) reaches umx and the Ray instance it started, whose actors stop with it: as on
    Ctrl-C, the stop is said in umx's lines, the actor's temporary stems are removed and no
    process of the run is left (checked, not changed: it already did)."""
    command = [sys.executable, "-m", "umx.cli", "batch", "songs", "--outdir", "out", "-q"]
    driver = subprocess.Popen(
        [*command, "--model", MODEL, "--ray", "local", "--jobs", "1"], cwd=tmp_path,
        env={**os.environ, **ENV}, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(lambda: hidden_files(tmp_path / "out"), "a stem being written")
        os.killpg(driver.pid, signal.SIGHUP)
        _, err = driver.communicate(timeout=BOUND_S)
        wait_for(lambda: not in_session(driver.pid), "the run's processes to end", 60)
    finally:
        driver.kill()
    assert driver.returncode == 128 + signal.SIGHUP, err.decode()
    assert (
        err.decode() == "umx: stopped; the same command resumes the job\numx: stopped by SIGHUP\n"
    )
    assert hidden_files(tmp_path / "out") == []


def test_more_workers_than_the_cluster_has_room_for(monkeypatch):
    """The warning names the --jobs asked, not the workers started (one per input at most)."""
    from umx.batch import ray_backend

    said = []
    monkeypatch.setattr(
        ray_backend.logger, "warning", lambda *args: said.append(args[0] % args[1:])
    )
    pool = ray_backend.RayPool(None, None, 99999999999999999999)
    pool.fit = 2
    assert pool.workers(4) == 4
    assert said == [
        "--jobs 99999999999999999999: the cluster has room for 2 workers at once; "
        "the other 2 wait for room"
    ]


def test_sigterm_while_a_local_ray_instance_starts(tmp_path, songs):
    """SIGTERM while `--ray local` starts Ray (ray.init puts in a SIGTERM handler of its own
    that exits 15 or 1 without a word): umx's stop, and the Ray processes it started end."""
    driver = start_driver(tmp_path, "local")
    try:
        started = wait_for(lambda: children(driver.pid, b"gcs_server"), "Ray starting")
        driver.send_signal(signal.SIGTERM)
        _, err = driver.communicate(timeout=BOUND_S)
    finally:
        driver.kill()
    assert driver.returncode == 128 + signal.SIGTERM, err.decode()
    assert err.decode().endswith("umx: stopped by SIGTERM\n")
    wait_for(lambda: not any(map(running, started)), "Ray's processes to end", 30)


def test_a_local_ray_run_writes_no_line_of_ray_s_own(tmp_path):
    """`--ray local` without RAY_AUTH_MODE: Ray enables token authentication for the instance
    it starts and logs a timestamped warning about it (how to opt out); umx keeps Ray's own
    lines off its users' stderr, and leaves the authentication on."""
    write_song(tmp_path / "songs" / "a.wav", 0.5)
    env = {**os.environ, **ENV, "HOME": str(tmp_path)}  # Ray saves its token in ~/.ray
    del env["RAY_AUTH_MODE"]
    command = [sys.executable, "-m", "umx.cli", "batch", "songs", "--outdir", "out"]
    run = subprocess.run(
        [*command, "--model", MODEL, "--ray", "local"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=BOUND_S,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (tmp_path / ".ray" / "auth_token").exists()  # authentication was on
    assert [line for line in run.stderr.splitlines() if not line.startswith("umx: ")] == []
