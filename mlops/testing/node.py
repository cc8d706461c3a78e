"""A real kubelet node for the local cluster: containerd + runc + CNI bridge, kubelet, kube-proxy and
CoreDNS, started as local processes beside the KWOK nodes.

Why it exists: KWOK makes pods "Ready" without running anything, so the image, its entry points
under the restricted profile, init containers, probes, Services and DNS were never exercised. This
module runs them for real on the test machine (root, no Docker), the way
``docs/real-node.md`` describes, and gives the host back as it found it:

- networking stays on a bridge of our own (``mlk<id>``, a free ``10.77.N.0/24``): pods get a route
  to the Service range through the bridge and nothing else: no default route, no masquerade, and a
  FORWARD rule drops anything from the bridge that would leave through another interface;
- the API server listens on the bridge address (``LocalCluster`` binds it there), so pods reach it
  through the ``kubernetes`` Service (kube-proxy) and in-cluster clients work;
- CoreDNS listens on the bridge address port 53 and serves the cluster domain only (no forwarding);
- every host change is recorded before it is made in ``/run/mlops-operator/real-node.json``:
  sysctls kubelet/kube-proxy change, iptables chains, the bridge, cgroups, mounts, CNI network
  namespaces and cache files. ``stop()`` undoes them; a crashed run is undone by the next start.

Binaries come from ``hack/build-node.sh`` (``make tools``); runc and CNI plugins from Debian
packages (``hack/host-packages.sh``). One real node per host (kubelet's cgroup root is global).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops.testing.cluster import free_port
from mlops.testing.waiting import wait_until

if TYPE_CHECKING:
    from mlops.testing.cluster import LocalCluster

K8S_VERSION = "v1.36.3"
CONTAINERD_VERSION = "v2.4.2"
COREDNS_VERSION = "v1.14.7"
NODE_BINARIES = ("kubelet", "kube-proxy", "containerd", "containerd-shim-runc-v2", "ctr", "coredns", "pause")
RUNC = "/usr/sbin/runc"
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_PLUGINS = ("bridge", "host-local", "loopback")
PAUSE_IMAGE = "localhost/mlops-pause:1"
CLUSTER_DOMAIN = "cluster.local"
REGISTRY_DIR = Path(os.environ.get("MLOPS_REAL_NODE_REGISTRY", "/run/mlops-operator"))
REGISTRY = REGISTRY_DIR / "real-node.json"
NETNS_DIR = Path("/var/run/netns")
CNI_CACHE = Path("/var/lib/cni/results")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Host paths containerd and the shims use whatever their config says: created if missing, and removed
# on stop when they did not exist before and are empty.
HOST_DIRS = (Path("/run/containerd"), Path("/var/run/netns"), Path("/var/lib/cni/results"), Path("/var/lib/cni"),
             Path("/opt/containerd"))
# Created only by containerd and its shims (e.g. shim sockets in /run/containerd/s): when they did not
# exist before the node started, whatever is in them is the node's.
OWNED_IF_NEW = (Path("/run/containerd"), Path("/opt/containerd"))
# Sysctls kubelet (setupKernelTunables), kube-proxy and the node itself change.
SYSCTLS = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    "net/netfilter/nf_conntrack_tcp_be_liberal",
)


class NodeError(RuntimeError):
    """The real node could not be built, started, reached or cleaned up."""


def cache_dir() -> Path:
    return Path(os.environ.get("MLOPS_CACHE") or Path.home() / ".cache" / "mlops-operator")


def node_bin_dir() -> Path:
    """Where hack/build-node.sh puts the binaries (override: $MLOPS_NODE_BIN)."""
    override = os.environ.get("MLOPS_NODE_BIN")
    if override:
        return Path(override)
    return (cache_dir() / "bin"
            / f"node-k8s-{K8S_VERSION}_containerd-{CONTAINERD_VERSION}_coredns-{COREDNS_VERSION}")


def missing_prerequisites() -> list[str]:
    """What a real node needs and this host lacks, each with the command that provides it ([] = ready)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (kubelet, containerd and the bridge need it)")
    absent = [b for b in NODE_BINARIES if not os.access(node_bin_dir() / b, os.X_OK)]
    if absent:
        missing.append(f"{', '.join(absent)} in {node_bin_dir()} (make tools: bash hack/build-node.sh)")
    if not os.access(RUNC, os.X_OK):
        missing.append(f"{RUNC} (apt-get install runc: bash hack/host-packages.sh)")
    if not all(os.access(CNI_BIN_DIR / p, os.X_OK) for p in CNI_PLUGINS):
        missing.append(f"CNI plugins in {CNI_BIN_DIR} (apt-get install containernetworking-plugins)")
    for tool in ("iptables", "iptables-save", "ip", "podman"):
        if not shutil.which(tool):
            missing.append(f"{tool} (bash hack/host-packages.sh)")
    if not Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
        missing.append("the br_netfilter kernel module (modprobe br_netfilter)")
    return missing


