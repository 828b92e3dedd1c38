"""A real local Kubernetes control plane: etcd + kube-apiserver + kube-scheduler + kube-controller-manager.

Everything listens on 127.0.0.1 only, on free ports picked at start. The processes run in their own
sessions so they outlive the command that started them; their PIDs, logs, keys, certificates and the
admin kubeconfig live in the state dir (default ~/.cache/kubefit/sandbox/, or $KUBEFIT_SANDBOX_DIR).
There are no nodes: the simulated GPU node agent (kubefit_sandbox.nodeagent) registers them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from kubefit_sandbox.binaries import binaries_dir, ensure_binaries, kubectl_path
from kubefit_sandbox.build import Log, build_controlplane, cached_binaries, kubefit_cache_dir, print_log
from kubefit_sandbox.locks import exclusive_lock

SANDBOX_DIR_ENV = "KUBEFIT_SANDBOX_DIR"
LOOPBACK = "127.0.0.1"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "kubefit-admin"
# Components start in this order and stop in the reverse order.
COMPONENTS = ("etcd", "kube-apiserver", "kube-scheduler", "kube-controller-manager")
STOP_GRACE_S = 10.0


class SandboxError(RuntimeError):
    pass


def default_state_dir() -> Path:
    override = os.environ.get(SANDBOX_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return kubefit_cache_dir() / "sandbox"


# ---------------------------------------------------------------------------------------------
# Ports and processes
# ---------------------------------------------------------------------------------------------


def is_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def pick_free_ports(count: int, preferred: Sequence[int] = ()) -> list[int]:
    """`count` distinct free loopback ports; reuses the preferred ones (e.g. last run's) when free.

    Reusing them keeps kubeconfigs already handed out valid across a down/up.
    """
    ports: list[int] = []
    held: list[socket.socket] = []
    try:
        for port in list(preferred)[:count]:
            if port and port not in ports and is_port_free(port):
                ports.append(port)
            else:
                ports.append(0)  # placeholder, filled below
        while len(ports) < count:
            ports.append(0)
        # Hold every fresh socket open until all are picked so the kernel hands out distinct ports.
        for index, port in enumerate(ports):
            if port == 0:
                probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                probe.bind((LOOPBACK, 0))
                held.append(probe)
                candidate = probe.getsockname()[1]
                ports[index] = candidate
        if len(set(ports)) != count:
            raise SandboxError(f"could not pick {count} distinct ports: {ports}")
        return ports
    finally:
        for probe in held:
            probe.close()


def process_start_time(pid: int) -> int | None:
    """Start time of a live (non-zombie) process in clock ticks since boot, or None.

    Stored next to each PID so that a recycled PID is never mistaken for ours.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces/parentheses: fields start after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    state, start_ticks = fields[0], int(fields[19])
    if state in ("Z", "X"):
        return None
    return start_ticks


@dataclass
class ComponentProcess:
    name: str
    pid: int
    start_time: int
    command: list[str]
    log_file: str

    def is_alive(self) -> bool:
        return process_start_time(self.pid) == self.start_time


@dataclass
class SandboxState:
    """What `up` recorded in state.json: ports, token and the processes it started."""

    etcd_client_port: int = 0
    etcd_peer_port: int = 0
    apiserver_port: int = 0
    processes: dict[str, ComponentProcess] = field(default_factory=dict)
    started_at: float = 0.0

    @classmethod
    def load(cls, path: Path) -> SandboxState | None:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        processes = {name: ComponentProcess(**proc) for name, proc in raw.pop("processes", {}).items()}
        known = {key: value for key, value in raw.items() if key in cls.__dataclass_fields__}
        return cls(processes=processes, **known)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)


def _terminate(processes: Sequence[ComponentProcess], log: Log) -> None:
    """Stops the processes one after the other, in the given order.

    One at a time so that the API server can shut down cleanly while etcd still runs.
    """
    for proc in processes:
        _terminate_one(proc, log)


def _terminate_one(proc: ComponentProcess, log: Log) -> None:
    """SIGTERM, wait up to STOP_GRACE_S, then SIGKILL; only if the PID's start time still matches."""
    if not proc.is_alive():
        _reap([proc])
        return
    log(f"  stopping {proc.name} (pid {proc.pid})")
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline:
        _reap([proc])
        if not proc.is_alive():
            return
        time.sleep(0.05)
    log(f"  {proc.name} (pid {proc.pid}) ignored SIGTERM for {STOP_GRACE_S:.0f}s: killing")
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    time.sleep(0.05)
    _reap([proc])


