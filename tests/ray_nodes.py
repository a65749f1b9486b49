"""A real multi-node Ray cluster on this machine: a head and worker nodes, each a ``ray start --block``
process of its own, so one node can be lost (SIGKILL of its raylet and every process it started) while
the others go on. What ``tests/test_multinode.py`` runs a job across.

A node's processes are found three ways at once (``node_pids``), because none is enough alone: the
``RAY_NODES_TEST_MARK=<base>:<node>`` every one of them inherits in its environment (a process that
rewrote its title may have lost that block), the log files each holds open under the node's own temp
dir, and descent from the node's ``ray start`` (workers call ``setsid``, so the process group misses
them, and orphans lose their parent). Killing a node freezes them all, then SIGKILLs them, until none is
left; the final clean-up does the same for every node. ``ray stop`` cannot be used: it stops every Ray
on the machine."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

MARK = "RAY_NODES_TEST_MARK"
RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def node_pids(mark: str, roots: tuple[int, ...] = ()) -> list[int]:
    """Processes of a node: those whose environment holds ``MARK=mark`` (a prefix when ``mark`` ends
    in ':'), those holding a file under the folder ``mark`` names (every Ray process logs into its
    node's temp dir; a process that rewrote its title with setproctitle may have lost its environment
    block), and every descendant of ``roots``."""
    want = f"{MARK}={mark}".encode()
    folder = mark.split(":", 1)[0] + ("/" + mark.split(":", 1)[1] if not mark.endswith(":") else "")
    found, parents = set(), {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        parents[pid] = _ppid(pid)
        try:
            env = Path(entry.path, "environ").read_bytes().split(b"\0")
            if any(v == want or (want.endswith(b":") and v.startswith(want)) for v in env):
                found.add(pid)
                continue
            for fd in os.scandir(f"{entry.path}/fd"):
                if os.readlink(fd.path).startswith(folder + "/"):
                    found.add(pid)
                    break
        except OSError:  # gone, a kernel thread, or not ours to read
            continue
    frontier = set(roots)
    while frontier:
        children = {p for p, pp in parents.items() if pp in frontier and p not in found}
        found |= children
        frontier = children
    found |= {r for r in roots if r in parents}
    return sorted(found)


def kill_node_processes(mark: str, roots: tuple[int, ...] = (), *, within_s: float = 20.0) -> int:
    """Freeze (SIGSTOP: no more forks) then SIGKILL every process of ``mark`` until none is left;
    returns how many were killed."""
    killed: set[int] = set()
    deadline = time.monotonic() + within_s
    while True:
        pids = node_pids(mark, roots)
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        killed |= set(pids)
        time.sleep(0.2)
        alive = [p for p in node_pids(mark, roots) if Path(f"/proc/{p}/stat").exists()
                 and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
        if not alive:
            return len(killed)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {alive} of {mark} survive SIGKILL")


@dataclass
class RayNodes:
    """A head (``num_cpus`` logical CPUs) and ``workers`` worker nodes of ``num_cpus`` each, on loopback,
    with token authentication (a fresh token, in ``env``, never the user's ``~/.ray/auth_token``)."""

    workers: int = 2
    num_cpus: int = 1
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="raynodes-", dir="/tmp")))
    port: int = field(default_factory=free_port)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # short temp dirs: Ray's unix sockets live under them (108-byte path limit)
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def names(self) -> list[str]:
        return ["head"] + [f"worker{i}" for i in range(1, self.workers + 1)]

    def _start(self, name: str) -> None:
        temp = self.base / name
        temp.mkdir()
        argv = [RAY, "start", "--block", f"--num-cpus={self.num_cpus}", "--num-gpus=0", "--disable-usage-stats",
                f"--temp-dir={temp}", "--node-ip-address=127.0.0.1", "--include-log-monitor=false",
                # every port of its own: several nodes share this host
                f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                f"--metrics-export-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
        if name == "head":
            argv += ["--head", f"--port={self.port}", "--include-dashboard=false",
                     f"--ray-client-server-port={free_port()}"]
        else:
            argv += [f"--address={self.address}"]
        env = dict(os.environ, **self.env, **{MARK: f"{self.base}:{name}"})
        with open(self.base / f"{name}.log", "w") as log:
            self.procs[name] = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def start(self, timeout_s: float = 180.0) -> None:
        """Start the head, then the workers; return when every node is alive in the GCS."""
        self._start("head")
        self.wait_for_nodes(1, timeout_s)
        for name in self.names()[1:]:
            self._start(name)
        self.wait_for_nodes(len(self.names()), timeout_s)

    def wait_for_nodes(self, n: int, timeout_s: float) -> None:
        """Return when ``n`` nodes are alive in the GCS. Asked from a child process: the GCS client caches
        the auth token of the process that first uses it, and this one must not carry ours."""
        code = ("import sys, time\nfrom ray._raylet import GcsClient\n"
                "deadline = time.monotonic() + float(sys.argv[3])\n"
                "while True:\n"
                "    try:\n"
                "        info = GcsClient(address=sys.argv[1]).get_all_node_info(timeout=5)\n"
                "        alive = sum(1 for v in info.values() if v.state == 0)\n"
                "    except Exception:\n"
                "        alive = 0\n"
                "    if alive >= int(sys.argv[2]):\n"
                "        sys.exit(0)\n"
                "    if time.monotonic() > deadline:\n"
                "        sys.exit(f'{alive} nodes alive')\n"
                "    time.sleep(0.5)\n")
        done = subprocess.run([sys.executable, "-c", code, self.address, str(n), str(timeout_s)],
                              env=dict(os.environ, **self.env), capture_output=True, text=True, check=False)
        dead = [name for name, proc in self.procs.items() if proc.poll() is not None]
        if done.returncode != 0 or dead:
            raise RuntimeError(f"{n} Ray nodes not alive ({done.stderr.strip()[-500:]}; exited: {dead}): "
                               + "".join(f"\n--- {k}\n{self.log_tail(k)}" for k in (dead or ["head"])))

    def node_of(self, pid: int) -> str | None:
        """Which node started process ``pid`` (None: not one of ours)."""
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return None
        prefix = f"{MARK}={self.base}:".encode()
        for v in env:
            if v.startswith(prefix):
                return v[len(prefix):].decode()
        return None

    def kill_node(self, name: str) -> int:
        """Lose node ``name`` as a machine is lost: SIGKILL its raylet, agents and workers together."""
        proc = self.procs[name]
        # a root only while it is unreaped: a reaped pid may already be someone else's
        n = kill_node_processes(f"{self.base}:{name}", (proc.pid,) if proc.poll() is None else ())
        self.procs[name].wait(timeout=30)
        return n

    def log_tail(self, name: str) -> str:
        try:
            return (self.base / f"{name}.log").read_text()[-3000:]
        except OSError:
            return ""

    def shutdown(self) -> None:
        """Kill every process of every node (whatever state the test left them in) and remove the temp dir."""
        kill_node_processes(f"{self.base}:", tuple(p.pid for p in self.procs.values() if p.poll() is None))
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
        shutil.rmtree(self.base, ignore_errors=True)