def _run(*cmd: str, check: bool = True, timeout: float = 120, env: dict[str, str] | None = None,
         input: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False, env=env,
                          input=input)
    if check and proc.returncode != 0:
        raise NodeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


# ---------------------------------------------------------------------------------- host snapshot


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key


def read_sysctls() -> dict[str, str]:
    out = {}
    for key in SYSCTLS:
        with contextlib.suppress(OSError):
            out[key] = _sysctl_path(key).read_text().strip()
    return out


def write_sysctl(key: str, value: str) -> None:
    with contextlib.suppress(OSError):
        if _sysctl_path(key).read_text().strip() != value:
            _sysctl_path(key).write_text(value + "\n")


def _iptables_rules(binary: str) -> list[str]:
    """Rules and chains (no counters, no comments, no table headers' timestamps), sorted."""
    if not shutil.which(binary):
        return []
    proc = _run(binary, check=False)
    lines = []
    for line in proc.stdout.splitlines():
        if line.startswith("#"):
            continue
        if line.startswith(":"):
            line = line.split(" ")[0] + " " + line.split(" ")[1]  # ":CHAIN POLICY [p:b]" -> ":CHAIN POLICY"
        lines.append(line)
    return sorted(lines)


def _save_lines(binary: str) -> list[str]:
    save = shutil.which(f"{binary}-save")
    return _run(save, check=False).stdout.splitlines() if save else []


def _chains(binary: str, prefix: str) -> set[str]:
    """``table/CHAIN`` names starting with ``prefix``."""
    found, table = set(), ""
    for line in _save_lines(binary):
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":" + prefix):
            found.add(f"{table}/{line[1:].split()[0]}")
    return found


def _remove_chains(binary: str, prefix: str, keep: set[str]) -> None:
    """Delete every rule jumping to a ``prefix`` chain not in ``keep`` (``table/CHAIN``), then those chains."""
    import shlex

    doomed = _chains(binary, prefix) - keep
    if not doomed:
        return
    table = ""
    for line in _save_lines(binary):
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A "):
            args = shlex.split(line)
            chain = args[1]
            target = args[args.index("-j") + 1] if "-j" in args else ""
            if f"{table}/{chain}" not in doomed and f"{table}/{target}" in doomed:
                _run(binary, "-w", "-t", table, "-D", *args[1:], check=False)
    for name in sorted(doomed):
        table, chain = name.split("/", 1)
        _run(binary, "-w", "-t", table, "-F", chain, check=False)
    for name in sorted(doomed):
        table, chain = name.split("/", 1)
        _run(binary, "-w", "-t", table, "-X", chain, check=False)


def _mounts() -> list[str]:
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        parts = line.split()
        fstype = parts[parts.index("-") + 1] if "-" in parts else ""
        out.append(f"{parts[4]} {fstype}")  # mount point and type (IDs change with every remount)
    return sorted(out)


def _links() -> list[str]:
    return sorted(p.name for p in Path("/sys/class/net").iterdir())


def _netns() -> list[str]:
    return sorted(p.name for p in NETNS_DIR.iterdir()) if NETNS_DIR.is_dir() else []


def _kubepods_cgroups() -> list[str]:
    found = []
    if CGROUP_ROOT.is_dir():
        for hierarchy in CGROUP_ROOT.iterdir():
            for name in ("kubepods", "kubepods.slice"):
                if (hierarchy / name).is_dir():
                    found.append(str(hierarchy / name))
        for name in ("kubepods", "kubepods.slice"):
            if (CGROUP_ROOT / name).is_dir():
                found.append(str(CGROUP_ROOT / name))
    return sorted(set(found))


def host_snapshot() -> dict[str, Any]:
    """What a real node may change on the host, for before/after comparisons."""
    return {
        "sysctls": read_sysctls(),
        "iptables": _iptables_rules("iptables-save"),
        "ip6tables": _iptables_rules("ip6tables-save"),
        "links": _links(),
        "netns": _netns(),
        "mounts": _mounts(),
        "cgroups": _kubepods_cgroups(),
        "host_dirs": sorted(str(d) for d in HOST_DIRS if d.exists()),
        "cni_cache": sorted(p.name for p in CNI_CACHE.iterdir()) if CNI_CACHE.is_dir() else [],
    }