def _reap(processes: Sequence[ComponentProcess]) -> None:
    # When this Python process started the components (tests), dead ones linger as zombies until
    # reaped. Only our own PIDs: waitpid(-1) would steal other children's exit statuses.
    for proc in processes:
        try:
            os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:
            pass  # not our child (started by an earlier `kubefit-sandbox up`)


# ---------------------------------------------------------------------------------------------
# Keys, certificates, tokens, kubeconfigs
# ---------------------------------------------------------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SandboxError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def create_pki(pki_dir: Path) -> None:
    """A CA, an API server serving certificate signed by it, and the service-account key pair.

    Kept across down/up so kubeconfigs and service-account tokens stay valid.
    """
    pki_dir.mkdir(parents=True, exist_ok=True)
    if all(
        (pki_dir / name).exists() for name in ("ca.crt", "apiserver.crt", "apiserver.key", "sa.key", "sa.pub")
    ):
        return
    os.chmod(pki_dir, 0o700)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki_dir)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki_dir)
    _openssl("genrsa", "-out", "ca.key", "2048", cwd=pki_dir)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-days", "3650", "-subj", "/CN=kubefit-sandbox-ca",
        "-out", "ca.crt", cwd=pki_dir,
    )  # fmt: skip
    _openssl("genrsa", "-out", "apiserver.key", "2048", cwd=pki_dir)
    _openssl("req", "-new", "-key", "apiserver.key", "-subj", "/CN=kube-apiserver", "-out", "apiserver.csr",
             cwd=pki_dir)  # fmt: skip
    alt_names = ",".join(
        [
            f"IP:{LOOPBACK}",
            f"IP:{KUBERNETES_SERVICE_IP}",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
    )
    (pki_dir / "apiserver.ext").write_text(
        f"subjectAltName={alt_names}\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
    )
    _openssl(
        "x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "3650", "-extfile", "apiserver.ext", "-out", "apiserver.crt", cwd=pki_dir,
    )  # fmt: skip
    for name in ("ca.key", "apiserver.key", "sa.key"):
        os.chmod(pki_dir / name, 0o600)


@dataclass(frozen=True)
class Tokens:
    admin: str
    scheduler: str
    controller_manager: str


def load_or_create_tokens(path: Path) -> Tokens:
    """Static bearer tokens (--token-auth-file CSV: token,user,uid,"groups")."""
    if path.exists():
        by_user = {}
        for line in path.read_text().splitlines():
            token, user = line.split(",")[:2]
            by_user[user] = token
        try:
            return Tokens(
                admin=by_user[ADMIN_USER],
                scheduler=by_user["system:kube-scheduler"],
                controller_manager=by_user["system:kube-controller-manager"],
            )
        except KeyError:
            pass  # written by an older layout: regenerate
    tokens = Tokens(secrets.token_hex(24), secrets.token_hex(24), secrets.token_hex(24))
    # The scheduler and controller manager get the identities Kubernetes' default RBAC bindings expect.
    lines = [
        f'{tokens.admin},{ADMIN_USER},{ADMIN_USER},"system:masters"',
        f"{tokens.scheduler},system:kube-scheduler,system:kube-scheduler",
        f"{tokens.controller_manager},system:kube-controller-manager,system:kube-controller-manager",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return tokens


def kubeconfig_document(server: str, token: str, ca_file: Path, user: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "kubefit-sandbox", "cluster": {"server": server, "certificate-authority": str(ca_file)}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "kubefit-sandbox", "context": {"cluster": "kubefit-sandbox", "user": user}}],
        "current-context": "kubefit-sandbox",
        "preferences": {},
    }


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# The sandbox
# ---------------------------------------------------------------------------------------------


@dataclass
class ComponentStatus:
    name: str
    pid: int | None
    alive: bool
    log_file: str | None


