"""Run a bento as a local HTTP server and stop it without leaving processes behind.

`bentoml serve` becomes a circus arbiter (circusd) whose workers outlive a killed parent:
the server runs in its own session and stopping it signals every group it created.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx
import psutil
import yaml

from couponflow.config import Workspace
from couponflow.processes import listening, signal_group
from couponflow.records import ServerHandle
from serving import MODEL_TAG_ENV, WORKERS_ENV
from serving.deploy import bentoml_env, bentoml_home

WORKER_MODULE = "_bentoml_impl.worker.service"  # what circus runs per worker


class ServerFailed(RuntimeError):
    """The server exited or did not become ready in time; the message has its log tail."""


class Server:
    """A running `bentoml serve`; a context manager that stops it on exit.

    circus puts every worker in a session of its own (setsid), so killing the server's
    process group alone would orphan them: the server remembers each process it has seen
    and `stop()` signals all their groups.
    """

    def __init__(
        self, arbiter_pid: int, base_url: str, log: Path, child: subprocess.Popen | None = None
    ) -> None:
        self.pid = arbiter_pid
        self.base_url = base_url
        self.log = log
        self._child = child  # ours to reap, when this process started the server
        self._seen: dict[int, tuple[psutil.Process, int]] = {}  # pid -> (process, pgid)
        self._arbiter: psutil.Process | None = None
        with contextlib.suppress(psutil.NoSuchProcess):
            self._arbiter = psutil.Process(arbiter_pid)
        self._watch()

    @classmethod
    def attach(cls, handle: ServerHandle) -> Server:
        """The server a `handle()` describes, started by another process (a DAG task) and
        still running or not: so the next task, a rollback or `couponflow stop` can check,
        switch to or stop it. Groups recorded in the handle are signalled on stop too."""
        server = cls(int(handle["pid"]), str(handle["url"]), Path(handle["log"]))
        groups = {int(g) for g in handle.get("pgids", [])}
        for proc in psutil.process_iter(["pid", "cmdline"]):  # orphans of a dead arbiter
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                pgid = os.getpgid(proc.pid)
                # a recorded group number may have been reused: only bento processes count
                if pgid in groups and "bentoml" in " ".join(proc.info["cmdline"] or []):
                    server._seen.setdefault(proc.pid, (proc, pgid))
        return server

    def handle(self) -> ServerHandle:
        """What `attach` needs, as JSON-ready values."""
        return {"pid": self.pid, "url": self.base_url, "log": str(self.log),
                "pgids": sorted(self.pgids)}  # fmt: skip

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def running(self) -> bool:
        """Whether the arbiter still runs."""
        return not self._exited()

    @property
    def pgids(self) -> set[int]:
        """Every process group the server has used: the arbiter's and each worker's."""
        self._watch()
        return {pgid for _, pgid in self._seen.values()}

    def workers(self) -> list[psutil.Process]:
        """The live worker processes (circus replaces a dead one under a new pid)."""
        self._watch()
        return [proc for proc, _ in self._seen.values() if _is_live_worker(proc)]

    def wait_ready(self, timeout_s: float) -> None:
        """Block until /readyz answers 200. A worker accepts connections only once its
        service (model, catalogue, feature store) is built, so no request meets a cold one."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._exited():
                raise ServerFailed(f"server exited\n{self.tail()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    self._watch()
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise ServerFailed(f"not ready after {timeout_s:.0f}s\n{self.tail()}")

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the arbiter (it stops its workers gracefully), then SIGKILL every group
        of the server still alive after `grace_s`."""
        groups = self.pgids
        arbiter_gone = self._exited()  # then its workers are orphans
        for pgid in groups if arbiter_gone else {self.pid}:  # the arbiter leads its session
            signal_group(pgid, signal.SIGTERM)
        if not self._wait_gone(grace_s):
            for pgid in groups:
                signal_group(pgid, signal.SIGKILL)
            if not self._wait_gone(5.0):
                raise ServerFailed(f"processes of {self.base_url} survived SIGKILL")

    def _wait_gone(self, timeout_s: float) -> bool:
        """Whether every process of the server ended within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self._alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def tail(self, lines: int = 30) -> str:
        """The end of the server's log, for error messages."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _watch(self) -> None:
        """Remember the server's current processes (workers come and go, and an orphaned
        worker can no longer be found from the arbiter)."""
        if self._arbiter is None or self._exited():
            return
        try:
            for proc in [self._arbiter, *self._arbiter.children(recursive=True)]:
                if proc.pid not in self._seen:
                    self._seen[proc.pid] = (proc, os.getpgid(proc.pid))
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass

    def _exited(self) -> bool:
        """Whether the arbiter has ended (a zombie counts as ended)."""
        if self._child is not None:
            return self._child.poll() is not None
        return not _running(self._arbiter)

    def _alive(self) -> bool:
        """Whether any process of the server still runs (a zombie no longer counts:
        orphans are reaped by init, which in some containers never happens)."""
        if self._child is not None:
            self._child.poll()  # reap our own child
        for proc, _ in self._seen.values():
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    return True
            except psutil.NoSuchProcess:
                continue
        return False

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _running(proc: psutil.Process | None) -> bool:
    """Whether a process runs (a zombie does not)."""
    try:
        return proc is not None and proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _is_live_worker(proc: psutil.Process) -> bool:
    """Whether `proc` is a running BentoML service worker (not the arbiter, not a zombie)."""
    try:
        return _running(proc) and WORKER_MODULE in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def start_server(ws: Workspace, bento_tag: str, port: int) -> Server:
    """Serve `bento_tag` on 127.0.0.1:`port` for `ws` and wait until it is ready (at most
    `serving.smoke_timeout_s`); the server is stopped again if it never gets there."""
    cfg = ws.params["serving"]
    model_tag = _model_tag(ws, bento_tag)
    if listening(port):  # else an old server's /readyz would pass for the new one
        raise ServerFailed(f"port {port} is already in use")
    log = bentoml_home(ws) / "logs" / f"serve-{port}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = bentoml_env(
        ws,
        **{MODEL_TAG_ENV: model_tag, WORKERS_ENV: str(cfg["workers"])},
        BENTOML_HOME=str(_server_home(ws, port)),
    )
    cmd = [sys.executable, "-m", "bentoml", "serve", bento_tag,
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with open(log, "wb") as out:
        process = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(process.pid, f"http://127.0.0.1:{port}", log, child=process)
    try:
        server.wait_ready(float(cfg["smoke_timeout_s"]))
    except BaseException:
        server.stop()
        raise
    return server


def _server_home(ws: Workspace, port: int) -> Path:
    """A BentoML home of the server's own, sharing the workspace's bentos and models:
    `bentoml serve` empties its home's prometheus_multiproc_dir on start, so a server
    started beside another (a candidate beside the live one) would wipe its metrics."""
    home = bentoml_home(ws) / "servers" / str(port)
    home.mkdir(parents=True, exist_ok=True)
    for shared in ("bentos", "models"):
        link = home / shared
        target = Path("..", "..", shared)  # relative: the workspace may move
        if link.is_symlink() and Path(os.readlink(link)) != target:
            link.unlink()  # an absolute link of an older version
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=True)
    return home


def _model_tag(ws: Workspace, bento_tag: str) -> str:
    """The model the bento was built around, from its bento.yaml in the workspace's store
    (a 1.4 bento references its models rather than carrying copies)."""
    name, _, version = bento_tag.partition(":")
    folder = bentoml_home(ws) / "bentos" / name
    if version in ("", "latest"):
        version = (folder / "latest").read_text().strip()
    info = yaml.safe_load((folder / version / "bento.yaml").read_text())
    (tag,) = {m["tag"] for service in info["services"] for m in service["models"]}
    return tag
