"""Loopback servers for end-to-end sharing tests: S3 (moto) and SSH (Debian openssh-server).

Each is a context manager that starts the server on a free 127.0.0.1 port, yields what a
DVC remote needs to reach it, and stops it on exit, so no test leaves a process behind.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SSHD = Path("/usr/sbin/sshd")
S3_KEY_ID = "evalstack-test"
S3_SECRET = "evalstack-test-secret"


def unavailable(reason: str) -> None:
    """Skip with the reason; on CI fail instead, since `make test` installs what these tests need."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def require_program(path: str | Path, package: str) -> Path:
    found = Path(path) if Path(path).is_absolute() and Path(path).exists() else shutil.which(str(path))
    if not found:
        unavailable(f"{path} not found: install Debian package {package} (`make system-deps` does)")
    return Path(found)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds:.0f} s")


class MotoOutage:
    """Takes the moto server down (its port refuses connections) and brings it back on the same port
    with the same objects (moto keeps them in module state): a store that goes away mid-run."""

    def __init__(self, server) -> None:
        self.server = server

    def stop(self) -> None:
        self.server.stop()
        self.server._server.server_close()  # stop() leaves the socket listening: connections would hang, not fail

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        _, port = self.server.get_host_and_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.server.start()


@dataclass(frozen=True)
class S3Endpoint:
    url: str  # http://127.0.0.1:PORT
    bucket: str
    key_id: str = S3_KEY_ID
    secret: str = S3_SECRET
    outage: MotoOutage | None = field(default=None, repr=False, compare=False)


@contextmanager
def moto_s3(bucket: str = "evalstack") -> Iterator[S3Endpoint]:
    """An in-process S3 server (moto) with one empty bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    outage = MotoOutage(server)
    try:
        host, port = server.get_host_and_port()
        endpoint = S3Endpoint(url=f"http://{host}:{port}", bucket=bucket, outage=outage)
        # moto keeps its buckets in module state, so a second server in the same process would serve the first
        # one's objects (seen when pytest-xdist put two S3 tests in one worker): start every server empty.
        urllib.request.urlopen(urllib.request.Request(f"{endpoint.url}/moto-api/reset", method="POST")).close()
        client = boto3.client(
            "s3", endpoint_url=endpoint.url, region_name="us-east-1",
            aws_access_key_id=endpoint.key_id, aws_secret_access_key=endpoint.secret,
        )
        client.create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        if outage.server._server_ready_event.is_set():  # not left stopped by the test
            outage.server.stop()


@dataclass(frozen=True)
class SSHEndpoint:
    port: int
    user: str
    keyfile: Path  # private key the server accepts
    root: Path  # a directory the remote can use


SSHD_CONFIG = """\
ListenAddress 127.0.0.1
Port {port}
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
"""


@contextmanager
def openssh_server(workdir: Path) -> Iterator[SSHEndpoint]:
    """Debian's sshd on a loopback port with its own host key and one authorised client key."""
    sshd = require_program(SSHD, "openssh-server")
    keygen = require_program("ssh-keygen", "openssh-client")
    if os.geteuid() != 0:
        unavailable("starting sshd on its own port with root key login needs root")
    workdir.mkdir(parents=True, exist_ok=True)
    host_key, client_key = workdir / "host_ed25519", workdir / "client_ed25519"
    for key in (host_key, client_key):
        subprocess.run([str(keygen), "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    authorized = workdir / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    port = free_port()
    config = workdir / "sshd_config"
    config.write_text(SSHD_CONFIG.format(
        port=port, host_key=host_key, pid_file=workdir / "sshd.pid", authorized_keys=authorized,
    ))
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation directory
    storage = workdir / "storage"
    storage.mkdir()
    log = workdir / "sshd.log"
    with log.open("w") as log_file:  # a file, not a pipe: nobody drains a pipe, and a full one stalls sshd
        process = subprocess.Popen([str(sshd), "-D", "-e", "-f", str(config)], stderr=log_file)
    try:
        wait_for_port(port, process, log)
        yield SSHEndpoint(port=port, user="root", keyfile=client_key, root=storage)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class DaskProcesses:
    address: str  # tcp://127.0.0.1:PORT, what `dask.address` is set to
    workers: int
    pids: tuple[int, ...]  # scheduler first, then one per worker: separate processes, not a LocalCluster


@contextmanager
def dask_processes(workdir: Path, workers: int = 2, environment: dict[str, str] | None = None) -> Iterator[DaskProcesses]:
    """A dask.distributed scheduler and `workers` workers, each started as its own process with the
    `dask scheduler` / `dask worker` CLIs on 127.0.0.1, as a team starts a cluster (one thread per worker).

    `environment` is what the workers run with (PYTHONPATH naming the project's library, so they run
    the code the stage runs). Everything is terminated on exit."""
    dask_cli = require_program(Path(sys.executable).with_name("dask"), "dask (pip)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    processes: list[subprocess.Popen] = []
    logs = []
    try:
        log = open(workdir / "scheduler.log", "w")
        logs.append(log)
        scheduler = subprocess.Popen([str(dask_cli), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                      "--no-dashboard"], stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                                     env=environment)
        processes.append(scheduler)
        wait_for_port(port, scheduler, workdir / "scheduler.log", seconds=60)
        for number in range(workers):
            log = open(workdir / f"worker{number}.log", "w")
            logs.append(log)
            processes.append(subprocess.Popen(
                [str(dask_cli), "worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                 "--host", "127.0.0.1", "--name", f"worker{number}", "--local-directory", str(workdir / f"w{number}")],
                stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=environment))
        _wait_for_workers(address, workers, processes, workdir)
        yield DaskProcesses(address, workers, tuple(process.pid for process in processes))
    finally:
        # Workers first, while their scheduler still answers: a worker stopped together with its scheduler
        # waits on the closed stream until its nanny kills it after 8 s (measured: 8.2 s a teardown, 0.4-0.6 s
        # in this order), which every module using this fixture paid.
        _terminate(processes[1:])
        _terminate(processes[:1])
        for log in logs:
            log.close()


def _terminate(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for_workers(address: str, workers: int, processes: list[subprocess.Popen], workdir: Path) -> None:
    from distributed import Client

    with Client(address, timeout=60) as client:
        deadline = time.monotonic() + 120
        while len(client.scheduler_info()["workers"]) < workers:
            exited = [p for p in processes if p.poll() is not None]
            if exited or time.monotonic() > deadline:
                logs = "\n".join(p.read_text()[-2000:] for p in sorted(workdir.glob("*.log")))
                raise RuntimeError(f"{workers} dask workers did not join {address}:\n{logs}")
            time.sleep(0.2)
