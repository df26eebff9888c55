"""A Ray cluster of several nodes on this machine, for tests: ``ray start --head`` plus ``ray start --address``
nodes, each with its own custom resources, isolated from any other Ray on the machine.

Isolation: its own ``--temp-dir`` (so ``ray.init()`` elsewhere never finds it through ``ray_current_cluster``) and
its own ports. :meth:`LocalCluster.stop` kills only this cluster's processes, by id: those whose command line names
its temp dir or its client-server port, and their children. It never runs ``ray stop``, which ends every Ray
process on the machine, other users' included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that are free now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _cmdlines() -> dict[int, str]:
    out = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                out[int(p.name)] = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return out


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(p.name))
    return kids


def _with_descendants(pids: set[int]) -> set[int]:
    kids, out, todo = _children(), set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo += kids.get(pid, [])
    return out


def _kill(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Node:
    index: int
    node_manager_port: int
    resources: dict[str, float]


class LocalCluster:
    """``start_head`` then ``add_node`` (any number); ``submit`` a job, ``kill_node`` a node, ``stop`` all."""

    def __init__(self, python: str = sys.executable):
        self.python = python
        self.temp_dir = tempfile.mkdtemp(prefix="rlray-", dir="/tmp")   # short: Ray's socket paths must fit
        self.env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
                    # the machine may be shared: Ray's memory monitor would kill this cluster's workers for memory
                    # that other processes hold
                    "RAY_memory_monitor_refresh_ms": "0"}
        self.gcs_port, self.dashboard_port, self.client_port = free_ports(3)
        self.nodes: list[Node] = []

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """The ``ray`` CLI of this Python (its raylets then start workers with this Python too)."""
        done = subprocess.run([self.python, "-m", "ray.scripts.scripts", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, check=False)
        assert done.returncode == 0, f"ray {' '.join(args)}: exit {done.returncode}\n{done.stdout[-2000:]}" \
                                     f"{done.stderr[-3000:]}"
        return done

    def _node_args(self, num_cpus: int, resources: dict[str, float]) -> tuple[Node, list[str]]:
        nm, om, agent, agent_grpc, metrics, rt_env = free_ports(6)
        # a worker-port range of its own, below the ephemeral ports that free_ports hands out (32768 and up)
        base = 20000 + (nm % 120) * 100
        node = Node(len(self.nodes), nm, resources)
        return node, ["--temp-dir", self.temp_dir, "--num-cpus", str(num_cpus), "--resources", json.dumps(resources),
                      "--node-manager-port", str(nm), "--object-manager-port", str(om),
                      "--min-worker-port", str(base), "--max-worker-port", str(base + 99),
                      "--dashboard-agent-listen-port", str(agent), "--dashboard-agent-grpc-port", str(agent_grpc),
                      "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(rt_env),
                      "--disable-usage-stats"]

    def start_head(self, num_cpus: int, resources: dict[str, float]) -> Node:
        node, args = self._node_args(num_cpus, resources)
        self.ray("start", "--head", "--port", str(self.gcs_port), "--include-dashboard", "true",
                 "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                 "--ray-client-server-port", str(self.client_port), *args)
        self.nodes.append(node)
        return node

    def add_node(self, num_cpus: int, resources: dict[str, float]) -> Node:
        node, args = self._node_args(num_cpus, resources)
        self.ray("start", "--address", f"127.0.0.1:{self.gcs_port}", *args)
        self.nodes.append(node)
        return node

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def submit(self, submission_id: str, entrypoint: list[str], working_dir: Path,
               runtime_env: Path) -> subprocess.Popen:
        """``ray job submit`` (which waits for the job) in the background; the driver's own output is
        :meth:`job_logs`."""
        return subprocess.Popen([self.python, "-m", "ray.scripts.scripts", "job", "submit", "--address", self.dashboard,
                                 "--submission-id", submission_id, "--working-dir", str(working_dir), "--runtime-env",
                                 str(runtime_env), "--", *entrypoint], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def job_logs(self, submission_id: str) -> str:
        return self.ray("job", "logs", "--address", self.dashboard, submission_id).stdout

    def alive_nodes(self) -> dict[str, dict]:
        """``{node id: total resources}`` of the alive nodes, from Ray's state API (``ray list nodes``)."""
        out = self.ray("list", "nodes", "--address", self.dashboard, "--format", "json", "--detail").stdout
        return {n["node_id"]: n["resources_total"] for n in json.loads(out) if n["state"] == "ALIVE"}

    def node_id(self, node: Node) -> str:
        """The Ray node id of ``node``, found by its custom resources (``ray list nodes``)."""
        ids = [i for i, res in self.alive_nodes().items()
               if all(res.get(k) == v for k, v in node.resources.items())]
        assert len(ids) == 1, (node, self.alive_nodes())
        return ids[0]

    def raylet_pid(self, node: Node) -> int:
        pids = [pid for pid, c in _cmdlines().items()
                if "raylet/raylet " in c and f"--node_manager_port={node.node_manager_port} " in c]
        assert len(pids) == 1, pids
        return pids[0]

    def kill_node(self, node: Node) -> None:
        """SIGKILL ``node``'s raylet, and its children with it (its workers, agents): the node is gone at once,
        as when its machine dies, instead of its workers finishing the step they hold first."""
        raylet = self.raylet_pid(node)
        others = _with_descendants({raylet}) - {raylet}
        _kill({raylet})
        _kill(others)

    def own_pids(self) -> set[int]:
        marks = (self.temp_dir, f"--port={self.client_port} ")
        return _with_descendants({pid for pid, c in _cmdlines().items() if any(m in c for m in marks)})

    def stop(self) -> None:
        """Kill every process of this cluster (by id) and check none is left."""
        for _ in range(3):
            pids = self.own_pids() - {os.getpid()}
            if not pids:
                break
            _kill(pids)
            time.sleep(0.5)
        left = self.own_pids() - {os.getpid()}
        assert not left, f"Ray processes of {self.temp_dir} left: {sorted(left)}"
        shutil.rmtree(self.temp_dir, ignore_errors=True)