def snapshot_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The keys whose values differ, as {key: {"added": [...], "removed": [...]}} or {"before", "after"}."""
    diff: dict[str, Any] = {}
    for key in before.keys() | after.keys():
        a, b = before.get(key), after.get(key)
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list):
            removed = set(a) - set(b)
            if key == "links":  # a pod veth of an earlier cluster, gone meanwhile, is not a leftover of this one
                removed = {name for name in removed if not name.startswith("veth")}
            if set(b) - set(a) or removed:
                diff[key] = {"added": sorted(set(b) - set(a)), "removed": sorted(removed)}
        elif isinstance(a, dict) and isinstance(b, dict):
            diff[key] = {k: {"before": a.get(k), "after": b.get(k)} for k in a.keys() | b.keys()
                         if a.get(k) != b.get(k)}
        else:
            diff[key] = {"before": a, "after": b}
    return diff


# ------------------------------------------------------------------------------------ the registry


_lock_depth = 0


@contextlib.contextmanager
def _registry_lock():
    """An exclusive lock on the host's real-node registry (re-entrant within this process: clean-up of a
    crashed node runs while ``prepare`` holds it)."""
    global _lock_depth
    if _lock_depth:
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
        return
    REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
    with open(REGISTRY_DIR / "real-node.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _lock_depth = 1
        try:
            yield
        finally:
            _lock_depth = 0
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_registry() -> dict[str, Any] | None:
    try:
        return json.loads(REGISTRY.read_text())
    except (OSError, ValueError):
        return None


def _write_registry(state: dict[str, Any]) -> None:
    REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
    tmp = REGISTRY.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(REGISTRY)


# -------------------------------------------------------------------------------------- processes


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return ""


def _terminate(pid: int, binary: str | None, timeout: float = 15) -> None:
    """SIGTERM then SIGKILL ``pid`` if it still runs ``binary`` (a path; guards a recycled PID)."""
    if not _pid_alive(pid) or (binary and _exe(pid) != binary):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while _pid_alive(pid):
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _shim_pids(containerd_address: str) -> list[int]:
    """containerd-shim-runc-v2 processes serving our containerd (they outlive it by design)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if Path(_exe(int(proc.name))).name != "containerd-shim-runc-v2":
                continue
            args = (proc / "cmdline").read_bytes().split(b"\0")
            if containerd_address.encode() in args:
                pids.append(int(proc.name))
    return pids


def _wait(predicate, timeout: float, what: str, on_fail=lambda: "") -> None:
    wait_until(predicate, timeout, what, on_fail, error=NodeError)


# ------------------------------------------------------------------------------------------ network


def _used_networks() -> list[ipaddress.IPv4Network]:
    nets = []
    proc = _run("ip", "-4", "-o", "addr", "show", check=False)
    for line in proc.stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    proc = _run("ip", "-4", "route", "show", "table", "all", check=False)
    for line in proc.stdout.splitlines():
        dst = line.split()[0] if line.split() else ""
        with contextlib.suppress(ValueError):
            if dst not in ("default", "local", "broadcast", "unreachable"):
                nets.append(ipaddress.ip_network(dst, strict=False))
    return nets


def pick_pod_network() -> ipaddress.IPv4Network:
    """A free 10.77.N.0/24 (no address or route on the host overlaps it)."""
    used = _used_networks()
    for n in range(0, 256):
        candidate = ipaddress.ip_network(f"10.77.{n}.0/24")
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise NodeError("no free 10.77.N.0/24 network for the real node's pods")