class Sandbox:
    """A local control plane whose state lives in `state_dir`.

    Sandbox().up() starts it (building the binaries on first use) and returns once the API server
    is ready and the `default` ServiceAccount exists; down() stops exactly the processes up() started.
    """

    def __init__(self, state_dir: Path | str | None = None, log: Log = print_log) -> None:
        self.state_dir = Path(state_dir).expanduser() if state_dir else default_state_dir()
        self.log = log

    # -- paths and connection details -----------------------------------------------------------

    @property
    def kubeconfig_path(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def ca_file(self) -> Path:
        return self.pki_dir / "ca.crt"

    @property
    def tokens_file(self) -> Path:
        return self.state_dir / "tokens.csv"

    def _state(self) -> SandboxState | None:
        return SandboxState.load(self.state_file)

    @property
    def api_url(self) -> str:
        state = self._state()
        if state is None or not state.apiserver_port:
            raise SandboxError(f"sandbox in {self.state_dir} has never been started")
        return f"https://{LOOPBACK}:{state.apiserver_port}"

    @property
    def token(self) -> str:
        """The admin bearer token (group system:masters)."""
        return load_or_create_tokens(self.tokens_file).admin

    def env(self) -> dict[str, str]:
        """Environment variables that point kubectl, kopf and the kubernetes client at the sandbox.

        PATH gets ~/.cache/kubefit/bin first (once), where `kubefit-sandbox tools` puts kubectl and helm: a
        fresh machine has no other kubectl, and `eval "$(kubefit-sandbox env)"; kubectl ...` must work.
        """
        path = os.environ.get("PATH", "")
        bin_dir = str(binaries_dir())
        if bin_dir not in path.split(os.pathsep):
            path = os.pathsep.join([bin_dir, path]) if path else bin_dir
        return {"KUBECONFIG": str(self.kubeconfig_path), SANDBOX_DIR_ENV: str(self.state_dir), "PATH": path}

    # -- health ---------------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def api_get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """GET on the API server as admin: (HTTP status, body); status 0 if it cannot be reached."""
        request = urllib.request.Request(
            self.api_url + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self._ssl_context()) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")
        except (urllib.error.URLError, OSError):
            return 0, ""

    def status(self) -> list[ComponentStatus]:
        state = self._state()
        statuses = []
        for name in COMPONENTS:
            proc = state.processes.get(name) if state else None
            statuses.append(
                ComponentStatus(
                    name=name,
                    pid=proc.pid if proc else None,
                    alive=bool(proc and proc.is_alive()),
                    log_file=proc.log_file if proc else None,
                )
            )
        return statuses

    def is_up(self) -> bool:
        """All four processes alive and the API server answers /readyz."""
        if not all(component.alive for component in self.status()):
            return False
        return self.api_get("/readyz")[0] == 200

    # -- up / down ------------------------------------------------------------------------------

    def up(self, timeout: float = 180.0) -> None:
        """Starts the control plane, or returns at once if it is already up and healthy."""
        started = time.monotonic()
        with exclusive_lock(self.state_dir / "lock"):  # serialises up/down across processes
            if self.is_up():
                self.log(f"sandbox already up: {self.api_url} (KUBECONFIG={self.kubeconfig_path})")
                return
            state = self._state()
            if state and any(proc.is_alive() for proc in state.processes.values()):
                self.log("sandbox is partly up or unhealthy: stopping what is left before restarting")
            if state:
                _terminate(self._in_stop_order(state), self.log)
            ensure_binaries()  # kubectl and helm, for `kubefit-sandbox kubectl` and the tests (once)
            binaries = cached_binaries()
            if binaries is None:
                self.log("control-plane binaries not cached yet: building them (one time, ~6 min)")
                build_controlplane(log=self.log)
                binaries = cached_binaries()
                if binaries is None:
                    raise SandboxError("build finished but the binaries are missing from the cache")
            self._start(binaries, previous=state, timeout=timeout)
        self.log(f"sandbox up in {time.monotonic() - started:.1f}s: {self.api_url}")
        self.log(f"  KUBECONFIG={self.kubeconfig_path}")

    def down(self) -> None:
        """Stops the processes `up` started (SIGTERM, then SIGKILL). Keeps data, keys and the build cache."""
        with exclusive_lock(self.state_dir / "lock"):  # serialises up/down across processes
            state = self._state()
            if state is None or not state.processes:
                self.log("sandbox not running")
                return
            _terminate(self._in_stop_order(state), self.log)
            state.processes = {}
            state.save(self.state_file)
        self.log("sandbox down")

    def restart_component(self, name: str, down_seconds: float = 0.0, timeout: float = 120.0) -> None:
        """Stops one running component (SIGTERM, then SIGKILL), waits `down_seconds`, starts it again with
        the same command line (same ports, same data) and waits until it serves. For fault tests: a
        kube-apiserver restart drops every watch and connection its clients hold."""
        with exclusive_lock(self.state_dir / "lock"):
            state = self._state()
            proc = state.processes.get(name) if state else None
            if state is None or proc is None or not proc.is_alive():
                raise SandboxError(f"{name} is not running in {self.state_dir}")
            _terminate_one(proc, self.log)
            time.sleep(down_seconds)
            self._launch(state, name, proc.command)
            self._wait(state, name, self._serving_check(state, name), time.monotonic() + timeout)

    @contextmanager
    def paused(self, name: str) -> Iterator[None]:
        """Stops one running component's process (SIGSTOP) for the block and resumes it (SIGCONT) after: it
        does nothing meanwhile and keeps its connections and state. For fault tests: with
        kube-controller-manager paused, a new ResourceQuota stays uncounted."""
        with exclusive_lock(self.state_dir / "lock"):
            state = self._state()
            proc = state.processes.get(name) if state else None
            if state is None or proc is None or not proc.is_alive():
                raise SandboxError(f"{name} is not running in {self.state_dir}")
        self.log(f"  pausing {proc.name} (pid {proc.pid})")
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(proc.pid, signal.SIGCONT)
            self.log(f"  resumed {proc.name} (pid {proc.pid})")

    def _serving_check(self, state: SandboxState, name: str) -> Callable[[], bool]:
        if name == "kube-apiserver":
            return lambda: self.api_get("/readyz")[0] == 200
        if name == "etcd":
            return lambda: self._etcd_healthy(state)
        return lambda: True  # the scheduler and controller manager: started is all _wait can tell

    def purge(self) -> None:
        """down() and delete the whole state dir (etcd data, keys, kubeconfig). The build cache stays."""
        self.down()
        shutil.rmtree(self.state_dir, ignore_errors=True)

    @staticmethod
    def _in_stop_order(state: SandboxState) -> list[ComponentProcess]:
        order = {name: index for index, name in enumerate(COMPONENTS)}
        return sorted(state.processes.values(), key=lambda proc: -order.get(proc.name, 0))

    # -- starting -------------------------------------------------------------------------------

    def _start(self, binaries: dict[str, Path], previous: SandboxState | None, timeout: float) -> None:
        if shutil.which("etcd") is None:
            raise SandboxError("etcd not found: run scripts/setup-system.sh (Debian package etcd-server)")
        deadline = time.monotonic() + timeout
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        create_pki(self.pki_dir)
        preferred = (
            [previous.etcd_client_port, previous.etcd_peer_port, previous.apiserver_port] if previous else []
        )
        etcd_client, etcd_peer, apiserver_port = pick_free_ports(3, preferred)
        state = SandboxState(
            etcd_client_port=etcd_client,
            etcd_peer_port=etcd_peer,
            apiserver_port=apiserver_port,
            started_at=time.time(),
        )
        state.save(self.state_file)  # ports first, so api_url works while starting
        kubeconfigs = self._write_kubeconfigs(f"https://{LOOPBACK}:{apiserver_port}")
        try:
            self._launch_components(binaries, state, kubeconfigs, deadline)
        except BaseException:
            self.log(f"sandbox failed to start; logs in {self.logs_dir}")
            _terminate(self._in_stop_order(state), self.log)
            state.processes = {}
            state.save(self.state_file)
            raise

    def _write_kubeconfigs(self, server: str) -> dict[str, Path]:
        """The admin kubeconfig, and one per component that talks to the API server (by component)."""
        tokens = load_or_create_tokens(self.tokens_file)
        _write_private(
            self.kubeconfig_path,
            yaml.safe_dump(kubeconfig_document(server, tokens.admin, self.ca_file, ADMIN_USER)),
        )
        # The scheduler and controller manager act as the users Kubernetes' default RBAC bindings expect.
        users = {
            "kube-scheduler": ("system:kube-scheduler", tokens.scheduler),
            "kube-controller-manager": ("system:kube-controller-manager", tokens.controller_manager),
        }
        paths = {}
        for component, (user, token) in users.items():
            paths[component] = self.pki_dir / f"{component}.kubeconfig"
            _write_private(
                paths[component], yaml.safe_dump(kubeconfig_document(server, token, self.ca_file, user))
            )
        return paths

    def _launch_components(
        self, binaries: dict[str, Path], state: SandboxState, kubeconfigs: dict[str, Path], deadline: float
    ) -> None:
        """etcd, then the API server once etcd is healthy, then the scheduler and controller manager."""
        self._launch(state, "etcd", self._etcd_command(state))
        self._wait(state, "etcd", lambda: self._etcd_healthy(state), deadline)
        self._launch(state, "kube-apiserver", self._apiserver_command(binaries, state))
        self._wait(state, "kube-apiserver", lambda: self.api_get("/readyz")[0] == 200, deadline)
        self._launch(
            state, "kube-scheduler", self._scheduler_command(binaries, kubeconfigs["kube-scheduler"])
        )
        self._launch(
            state,
            "kube-controller-manager",
            self._controller_manager_command(binaries, kubeconfigs["kube-controller-manager"]),
        )
        # Pods are refused until the token controller has created the default ServiceAccount.
        self._wait(
            state,
            "default ServiceAccount",
            lambda: self.api_get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
            deadline,
        )

    def _launch(self, state: SandboxState, name: str, command: list[str]) -> None:
        log_path = self.logs_dir / f"{name}.log"
        with open(log_path, "ab") as log_file:
            log_file.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
            log_file.flush()
            # Own session: the component survives `kubefit-sandbox up` exiting and its terminal's signals.
            process = subprocess.Popen(
                command,
                cwd=self.state_dir,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        start_time = None
        for _ in range(50):  # /proc entry appears immediately, but be safe
            start_time = process_start_time(process.pid)
            if start_time is not None:
                break
            time.sleep(0.01)
        if start_time is None:
            raise SandboxError(f"{name} exited at once; see {log_path}")
        state.processes[name] = ComponentProcess(name, process.pid, start_time, command, str(log_path))
        state.save(self.state_file)
        self.log(f"  started {name} (pid {process.pid})")

    def _wait(self, state: SandboxState, what: str, ready: Callable[[], bool], deadline: float) -> None:
        started = time.monotonic()
        while True:
            if ready():
                self.log(f"  {what} ready after {time.monotonic() - started:.1f}s")
                return
            for proc in state.processes.values():
                if not proc.is_alive():
                    raise SandboxError(
                        f"{proc.name} exited while waiting for {what}:\n{_tail(proc.log_file)}"
                    )
            if time.monotonic() > deadline:
                raise SandboxError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def _etcd_healthy(self, state: SandboxState) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://{LOOPBACK}:{state.etcd_client_port}/health", timeout=2
            ) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    # -- command lines --------------------------------------------------------------------------

    def _etcd_command(self, state: SandboxState) -> list[str]:
        client = f"http://{LOOPBACK}:{state.etcd_client_port}"
        peer = f"http://{LOOPBACK}:{state.etcd_peer_port}"
        return [
            "etcd",
            "--name=kubefit-sandbox",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=kubefit-sandbox={peer}",
            # A single member has nobody to wait for: elect itself quickly on restart (default 1 s).
            "--heartbeat-interval=50",
            "--election-timeout=250",
            "--logger=zap",
            "--log-level=warn",
        ]

    def _apiserver_command(self, binaries: dict[str, Path], state: SandboxState) -> list[str]:
        pki = self.pki_dir
        return [
            str(binaries["kube-apiserver"]),
            f"--etcd-servers=http://{LOOPBACK}:{state.etcd_client_port}",
            f"--bind-address={LOOPBACK}",
            f"--advertise-address={LOOPBACK}",
            f"--secure-port={state.apiserver_port}",
            "--insecure-port=0",  # 1.20 would otherwise also serve plain HTTP on :8080
            f"--cert-dir={pki / 'apiserver-generated'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={self.tokens_file}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ]

    def _scheduler_command(self, binaries: dict[str, Path], kubeconfig: Path) -> list[str]:
        return [
            str(binaries["kube-scheduler"]),
            f"--kubeconfig={kubeconfig}",
            "--leader-elect=false",
            f"--bind-address={LOOPBACK}",
            "--port=0",
            "--secure-port=0",
            "--profiling=false",
            "--v=1",
        ]

    def _controller_manager_command(self, binaries: dict[str, Path], kubeconfig: Path) -> list[str]:
        pki = self.pki_dir
        return [
            str(binaries["kube-controller-manager"]),
            f"--kubeconfig={kubeconfig}",
            "--leader-elect=false",
            f"--bind-address={LOOPBACK}",
            "--port=0",
            "--secure-port=0",
            # Each controller acts as its own ServiceAccount, as in kubeadm clusters (default RBAC).
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            # Nothing renews node leases except the simulated agent; don't let nodes be evicted.
            "--controllers=*,-nodelifecycle",
            "--profiling=false",
            "--v=1",
        ]

    # -- kubectl --------------------------------------------------------------------------------

    def kubectl_command(self, *args: str) -> list[str]:
        return [str(kubectl_path()), f"--kubeconfig={self.kubeconfig_path}", *args]

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Runs kubectl against the sandbox and captures its output (raises on failure if check)."""
        result = subprocess.run(
            self.kubectl_command(*args), input=input, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise SandboxError(f"kubectl {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result


def _tail(path: str, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
