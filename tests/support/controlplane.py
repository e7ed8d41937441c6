"""A real Kubernetes control plane on loopback for the integration tests.

The same idea as controller-runtime's envtest: ``etcd`` and ``kube-apiserver``
(and, on request, ``kube-controller-manager``) built from their Go modules by
``make controlplane`` (``tests/controlplane/build.sh``) into
``.controlplane/bin``, started on free loopback ports with freshly generated
PKI, RBAC authorization and service-account signing keys. CRDs, CEL rules,
status subresources, server-side apply, watches, RBAC and (with the controller
manager) garbage collection, Jobs and Deployments are then the real thing.
There is no kubelet and no scheduler: pods never run; tests drive pod status
themselves.

Typical use (the pytest fixtures in ``tests/integration/conftest.py`` do this)::

    cp = ControlPlane()
    cp.start()                      # seconds once the binaries are built
    cp.kubectl("get", "ns")
    api = kubernetes.client.CoreV1Api(cp.api_client())
    alice = cp.mint_user_kubeconfig("alice", groups=["dev"])
    cp.stop()

Deliberate deviations from a production cluster, all overridable through the
constructor: the ``ServiceAccount`` admission plugin is disabled (as in
envtest), so pods and Jobs can be created before/without the controller that
creates each namespace's ``default`` ServiceAccount; etcd runs without fsync.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tests" / "controlplane" / "build.sh"
DEFAULT_BIN_DIR = REPO_ROOT / ".controlplane" / "bin"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"


class ControlPlaneError(RuntimeError):
    """Starting or talking to the control plane failed (the message carries the log tails)."""


class BinariesMissing(ControlPlaneError):
    """The control-plane binaries are not built and cannot be built here (no Go toolchain)."""


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited non-zero; ``str()`` carries its stderr (and stdout)."""

    def __str__(self) -> str:
        args = self.cmd[3:] if isinstance(self.cmd, list) else self.cmd
        out = (self.stderr or "").strip() or (self.output or "").strip()
        return f"kubectl {' '.join(map(str, args))} exited with {self.returncode}:\n{out}"


# --------------------------------------------------------------------------- binaries


def find_go() -> str | None:
    """The Go toolchain: $GO, ``go`` on PATH, or /usr/local/go/bin/go."""
    for cand in (os.environ.get("GO"), shutil.which("go"), "/usr/local/go/bin/go"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def binaries_present(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / b, os.X_OK) for b in BINARIES)


def ensure_binaries(bin_dir: Path | None = None, *, build: bool | None = None) -> Path:
    """Return the folder holding the four binaries, building them if possible.

    With a Go toolchain, ``tests/controlplane/build.sh`` runs (a no-op in well
    under a second when the binaries are up to date; the first build is slow,
    so run ``make controlplane`` ahead of time). Without one, existing binaries
    are used as they are; with neither, :class:`BinariesMissing` is raised.
    ``build`` defaults to true unless ``CONTROLPLANE_NO_BUILD=1``.
    """
    env_bin = os.environ.get("CONTROLPLANE_BIN")
    bin_dir = Path(bin_dir or env_bin or DEFAULT_BIN_DIR)
    if build is None:
        build = os.environ.get("CONTROLPLANE_NO_BUILD", "") in ("", "0")
    go = find_go()
    if build and go and BUILD_SCRIPT.exists():
        env = dict(os.environ, GO=go, CONTROLPLANE_BIN=str(bin_dir))
        proc = subprocess.run(["bash", str(BUILD_SCRIPT)], env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ControlPlaneError(
                f"`make controlplane` ({BUILD_SCRIPT}) failed with exit code {proc.returncode}:\n"
                f"{_tail(proc.stdout + proc.stderr, 60)}"
            )
    if not binaries_present(bin_dir):
        missing = [b for b in BINARIES if not os.access(bin_dir / b, os.X_OK)]
        raise BinariesMissing(
            f"control-plane binaries missing in {bin_dir} ({', '.join(missing)}) and "
            f"{'no Go toolchain to build them' if not go else 'building is disabled'}: "
            "run `make controlplane`"
        )
    return bin_dir


# --------------------------------------------------------------------------- PKI


@dataclass
class _KeyPair:
    cert_pem: bytes
    key_pem: bytes
    cert: Any  # cryptography.x509.Certificate
    key: Any  # private key object


def _new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _name(common_name: str, orgs: Iterable[str] = ()) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


def _make_ca(common_name: str) -> _KeyPair:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), cert, key)