@dataclass
class NodeNetwork:
    """The bridge the node's pods live on; ``gateway`` is the node IP and the API server's address."""

    id: str
    bridge: str
    subnet: str
    gateway: str

    @classmethod
    def allocate(cls, node_id: str) -> NodeNetwork:
        subnet = pick_pod_network()
        return cls(id=node_id, bridge=f"mlk{node_id}", subnet=str(subnet), gateway=str(subnet.network_address + 1))

    @property
    def chain(self) -> str:
        return f"MLOPS-{self.id.upper()}"

    def create(self) -> None:
        prefix = ipaddress.ip_network(self.subnet).prefixlen
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "replace", f"{self.gateway}/{prefix}", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        # Pods talk to each other, to the node (gateway) and to Service IPs (DNAT by kube-proxy) only:
        # whatever would be forwarded from the bridge to any other interface is dropped.
        _run("iptables", "-w", "-N", self.chain)
        _run("iptables", "-w", "-A", self.chain, "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT")
        _run("iptables", "-w", "-A", self.chain, "-i", self.bridge, "-j", "DROP")
        _run("iptables", "-w", "-A", self.chain, "-o", self.bridge, "-j", "DROP")
        _run("iptables", "-w", "-I", "FORWARD", "1", "-j", self.chain)

    def delete(self) -> None:
        while _run("iptables", "-w", "-D", "FORWARD", "-j", self.chain, check=False).returncode == 0:
            pass
        _run("iptables", "-w", "-F", self.chain, check=False)
        _run("iptables", "-w", "-X", self.chain, check=False)
        if Path(f"/sys/class/net/{self.bridge}").exists():
            _run("ip", "link", "delete", self.bridge, check=False)


# ---------------------------------------------------------------------------------------- images


def _podman() -> list[str]:
    from mlops.testing.image import podman_command

    return podman_command()


def containerd_root() -> Path:
    """containerd's root (content store, snapshots, metadata) persists across runs, like a node's
    /var/lib/containerd: imported images stay. Its state (sockets, running tasks) is per run."""
    path = cache_dir() / "node" / "containerd-root"
    path.mkdir(parents=True, exist_ok=True)
    return path


def pause_archive() -> Path:
    """An OCI archive of the pause image (the static hack/pause binary), cached by the binary's size/mtime."""
    binary = node_bin_dir() / "pause"
    st = binary.stat()
    out = cache_dir() / "image" / f"pause-{st.st_size}-{int(st.st_mtime)}.docker.tar"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        _run("tar", "-C", str(binary.parent), "-cf", str(rootfs), "pause")
        _run(*_podman(), "import", "--change", 'ENTRYPOINT ["/pause"]', str(rootfs), PAUSE_IMAGE)
        part = out.with_suffix(".part")
        part.unlink(missing_ok=True)
        _run(*_podman(), "save", "--format", "docker-archive", "-o", str(part), PAUSE_IMAGE)
        part.replace(out)
    return out


def _normalized(image: str) -> str:
    """containerd's name for an image reference (docker.io/library/ for bare names)."""
    first = image.split("/", 1)[0]
    if "/" not in image:
        return f"docker.io/library/{image}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{image}"
    return image


# ------------------------------------------------------------------------------------------ the node


