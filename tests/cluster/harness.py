"""Two Ray nodes on one machine that share no disk: each in its own mount namespace.

The head (``ray start --head --num-cpus=0 --block``) and one worker node (``--num-cpus=2``) each run inside
``unshare -m --propagation private``, where a different folder is bind-mounted at the same path
(:attr:`TwoNodeCluster.runs`): a file one node writes there is not where the other looks, as on a real
cluster whose nodes have their own boot disks. The head has no CPUs, so every task and actor runs on the
worker node. Drivers run in the head's namespace (``nsenter``), a GCS emulator on loopback stands in for
``gs://``. Every process is started in its own session and stopped by its process group; each node gets
its own ports and worker-port range, and the cluster its own Ray temp dir, so Ray clusters of others on this
machine are never touched.
"""
from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def unshare_problem() -> str | None:
    """Why mount namespaces cannot be used here, or None when they can."""
    if sys.platform != "linux":
        return "mount namespaces need Linux"
    for tool in ("unshare", "nsenter", "mount"):
        if not any((Path(d) / tool).exists() for d in os.environ.get("PATH", "/usr/bin").split(":")):
            return f"{tool} is not installed"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare -m is not permitted here: {probe.stderr.strip() or probe.returncode}"
    return None


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports outside Ray's default worker range 10000-19999."""
    ports: set[int] = set()
    while len(ports) < n:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not 10000 <= port <= 19999:
            ports.add(port)
    return sorted(ports)


def _free_range(width: int = 200) -> tuple[int, int]:
    """A block of ``width`` ports none of which is bound now (for a node's worker processes)."""
    for _ in range(100):
        # below the kernel's ephemeral range (32768+), where the single ports come from, and above Ray's
        # default worker range 10000-19999 that other clusters on this machine use
        start = random.randrange(20000, 32000 - width, width)
        try:
            socks = []
            for port in range(start, start + width, 17):  # a sample: a busy block is usually busy throughout
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return start, start + width - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range for Ray workers")