def _issue(
    ca: _KeyPair,
    common_name: str,
    *,
    orgs: Iterable[str] = (),
    server: bool = False,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
) -> _KeyPair:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = _new_key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, orgs))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if dns or ips:
        sans: list[Any] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return _KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key), cert, key)


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _preexec() -> None:  # pragma: no cover - runs in the child
    """Die with the test process (Linux), so a killed pytest leaks no servers."""
    os.setsid()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Proc:
    def __init__(self, name: str, args: list[str], log_path: Path) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_preexec,
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(timeout)
        self._log.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return _tail(self.log_path.read_text(errors="replace"), lines)
        except OSError:
            return ""


# --------------------------------------------------------------------------- the control plane


class ControlPlane:
    """etcd + kube-apiserver (+ optional kube-controller-manager) on loopback.

    Parameters
    ----------
    bin_dir:
        Folder with the binaries (default ``$CONTROLPLANE_BIN`` or ``.controlplane/bin``).
    workdir:
        Where PKI, kubeconfigs, etcd data and logs go (default: a fresh temp dir,
        removed by :meth:`stop` unless ``keep_workdir`` or ``$CONTROLPLANE_KEEP=1``;
        after a failure only the logs, PKI and kubeconfigs are kept).
    controller_manager:
        Also start kube-controller-manager in :meth:`start` (or call
        :meth:`start_controller_manager` later).
    disable_admission_plugins:
        Passed to ``--disable-admission-plugins`` (default ``ServiceAccount``, as envtest).
    enable_admission_plugins:
        Passed to ``--enable-admission-plugins``, on top of the defaults (default
        ``OwnerReferencesPermissionEnforcement``, as OpenShift: setting
        ``blockOwnerDeletion`` on a child needs ``update`` on the owner's ``finalizers``).
    extra_apiserver_args / extra_controller_manager_args:
        Appended to the generated command lines (later flags win).
    """

    def __init__(
        self,
        bin_dir: Path | str | None = None,
        *,
        workdir: Path | str | None = None,
        controller_manager: bool = False,
        build: bool | None = None,
        disable_admission_plugins: Sequence[str] = ("ServiceAccount",),
        enable_admission_plugins: Sequence[str] = ("OwnerReferencesPermissionEnforcement",),
        extra_apiserver_args: Sequence[str] = (),
        extra_controller_manager_args: Sequence[str] = (),
        keep_workdir: bool | None = None,
    ) -> None:
        self._bin_dir_arg = Path(bin_dir) if bin_dir else None
        self._build = build
        self.bin_dir: Path | None = None
        self._workdir_arg = Path(workdir) if workdir else None
        self.workdir: Path | None = None
        self.want_controller_manager = controller_manager
        self.disable_admission_plugins = list(disable_admission_plugins)
        self.enable_admission_plugins = list(enable_admission_plugins)
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.extra_controller_manager_args = list(extra_controller_manager_args)
        if keep_workdir is None:
            keep_workdir = os.environ.get("CONTROLPLANE_KEEP", "") not in ("", "0")
        self.keep_workdir = keep_workdir
        self._procs: dict[str, _Proc] = {}
        self._server_ca: _KeyPair | None = None
        self._client_ca: _KeyPair | None = None
        self.etcd_url = ""
        self.server = ""  # https://127.0.0.1:PORT
        self.startup_seconds: float | None = None
        self.failed = False

    # ----------------------------------------------------------------- paths

    def _wd(self) -> Path:
        if self.workdir is None:
            raise ControlPlaneError("control plane not started")
        return self.workdir

    @property
    def kubeconfig_path(self) -> Path:
        """Kubeconfig of the admin identity (user ``admin``, group ``system:masters``)."""
        return self._wd() / "admin.kubeconfig"

    @property
    def log_dir(self) -> Path:
        return self._wd() / "logs"

    @property
    def ca_cert_path(self) -> Path:
        """The CA that signed the apiserver's serving certificate."""
        return self._wd() / "pki" / "server-ca.crt"

    def bin(self, name: str) -> Path:
        if self.bin_dir is None:
            raise ControlPlaneError("control plane not started")
        return self.bin_dir / name

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.failed = True
        self.stop()

    def start(self, timeout: float = 90.0) -> ControlPlane:
        """Start etcd and kube-apiserver (and the controller manager if asked); wait for /readyz."""
        t0 = time.monotonic()
        self.bin_dir = ensure_binaries(self._bin_dir_arg, build=self._build)
        if self._workdir_arg:
            self.workdir = self._workdir_arg
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="peft-controlplane-"))
        for sub in ("pki", "logs", "etcd", "users", "kubectl-cache"):
            (self.workdir / sub).mkdir(mode=0o700, exist_ok=True)
        try:
            self._write_pki()
            self._start_etcd(deadline=t0 + timeout)
            self._start_apiserver(deadline=t0 + timeout)
            if self.want_controller_manager:
                self.start_controller_manager(timeout=max(10.0, t0 + timeout - time.monotonic()))
        except BaseException:
            self.failed = True
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Stop every process (controller manager, apiserver, etcd) and clean up the workdir."""
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            proc = self._procs.pop(name, None)
            if proc is not None:
                proc.stop()
        if self.workdir is not None and not self.keep_workdir:
            if self.failed:
                # keep the logs (and PKI, kubeconfigs) for a post-mortem, not etcd's 60 MB
                for bulky in ("etcd", "kubectl-cache"):
                    shutil.rmtree(self.workdir / bulky, ignore_errors=True)
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None

    @property
    def running(self) -> bool:
        return bool(self._procs) and all(p.alive() for p in self._procs.values())

    def logs(self, lines: int = 60) -> str:
        """The last ``lines`` of every component's log, for failure reports."""
        out = []
        for name in ("etcd", "kube-apiserver", "kube-controller-manager"):
            path = self.workdir / "logs" / f"{name}.log" if self.workdir else None
            if path and path.exists():
                out.append(f"----- {name} ({path}) -----\n{_tail(path.read_text(errors='replace'), lines)}")
        return "\n".join(out)

    # ----------------------------------------------------------------- PKI & kubeconfigs

    def _write_pki(self) -> None:
        pki = self._wd() / "pki"
        self._server_ca = _make_ca("peft-controlplane-server-ca")
        self._client_ca = _make_ca("peft-controlplane-client-ca")
        serving = _issue(
            self._server_ca,
            "kube-apiserver",
            server=True,
            dns=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ips=("127.0.0.1", KUBERNETES_SERVICE_IP),
        )
        sa_key = _new_key()
        from cryptography.hazmat.primitives import serialization

        files = {
            "server-ca.crt": self._server_ca.cert_pem,
            "server-ca.key": self._server_ca.key_pem,
            "client-ca.crt": self._client_ca.cert_pem,
            "client-ca.key": self._client_ca.key_pem,
            "apiserver.crt": serving.cert_pem,
            "apiserver.key": serving.key_pem,
            "sa.key": _key_pem(sa_key),
            "sa.pub": sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        }
        for name, data in files.items():
            (pki / name).write_bytes(data)
            (pki / name).chmod(0o600)

    def _kubeconfig(self, user: str, user_entry: dict[str, str]) -> dict[str, Any]:
        assert self._server_ca is not None
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "peft-controlplane",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": _b64(self._server_ca.cert_pem),
                    },
                }
            ],
            "users": [{"name": user, "user": user_entry}],
            "contexts": [{"name": user, "context": {"cluster": "peft-controlplane", "user": user}}],
            "current-context": user,
        }

    def _write_kubeconfig(self, path: Path, user: str, user_entry: dict[str, str]) -> Path:
        # JSON is YAML: every kubeconfig loader reads it.
        path.write_text(json.dumps(self._kubeconfig(user, user_entry), indent=2))
        path.chmod(0o600)
        return path

    def _cert_user_entry(self, user: str, groups: Iterable[str]) -> dict[str, str]:
        assert self._client_ca is not None
        pair = _issue(self._client_ca, user, orgs=groups)
        return {
            "client-certificate-data": _b64(pair.cert_pem),
            "client-key-data": _b64(pair.key_pem),
        }

    def mint_user_kubeconfig(self, user: str, groups: Iterable[str] = ()) -> Path:
        """A kubeconfig for ``user`` (client certificate CN=user, O=groups, signed by the client CA).

        The identity has exactly the RBAC that bindings grant it (plus what the
        built-in ``system:authenticated`` bindings give every user).
        """
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in user)
        return self._write_kubeconfig(
            self._wd() / "users" / f"user-{safe}.kubeconfig", user, self._cert_user_entry(user, groups)
        )

    def service_account_kubeconfig(
        self, namespace: str, name: str, *, create: bool = True, expiration_seconds: int = 3600
    ) -> Path:
        """A kubeconfig with a token for ServiceAccount ``namespace/name`` from the TokenRequest API.

        The ServiceAccount (and namespace) is created if missing and ``create``
        is true. The identity is ``system:serviceaccount:<namespace>:<name>``.
        """
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        with self.api_client() as api:
            core = client.CoreV1Api(api)
            if create:
                self.ensure_namespace(namespace, api=api)
                try:
                    core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
                except ApiException as e:
                    if e.status != 409:
                        raise
            tr = core.create_namespaced_service_account_token(
                name,
                namespace,
                {"spec": {"audiences": [], "expirationSeconds": expiration_seconds}},
            )
            token = tr.status.token
        user = f"system:serviceaccount:{namespace}:{name}"
        return self._write_kubeconfig(
            self._wd() / "users" / f"sa-{namespace}-{name}.kubeconfig", user, {"token": token}
        )

    # ----------------------------------------------------------------- clients

    def api_client(self, kubeconfig: Path | str | None = None) -> Any:
        """A ``kubernetes.client.ApiClient`` for the admin (or the given kubeconfig)."""
        from kubernetes import config

        api = config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig_path))
        # kubernetes 36.0.0's kubeconfig loader stores a token under api_key["authorization"],
        # while its generated client only sends api_key["BearerToken"] (fixed in 36.0.1):
        # without this, token (ServiceAccount) kubeconfigs get 401.
        keys = api.configuration.api_key
        if "authorization" in keys and "BearerToken" not in keys:
            keys["BearerToken"] = keys["authorization"]
        return api

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | str | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this control plane (admin unless ``kubeconfig``)."""
        cmd = [
            str(self.bin("kubectl")),
            f"--kubeconfig={kubeconfig or self.kubeconfig_path}",
            f"--cache-dir={self._wd() / 'kubectl-cache'}",
            *args,
        ]
        env = dict(os.environ, KUBECONFIG=str(kubeconfig or self.kubeconfig_path))
        env["KUBERC"] = "off"  # ignore a developer's ~/.kube/kuberc preferences
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, output=proc.stdout, stderr=proc.stderr)
        return proc

    def ensure_namespace(self, name: str, *, api: Any = None) -> None:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        own = api is None
        api = api or self.api_client()
        try:
            client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
        except ApiException as e:
            if e.status != 409:
                raise
        finally:
            if own:
                api.close()

    # ----------------------------------------------------------------- processes

    def _spawn(self, name: str, args: list[str]) -> _Proc:
        proc = _Proc(name, args, self.log_dir / f"{name}.log")
        self._procs[name] = proc
        return proc

    def _fail(self, msg: str) -> ControlPlaneError:
        self.failed = True
        return ControlPlaneError(f"{msg}\nlogs kept in {self.log_dir}\n{self.logs()}")

    def _wait(self, proc: _Proc, url: str, deadline: float, ctx: ssl.SSLContext | None = None) -> None:
        last = ""
        while time.monotonic() < deadline:
            if not proc.alive():
                raise self._fail(f"{proc.name} exited with code {proc.popen.returncode} while starting")
            try:
                with urllib.request.urlopen(url, timeout=5, context=ctx) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read()[:2000].decode(errors='replace')}"
            except (OSError, ssl.SSLError) as e:
                last = repr(e)
            time.sleep(0.1)
        raise self._fail(f"{proc.name} not ready at {url} in time (last answer: {last})")

    def _start_etcd(self, deadline: float) -> None:
        client_port, peer_port = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client_port}"
        proc = self._spawn(
            "etcd",
            [
                str(self.bin("etcd")),
                "--name=peft-controlplane",
                f"--data-dir={self._wd() / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=peft-controlplane=http://127.0.0.1:{peer_port}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        self._wait(proc, f"{self.etcd_url}/health", deadline)

    def _admin_ssl_context(self) -> ssl.SSLContext:
        wd = self._wd()
        ctx = ssl.create_default_context(cafile=str(self.ca_cert_path))
        admin = wd / "pki" / "admin-probe"
        if not (admin.with_suffix(".crt")).exists():
            assert self._client_ca is not None
            pair = _issue(self._client_ca, "admin", orgs=["system:masters"])
            admin.with_suffix(".crt").write_bytes(pair.cert_pem)
            admin.with_suffix(".key").write_bytes(pair.key_pem)
            admin.with_suffix(".key").chmod(0o600)
        ctx.load_cert_chain(str(admin.with_suffix(".crt")), str(admin.with_suffix(".key")))
        return ctx

    def _start_apiserver(self, deadline: float) -> None:
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        pki = self._wd() / "pki"
        args = [
            str(self.bin("kube-apiserver")),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            # the lease reconciler refuses a loopback advertise address; nothing
            # needs the `kubernetes` Service's Endpoints here (no pods run)
            "--endpoint-reconciler-type=none",
            f"--secure-port={port}",
            f"--cert-dir={self._wd() / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'client-ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--anonymous-auth=false",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ]
        if self.enable_admission_plugins:
            args.append(f"--enable-admission-plugins={','.join(self.enable_admission_plugins)}")
        if self.disable_admission_plugins:
            args.append(f"--disable-admission-plugins={','.join(self.disable_admission_plugins)}")
        args += self.extra_apiserver_args
        proc = self._spawn("kube-apiserver", args)
        self._write_kubeconfig(self.kubeconfig_path, "admin", self._cert_user_entry("admin", ["system:masters"]))
        self._wait(proc, f"{self.server}/readyz", deadline, self._admin_ssl_context())

    def start_controller_manager(self, timeout: float = 60.0) -> None:
        """Start kube-controller-manager (GC, Job, Deployment, ReplicaSet, namespace, ... controllers).

        Idempotent. It runs as ``system:kube-controller-manager`` in group
        ``system:masters`` with one shared identity for all controllers.
        """
        if "kube-controller-manager" in self._procs and self._procs["kube-controller-manager"].alive():
            return
        deadline = time.monotonic() + timeout
        wd = self._wd()
        pki = wd / "pki"
        kcfg = self._write_kubeconfig(
            wd / "controller-manager.kubeconfig",
            "system:kube-controller-manager",
            self._cert_user_entry("system:kube-controller-manager", ["system:masters"]),
        )
        port = free_port()
        args = [
            str(self.bin("kube-controller-manager")),
            f"--kubeconfig={kcfg}",
            f"--authentication-kubeconfig={kcfg}",
            f"--authorization-kubeconfig={kcfg}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={wd / 'controller-manager-certs'}",
            "--leader-elect=false",
            "--use-service-account-credentials=false",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'server-ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'client-ca.crt'}",
            f"--cluster-signing-key-file={pki / 'client-ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--profiling=false",
            "--v=1",
            *self.extra_controller_manager_args,
        ]
        proc = self._spawn("kube-controller-manager", args)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # self-signed serving cert from --cert-dir
        self._wait(proc, f"https://127.0.0.1:{port}/healthz", deadline, ctx)