@dataclass
class RealNode:
    """A running kubelet node. Start with ``RealNode.prepare`` (before the API server: it needs the
    bridge address), then ``start(cluster)``; ``stop()`` undoes every host change."""

    workdir: Path
    network: NodeNetwork
    name: str
    pids: dict[str, int] = field(default_factory=dict)
    saved_sysctls: dict[str, str] = field(default_factory=dict)
    host_dirs_before: list[str] = field(default_factory=list)
    netns_before: list[str] = field(default_factory=list)
    cni_cache_before: list[str] = field(default_factory=list)
    cgroups_before: list[str] = field(default_factory=list)
    kube_chains_before: list[str] = field(default_factory=list)

    # -------------------------------------------------------------- paths

    @property
    def root(self) -> Path:
        """The node's files (configs, kubelet root with its sockets, containerd state) under /run: unix
        socket paths are limited to about 104 bytes and pytest's temporary folders are longer."""
        return REGISTRY_DIR / f"node-{self.network.id}"

    @property
    def containerd_address(self) -> str:
        return str(self.root / "containerd" / "containerd.sock")

    @property
    def cni_network_name(self) -> str:
        return f"mlops-{self.network.id}"

    def state(self) -> dict[str, Any]:
        return {
            "workdir": str(self.workdir), "name": self.name, "network": self.network.__dict__,
            "pids": self.pids, "saved_sysctls": self.saved_sysctls, "host_dirs_before": self.host_dirs_before,
            "netns_before": self.netns_before, "cni_cache_before": self.cni_cache_before,
            "cgroups_before": self.cgroups_before, "kube_chains_before": self.kube_chains_before,
            "bin_dir": str(node_bin_dir()),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RealNode:
        return cls(
            workdir=Path(state["workdir"]), name=state["name"], network=NodeNetwork(**state["network"]),
            pids={k: int(v) for k, v in state.get("pids", {}).items()},
            saved_sysctls=state.get("saved_sysctls", {}), host_dirs_before=state.get("host_dirs_before", []),
            netns_before=state.get("netns_before", []), cni_cache_before=state.get("cni_cache_before", []),
            cgroups_before=state.get("cgroups_before", []),
            kube_chains_before=state.get("kube_chains_before", []),
        )

    def _save(self) -> None:
        _write_registry(self.state())
        (self.workdir / "real-node.json").write_text(json.dumps(self.state(), indent=2))

    # -------------------------------------------------------------- lifecycle

    @classmethod
    def prepare(cls, workdir: Path) -> RealNode:
        """Clean up after a crashed run, record the host state, create the bridge. Raises NodeError when
        another live real node holds the host."""
        missing = missing_prerequisites()
        if missing:
            raise NodeError("a real node needs: " + "; ".join(missing))
        with _registry_lock():
            previous = _read_registry()
            if previous:
                other = RealNode.from_state(previous)
                if other.alive():
                    raise NodeError(
                        f"another real node is running on this host (workdir {other.workdir}, "
                        f"pids {other.pids}); stop it first (python -m mlops.testing.cluster down --dir ...)"
                    )
                other.stop()  # a crashed run: undo what it left behind
            node_id = os.urandom(3).hex()
            node = cls(
                workdir=Path(workdir), network=NodeNetwork.allocate(node_id), name=f"real-node-{node_id}",
                saved_sysctls=read_sysctls(),
                host_dirs_before=sorted(str(d) for d in HOST_DIRS if d.exists()),
                netns_before=_netns(),
                cni_cache_before=sorted(p.name for p in CNI_CACHE.iterdir()) if CNI_CACHE.is_dir() else [],
                cgroups_before=_kubepods_cgroups(),
                kube_chains_before=sorted(_chains("iptables", "KUBE-") | _chains("ip6tables", "KUBE-")),
            )
            if node.cgroups_before:
                raise NodeError(f"kubepods cgroups already exist ({node.cgroups_before}): another kubelet "
                                "runs on this host, and only one may use the default cgroup root")
            node.root.mkdir(parents=True, exist_ok=True)
            node._save()  # recorded before any change, so a crash right after is still undone
            try:
                node.network.create()
                # Service traffic between pods on one bridge must pass iptables (kube-proxy's DNAT and its
                # reverse), and the host routes pod -> Service IP -> pod.
                write_sysctl("net/bridge/bridge-nf-call-iptables", "1")
                write_sysctl("net/ipv4/ip_forward", "1")
            except BaseException:
                node.stop()
                raise
            return node

    def alive(self) -> bool:
        bin_dir = node_bin_dir()
        return any(_pid_alive(pid) and _exe(pid) == str(bin_dir / name) for name, pid in self.pids.items())

    def start(self, cluster: LocalCluster, timeout: float = 120) -> None:
        """containerd (+ pause image), kubelet, kube-proxy and CoreDNS; waits for the node to be Ready
        and DNS to answer."""
        try:
            self._write_configs(cluster)
            self._spawn("containerd", ["--config", str(self.root / "containerd" / "config.toml")])
            _wait(lambda: self._died("containerd") or Path(self.containerd_address).exists(), 30,
                  "containerd's socket", lambda: self.logs_tail("containerd"))
            self.import_archive(pause_archive())
            self._spawn("kubelet", [
                f"--config={self.root / 'kubelet' / 'config.yaml'}",
                f"--kubeconfig={self.root / 'kubelet' / 'kubeconfig'}",
                f"--root-dir={self.root / 'kubelet' / 'root'}",
                f"--cert-dir={self.root / 'kubelet' / 'pki'}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.network.gateway}",
                "--node-labels=type=real,mlops.duetmind.io/real-node=true",
                "--v=1",
            ])
            self._spawn("kube-proxy", [f"--config={self.root / 'kube-proxy' / 'config.yaml'}", "--v=1"])
            self._spawn("coredns", ["-conf", str(self.root / "coredns" / "Corefile")])
            _wait(lambda: self._died(*self.pids) or self._node_ready(cluster), timeout,
                  f"node {self.name} Ready", lambda: self.logs_tail("kubelet"))
            _wait(lambda: self._died(*self.pids) or self._dns_ready(), 60, "CoreDNS ready",
                  lambda: self.logs_tail("coredns"))
        except BaseException:
            self.stop(cluster)
            raise

    def _died(self, *names: str) -> bool:
        for name in names:
            pid = self.pids.get(name)
            if pid is not None and not _pid_alive(pid):
                raise NodeError(f"{name} exited during start-up\n{self.logs_tail(name)}")
        return False

    def _spawn(self, name: str, args: list[str]) -> None:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PATH"] = f"{node_bin_dir()}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        with open(logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([str(node_bin_dir() / name), *args], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=self.root, env=env, start_new_session=True)
        self.pids[name] = proc.pid
        self._save()

    def logs_tail(self, component: str, lines: int = 40) -> str:
        log = self.workdir / "logs" / f"{component}.log"
        if not log.exists():
            return f"(no log for {component})"
        text = log.read_text(errors="replace").splitlines()[-lines:]
        return f"--- last lines of {log} ---\n" + "\n".join(text)

    def _node_ready(self, cluster: LocalCluster) -> bool:
        proc = cluster.kubectl("get", "node", self.name, "-o", "json", check=False)
        if proc.returncode != 0:
            return False
        conds = json.loads(proc.stdout).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

    def _dns_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.dns_ready_port}/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    @property
    def dns_ready_port(self) -> int:
        return int((self.root / "coredns" / "ready-port").read_text())

    def ctr(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return _run(str(node_bin_dir() / "ctr"), "--address", self.containerd_address, "--namespace", "k8s.io",
                    *args, timeout=timeout)

    def import_archive(self, archive: Path) -> None:
        # docker-archive: ctr names the image after its RepoTags (e.g. localhost/mlops-operator:dev).
        self.ctr("images", "import", str(archive))

    def load_image(self, image: str) -> None:
        """Copy a podman image into the node's containerd (``podman save`` + ``ctr images import``).

        containerd's content store persists in the cache (``containerd_root()``), so an image whose
        podman ID was imported before is not copied again (a 900 MB image takes minutes)."""
        image_id = _run(*_podman(), "image", "inspect", "--format", "{{.Id}}", image).stdout.strip()
        marker = containerd_root().parent / "imported" / f"{image_id}-{image.replace('/', '_')}"
        present = _normalized(image) in self.ctr("images", "ls", "--quiet").stdout.split()
        if marker.exists() and present:
            return
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            archive = Path(tmp) / "image.tar"
            _run(*_podman(), "save", "--format", "docker-archive", "-o", str(archive), image, timeout=900)
            self.import_archive(archive)
        marker.parent.mkdir(parents=True, exist_ok=True)
        for old in marker.parent.glob(f"*-{image.replace('/', '_')}"):
            old.unlink()
        marker.touch()

    def tag_image(self, image: str, *names: str) -> None:
        """Give an imported image more names (e.g. the one manifests/ reference), so pods with
        ``imagePullPolicy: IfNotPresent`` find it without a registry."""
        for name in names:
            self.ctr("images", "tag", "--force", _normalized(image), _normalized(name))

    # -------------------------------------------------------------- configuration

    def _write_configs(self, cluster: LocalCluster) -> None:
        from mlops.testing.cluster import _cert_user, _kubeconfig, issue_cert

        pki = cluster.workdir / "pki"
        gw = self.network.gateway
        net = self.network

        cni = self.root / "cni"
        (cni / "net.d").mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": self.cni_network_name,
            "plugins": [{
                "type": "bridge",
                "bridge": net.bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(cni / "ipam"),
                    "ranges": [[{"subnet": net.subnet, "gateway": gw}]],
                    # The Service range only: no default route, so pods cannot reach beyond the node.
                    "routes": [{"dst": cluster.service_cidr}],
                },
            }],
        }
        (cni / "net.d" / "10-mlops.conflist").write_text(json.dumps(conflist, indent=2))

        cd = self.root / "containerd"
        cd.mkdir(parents=True, exist_ok=True)
        (cd / "config.toml").write_text(f"""\
version = 3
root = "{containerd_root()}"
state = "{cd / 'state'}"
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "{self.containerd_address}"

[ttrpc]
  address = "{self.containerd_address}.ttrpc"

[debug]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{cd / 'opt'}"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{CNI_BIN_DIR}"]
    conf_dir = "{cni / 'net.d'}"
    max_conf_num = 1
""")

        kl = self.root / "kubelet"
        (kl / "pki").mkdir(parents=True, exist_ok=True)
        issue_cert(pki, f"kubelet-{self.name}", f"system:node:{self.name}", ["system:nodes"], server=False,
                   out=kl / "pki" / "client")
        issue_cert(pki, f"kubelet-serving-{self.name}", f"system:node:{self.name}", ["system:nodes"], server=True,
                   out=kl / "pki" / "serving", ips=[gw], dns=[self.name])
        (kl / "kubeconfig").write_text(_kubeconfig(cluster.server, pki / "ca.crt", {
            "client-certificate": str(kl / "pki" / "client.crt"), "client-key": str(kl / "pki" / "client.key")}))
        (kl / "resolv.conf").write_text("")  # pods get the cluster DNS and its search path, nothing of the host
        self.kubelet_port = free_port(gw)
        kubelet_config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{self.containerd_address}",
            "address": gw,
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "tlsCertFile": str(kl / "pki" / "serving.crt"),
            "tlsPrivateKeyFile": str(kl / "pki" / "serving.key"),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(pki / "ca.crt")}},
            "authorization": {"mode": "Webhook"},
            "failSwapOn": False,
            "clusterDNS": [gw],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(kl / "resolv.conf"),
            "podLogsDir": str(kl / "pod-logs"),
            "makeIPTablesUtilChains": False,
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "protectKernelDefaults": False,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            # Images arrive by import, never by pull: garbage collecting them would break later pods.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "maxPods": 60,
            "podPidsLimit": 4096,
            "syncFrequency": "5s",
            "nodeStatusUpdateFrequency": "5s",
            "fileCheckFrequency": "5s",
        }
        (kl / "config.yaml").write_text(json.dumps(kubelet_config, indent=2))

        kp = self.root / "kube-proxy"
        kp.mkdir(parents=True, exist_ok=True)
        issue_cert(pki, "kube-proxy", "system:kube-proxy", [], server=False, out=kp / "client")
        (kp / "kubeconfig").write_text(_kubeconfig(cluster.server, pki / "ca.crt", {
            "client-certificate": str(kp / "client.crt"), "client-key": str(kp / "client.key")}))
        proxy_config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kp / "kubeconfig")},
            "mode": "iptables",
            "hostnameOverride": self.name,
            "clusterCIDR": net.subnet,
            "bindAddress": gw,
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "nodePortAddresses": [f"{gw}/32"],
            "iptables": {"localhostNodePorts": False, "masqueradeAll": False, "syncPeriod": "5s",
                         "minSyncPeriod": "0s"},
            # Leave the host's conntrack table settings alone.
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s",
                          "tcpBeLiberal": False, "udpTimeout": "0s", "udpStreamTimeout": "0s"},
            "detectLocalMode": "ClusterCIDR",
        }
        (kp / "config.yaml").write_text(json.dumps(proxy_config, indent=2))

        dns = self.root / "coredns"
        dns.mkdir(parents=True, exist_ok=True)
        ready_port = free_port()
        (dns / "ready-port").write_text(str(ready_port))
        admin_kubeconfig = dns / "kubeconfig"
        admin_kubeconfig.write_text(_kubeconfig(cluster.server, pki / "ca.crt", _cert_user(pki, "admin")))
        (dns / "Corefile").write_text(f"""\
# The cluster domain only: names outside it are refused, nothing is forwarded off the node.
{CLUSTER_DOMAIN}:53 in-addr.arpa:53 {{
    bind {gw}
    errors
    ready 127.0.0.1:{ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa {{
        kubeconfig {admin_kubeconfig} mlops-local
        pods insecure
        ttl 5
    }}
    cache 5
    loadbalance
}}
""")

    # -------------------------------------------------------------- teardown

    def stop(self, cluster: LocalCluster | None = None, timeout: float = 60) -> None:
        """Delete the node's pods (so kubelet tears down their sandboxes, netns and IPs), stop every
        process, and undo every host change. Safe to call twice and after a crash."""
        bin_dir = node_bin_dir()
        errors: list[str] = []
        if cluster is not None and self.alive() and _pid_alive(self.pids.get("kubelet", -1)):
            with contextlib.suppress(Exception):
                # Cordon first: controllers' replacement pods must not land here again while we wait.
                cluster.kubectl("cordon", self.name, check=False)
                cluster.kubectl("delete", "pods", "--all-namespaces", "--all", "--grace-period=1",
                                f"--field-selector=spec.nodeName={self.name}", "--wait=false", check=False)
                _wait(lambda: not self._pods_left(cluster), timeout, "the node's pods to be deleted")
        for name in ("coredns", "kube-proxy", "kubelet"):
            if name in self.pids:
                _terminate(self.pids[name], str(bin_dir / name))
        # Containers kubelet did not get to stop: kill every process in the node's pod cgroups.
        self._kill_pod_processes()
        if "containerd" in self.pids:
            _terminate(self.pids["containerd"], str(bin_dir / "containerd"))
        for pid in _shim_pids(self.containerd_address):
            _terminate(pid, None)
        if os.access(bin_dir / "kube-proxy", os.X_OK):
            # kube-proxy's own clean-up of its KUBE-* chains (iptables and ip6tables).
            # Its exit status also reflects the nftables and IPVS back ends this host may not have, so
            # what counts is whether any KUBE- chain is left.
            proc = _run(str(bin_dir / "kube-proxy"), "--cleanup", "--v=0", check=False, timeout=60)
            # kubelet's own chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY) are not kube-proxy's to clean.
            for binary in ("iptables", "ip6tables"):
                _remove_chains(binary, "KUBE-", keep=set(self.kube_chains_before))
            left = [r for r in _iptables_rules("iptables-save") + _iptables_rules("ip6tables-save") if "KUBE-" in r]
            if left:
                errors.append(f"kube-proxy --cleanup left {len(left)} KUBE- rules: {proc.stderr.strip()[-300:]}")
        self._unmount_under(self.root)
        self._unmount_under(self.workdir)
        shutil.rmtree(self.root, ignore_errors=True)
        self._remove_netns()
        self._remove_cni_cache()
        self._remove_cgroups()
        self.network.delete()
        for key, value in self.saved_sysctls.items():
            try:
                write_sysctl(key, value)
            except OSError as exc:
                errors.append(f"sysctl {key}={value}: {exc}")
        for d in HOST_DIRS:
            if str(d) not in self.host_dirs_before and d.exists():
                if d in OWNED_IF_NEW:
                    shutil.rmtree(d, ignore_errors=True)  # only containerd and its shims use these
                else:
                    self._remove_if_only_empty_dirs(d)
        self.pids = {}
        with _registry_lock():
            current = _read_registry()
            if current and current.get("workdir") == str(self.workdir):
                REGISTRY.unlink(missing_ok=True)
        if errors:
            raise NodeError("real node clean-up incomplete: " + "; ".join(errors))

    def _pods_left(self, cluster: LocalCluster) -> bool:
        proc = cluster.kubectl("get", "pods", "-A", f"--field-selector=spec.nodeName={self.name}", "-o", "name",
                               check=False)
        return proc.returncode == 0 and bool(proc.stdout.strip())

    def _kill_pod_processes(self) -> None:
        for _ in range(3):
            pids = set()
            for cg in _kubepods_cgroups():
                if cg in self.cgroups_before:
                    continue
                for procs in Path(cg).rglob("cgroup.procs"):
                    with contextlib.suppress(OSError, ValueError):
                        pids.update(int(p) for p in procs.read_text().split())
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)

    def _remove_cgroups(self) -> None:
        for cg in _kubepods_cgroups():
            if cg in self.cgroups_before:
                continue
            # Deepest first: a cgroup directory goes only once its children are gone.
            dirs = sorted((p for p in Path(cg).rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
            for d in [*dirs, Path(cg)]:
                for _ in range(20):
                    try:
                        d.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.1)

    @staticmethod
    def _unmount_under(path: Path) -> None:
        prefix = str(path.resolve())
        for _ in range(3):
            points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
            ours = sorted({p for p in points if p == prefix or p.startswith(prefix + "/")}, key=len, reverse=True)
            if not ours:
                return
            for point in ours:
                _run("umount", "-l", point.replace("\\040", " "), check=False)

    def _remove_netns(self) -> None:
        if not NETNS_DIR.is_dir():
            return
        for ns in NETNS_DIR.iterdir():
            if ns.name.startswith("cni-") and ns.name not in self.netns_before:
                _run("umount", "-l", str(ns), check=False)
                with contextlib.suppress(OSError):
                    ns.unlink()

    def _remove_cni_cache(self) -> None:
        if not CNI_CACHE.is_dir():
            return
        for f in CNI_CACHE.iterdir():
            # Results of our network, and of the loopback network containerd sets up in every sandbox.
            ours = f.name.startswith((self.cni_network_name + "-", "cni-loopback-"))
            if ours and f.name not in self.cni_cache_before:
                with contextlib.suppress(OSError):
                    f.unlink()

    @staticmethod
    def _remove_if_only_empty_dirs(root: Path) -> None:
        """Remove the empty directories under ``root``, deepest first, then ``root`` if it is empty."""
        for d in sorted((p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()),
                        key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            root.rmdir()


def cleanup_stale() -> bool:
    """Undo what a crashed real node left on the host (no-op when none, or when it still runs).
    Returns True when something was cleaned."""
    with _registry_lock():
        state = _read_registry()
    if not state:
        return False
    node = RealNode.from_state(state)
    if node.alive():
        return False
    node.stop()
    return True


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat()