class TwoNodeCluster:
    """A running two-node cluster; see the module docstring. Use :func:`two_node_cluster` to start one.

    Attributes:
        address: the GCS address drivers join (``127.0.0.1:port``).
        runs: the path that is a different folder on each node.
        head_disk, worker_disk: the folders mounted at :attr:`runs` on the head and on the worker node.
        env: the environment of the nodes and of drivers (emulator, PYTHONPATH, Ray temp dir...).
    """

    def __init__(self, base: Path, env: dict[str, str]) -> None:
        self.base = base
        self.runs = base / "runs"
        self.head_disk = base / "head-disk"
        self.worker_disk = base / "worker-disk"
        for d in (self.runs, self.head_disk, self.worker_disk):
            d.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.address = ""
        self._procs: list[subprocess.Popen] = []
        self._head: subprocess.Popen | None = None
        self.logs = base / "logs"
        self.logs.mkdir(exist_ok=True)

    # --- nodes ----------------------------------------------------------------------------------------
    def _start_node(self, name: str, disk: Path, ray_args: list[str]) -> subprocess.Popen:
        ray = str(Path(sys.executable).with_name("ray"))
        # unshare execs the shell in the new namespace (same pid), which execs ray: the pid we record is
        # the node's `ray start --block`, and /proc/<pid>/ns/mnt is the node's mount namespace
        script = f'mount --bind "{disk}" "{self.runs}" && exec "{ray}" start --block ' + " ".join(ray_args)
        log = (self.logs / f"{name}.log").open("ab")
        # a raised priority while the node starts: Ray gives a starting node 30 s to register, which a loaded
        # machine misses; the node's processes go back to normal priority once it is up (see _normal_priority)
        boost = ["nice", "-n", "-20"] if os.geteuid() == 0 else []
        proc = subprocess.Popen([*boost, "unshare", "-m", "--propagation", "private", "sh", "-c", script],
                                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=str(self.base))
        self._procs.append(proc)
        if name == "head":
            self._head = proc  # drivers (and the readiness probe) run in its namespace
        return proc

    def start(self, timeout: float = 150.0) -> None:
        (gcs, node_m, obj_m, client, dash_listen, dash_grpc, rt_env, metrics, w_node_m, w_obj_m,
         w_dash_listen, w_dash_grpc, w_rt_env, w_metrics, dash) = _free_ports(15)
        head_workers, worker_workers = _free_range(), _free_range()
        self.address = f"127.0.0.1:{gcs}"
        common = ["--node-ip-address=127.0.0.1", "--disable-usage-stats"]
        head_args = [
            "--head", f"--port={gcs}", "--num-cpus=0", "--num-gpus=0", "--include-dashboard=false",
            f"--dashboard-port={dash}",
            f"--temp-dir={self.env['RAY_TMPDIR']}", f"--node-manager-port={node_m}",
            f"--object-manager-port={obj_m}", f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={dash_listen}", f"--dashboard-agent-grpc-port={dash_grpc}",
            f"--runtime-env-agent-port={rt_env}", f"--metrics-export-port={metrics}",
            f"--min-worker-port={head_workers[0]}", f"--max-worker-port={head_workers[1]}",
            "--object-store-memory=200000000", *common]
        self._head = self._start_with_retries("head", self.head_disk, head_args, "1", timeout)
        worker_args = [
            f"--address={self.address}", "--num-cpus=2", "--num-gpus=0", f"--node-manager-port={w_node_m}",
            f"--object-manager-port={w_obj_m}", f"--dashboard-agent-listen-port={w_dash_listen}",
            f"--dashboard-agent-grpc-port={w_dash_grpc}", f"--runtime-env-agent-port={w_rt_env}",
            f"--metrics-export-port={w_metrics}", f"--min-worker-port={worker_workers[0]}",
            f"--max-worker-port={worker_workers[1]}", "--object-store-memory=300000000", *common]
        self._start_with_retries("worker", self.worker_disk, worker_args, "2", timeout)

    def _start_with_retries(self, name: str, disk: Path, args: list[str], nodes: str, timeout: float,
                            attempts: int = 5) -> subprocess.Popen:
        """Start a node, again when it died or hung starting: on a loaded machine a raylet can miss the
        deadlines Ray gives it (30 s to register, a few seconds for its agents) and take the node down."""
        log = self.logs / f"{name}.log"
        for attempt in range(1, attempts + 1):
            offset = log.stat().st_size if log.exists() else 0
            proc = self._start_node(name, disk, args)
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                with log.open("rb") as fh:
                    fh.seek(offset)
                    if b"Ray runtime started" in fh.read():  # what `ray start` prints once the node is up
                        break
                time.sleep(0.5)  # polling the node's log for its own "started" line
            else:
                self._procs.remove(proc)
                self.kill(proc)
                if attempt == attempts:
                    raise RuntimeError(f"the {name} node did not come up after {attempts} attempts; see {log}")
                continue
            self._normal_priority(proc)
            if self._probe(nodes):
                return proc
            raise RuntimeError(f"the {name} node started but the cluster does not have {nodes} nodes; see {log}")
        raise AssertionError("unreachable")

    @staticmethod
    def _normal_priority(proc: subprocess.Popen) -> None:
        """Every process of the node's session back to niceness 0 (the workers it starts later inherit it)."""
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == proc.pid:  # the session id (the node was started in its own session)
                with contextlib.suppress(OSError):
                    os.setpriority(os.PRIO_PROCESS, int(stat.parent.name), 0)

    def _probe(self, nodes: str) -> bool:
        """True once the cluster has ``nodes`` alive nodes (asked by a short-lived driver)."""
        code = ("import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False);"
                "sys.exit(0 if sum(n['Alive'] for n in ray.nodes()) >= int(sys.argv[2]) else 3)")
        try:
            done = self.run([sys.executable, "-c", code, self.address, nodes], timeout=120, check=False)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    # --- drivers --------------------------------------------------------------------------------------
    def driver_cmd(self, argv: list[str]) -> list[str]:
        """``argv`` run in the head's mount namespace (where the driver of a real cluster runs)."""
        assert self._head is not None
        return ["nsenter", f"--mount=/proc/{self._head.pid}/ns/mnt", "--", *argv]

    def run(self, argv: list[str], timeout: float = 1800, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a driver command to completion in the head's namespace; its own session, killed on timeout."""
        proc = self.popen(argv, env=env)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(proc)
            raise
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if check and done.returncode != 0:
            raise AssertionError(f"{argv} failed ({done.returncode}):\n{err[-4000:]}")
        return done

    def popen(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        return subprocess.Popen(self.driver_cmd(argv), env={**self.env, **(env or {})}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=str(REPO))

    def cli(self, *args: str) -> list[str]:
        """The argv of an ``inpars-ray`` verb joined to this cluster."""
        return [sys.executable, "-m", "inpars_ray", *args, "--ray-address", self.address]

    def on_node(self, node: str, path: Path) -> Path:
        """Where the file a node sees at ``path`` (under :attr:`runs`) really is."""
        disk = self.head_disk if node == "head" else self.worker_disk
        return disk / Path(path).relative_to(self.runs)

    @staticmethod
    def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=60)

    # --- teardown -------------------------------------------------------------------------------------
    def stop(self) -> None:
        """SIGTERM each node's process group (``ray start --block`` then stops its node), worker first."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)
            # processes of the node that left its process group (raylet, gcs, workers) go with its group id
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def two_node_cluster(base: Path, gcs_url: str, extra_env: dict[str, str] | None = None) -> Iterator[TwoNodeCluster]:
    """Start a :class:`TwoNodeCluster` under ``base`` whose nodes and drivers reach ``gs://`` at ``gcs_url``."""
    tmpdir = Path("/tmp") / f"ir2n-{os.getpid()}-{random.randrange(1 << 20):05x}"  # short: socket paths
    tmpdir.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update({
        "PYTHONPATH": str(REPO), "STORAGE_EMULATOR_HOST": gcs_url, "RAY_TMPDIR": str(tmpdir),
        "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "INPARS_RAY_PROGRESS": "0", "RAY_DEDUP_LOGS": "0", "RAY_USAGE_STATS_ENABLED": "0",
        # a loaded machine starts a node's Python agents slowly: give the raylet longer to wait for them
        "RAY_agent_register_timeout_ms": "300000", "RAY_raylet_start_wait_time_s": "300",
        "INPARS_RAY_CACHE": str(base / "cache"),
        # each node's copies of published artifacts stay on that node's own disk
        "INPARS_RAY_NODE_CACHE": str(base / "runs" / ".node-cache"), **(extra_env or {}),
    })
    cluster = TwoNodeCluster(base, env)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        import shutil

        shutil.rmtree(tmpdir, ignore_errors=True)
