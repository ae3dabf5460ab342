#!/usr/bin/env python3
"""Interop test: a Python gRPC client generated from proto/ against the real
`switchyard-cp` server.

It checks that the public contract works for a client in another language:
the stubs are generated from proto/ at run time (nothing generated is kept),
the server is started with an SQLite store in a temporary directory, and the
test talks to it through OperatorService and the standard gRPC health service.
It also checks how refusals reach such a client: a batch with a 100 KB label
key, a 1 MB address, a bad port and a missing reference is one
INVALID_ARGUMENT whose google.rpc.BadRequest (read with grpcio-status) holds
every violation at its path, under 4 KB of metadata; a request over 4 MiB is
RESOURCE_EXHAUSTED naming the limit; page tokens are opaque and bound to
their kind and selector; a Watch from a future revision is OUT_OF_RANGE.

It runs twice:

- plaintext: the server on loopback without TLS or authentication;
- mutual TLS with tokens: certificates issued by scripts/dev-certs (openssl,
  the path the documentation gives operators), the server started with
  --tls-cert/--tls-key/--client-ca and --auth on --bootstrap-token-file; the
  client presents the operator certificate and the bootstrap admin token as
  a bearer token. The same steps run, then TokenService and the refusals:
  a reader token cannot Apply but can List, a revoked token and a call
  without a token are UNAUTHENTICATED, gRPC health answers without a token,
  and neither a plaintext client nor a TLS client without a certificate
  gets an answer from the TLS port.

Run by scripts/test. To run it alone (needs the packages in requirements.txt):

    cargo build --workspace --bin switchyard-cp
    python3 tests/interop/test_interop.py

Needs openssl (scripts/dev-certs runs it).

Environment:
    SWITCHYARD_CP_BIN   server binary (default: target/debug/switchyard-cp)
"""

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import base64

import grpc
import grpc_tools
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROTO_DIR = os.path.join(REPO_ROOT, "proto")
PROTO_FILES = [
    "switchyard/v1/resources.proto",
    "switchyard/v1/operator.proto",
    "switchyard/v1/agent.proto",
    "switchyard/v1/token.proto",
]
DEV_CERTS = os.path.join(REPO_ROOT, "scripts", "dev-certs")

# The whole test, both server runs included, must finish within this many
# seconds.
OVERALL_TIMEOUT_S = 120
SERVER_READY_TIMEOUT_S = 30
RPC_TIMEOUT_S = 10
WATCH_WAIT_S = 5
# How long a call that must fail (no TLS, no client certificate) may take.
REFUSED_TIMEOUT_S = 3
# A revoked token is refused by every replica within a second; this one
# replica refuses it at once, the margin is for a slow machine.
REVOKE_WAIT_S = 3
# What a refusal may take as metadata (message and details), whatever the
# request: well under the 8 KiB that gRPC clients accept by default.
MAX_ERROR_METADATA = 4096
# The control plane's default limit on one request message.
DEFAULT_MAX_REQUEST = 4 << 20


class CheckFailed(Exception):
    pass


class OutOfTime(BaseException):
    """The overall alarm: a BaseException, so that no step's `except
    Exception` takes it for a step failure and carries on."""


def check(cond, message):
    if not cond:
        raise CheckFailed(message)


def check_eq(actual, expected, what):
    if actual != expected:
        raise CheckFailed(f"{what}: expected {expected!r}, got {actual!r}")


def default_server_bin():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO_ROOT, "target"))
    if not os.path.isabs(target):
        target = os.path.join(REPO_ROOT, target)
    return os.path.join(target, "debug", "switchyard-cp")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generate_stubs(out_dir):
    """Generates the Python modules for proto/ into out_dir and imports them."""
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    os.makedirs(out_dir, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise CheckFailed(f"protoc failed ({proc.returncode}):\n{proc.stderr}")
    sys.path.insert(0, out_dir)
    from switchyard.v1 import operator_pb2, operator_pb2_grpc, resources_pb2, token_pb2, token_pb2_grpc

    return Protos(resources_pb2, operator_pb2, operator_pb2_grpc, token_pb2, token_pb2_grpc)


class Protos:
    """The generated modules."""

    def __init__(self, resources, operator, operator_grpc, token, token_grpc):
        self.resources = resources
        self.operator = operator
        self.operator_grpc = operator_grpc
        self.token = token
        self.token_grpc = token_grpc


class Certs:
    """A development CA and its certificates, issued by scripts/dev-certs."""

    NODE = "interop-node"

    def __init__(self, directory):
        self.dir = directory
        proc = subprocess.run(
            ["bash", DEV_CERTS, directory, "--node", self.NODE, "--server-name", "localhost"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            raise CheckFailed(f"scripts/dev-certs failed ({proc.returncode}):\n{proc.stderr}")
        for name in ("ca.pem", "server.pem", "server.key", "operator.pem", "operator.key"):
            check(os.path.isfile(self.path(name)), f"scripts/dev-certs did not write {name}")

    def path(self, name):
        return os.path.join(self.dir, name)

    def read(self, name):
        with open(self.path(name), "rb") as f:
            return f.read()

    def credentials(self, client_cert=True):
        """Channel credentials trusting the dev CA, with the operator's
        client certificate unless told otherwise."""
        if not client_cert:
            return grpc.ssl_channel_credentials(root_certificates=self.read("ca.pem"))
        return grpc.ssl_channel_credentials(
            root_certificates=self.read("ca.pem"),
            private_key=self.read("operator.key"),
            certificate_chain=self.read("operator.pem"),
        )


class Server:
    """The real switchyard-cp, on a free port, with an SQLite store."""

    def __init__(self, binary, work_dir, extra_args=()):
        self.binary = binary
        self.extra_args = list(extra_args)
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.db_url = f"sqlite://{work_dir}/switchyard.db"
        self.log_path = os.path.join(work_dir, "server.log")
        self.proc = None
        self._log = None

    def start(self):
        if not os.access(self.binary, os.X_OK):
            raise CheckFailed(
                f"server binary {self.binary} not found; run `cargo build --workspace --bin switchyard-cp`"
            )
        self._log = open(self.log_path, "wb")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        self.proc = subprocess.Popen(
            [self.binary, "--listen", self.addr, "--database-url", self.db_url,
             # Another run's metrics port must not collide with this one.
             "--metrics-listen", "off", *self.extra_args],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def wait_ready(self, channel, timeout_s):
        """Waits until the port accepts connections, then polls
        grpc.health.v1.Health/Check("") on `channel` (not used before) until
        SERVING. The port first: a gRPC channel whose first connection was
        refused retries only after its reconnect backoff (a second and
        more)."""
        deadline = time.monotonic() + timeout_s
        while True:
            code = self.proc.poll()
            if code is not None:
                raise CheckFailed(f"server exited with status {code} before it was ready")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError as e:
                if time.monotonic() >= deadline:
                    raise CheckFailed(f"server port {self.addr} not open within {timeout_s}s ({e})")
            time.sleep(0.02)
        health = health_pb2_grpc.HealthStub(channel)
        last_error = None
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise CheckFailed(f"server exited with status {code} before it was ready")
            try:
                resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last_error = f"health status {health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)}"
            except grpc.RpcError as e:
                last_error = f"{e.code().name}: {e.details()}"
            time.sleep(0.1)
        raise CheckFailed(f"server not SERVING within {timeout_s}s (last: {last_error})")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
        except OSError:
            return "(no server log)"
        text = data.decode("utf-8", "replace")
        if len(text) > 20000:
            text = "...\n" + text[-20000:]
        return text


class InteropTest:
    def __init__(self, pb, stub):
        self.r, self.op = pb.resources, pb.operator
        self.stub = stub
        self.rev1 = None
        self.rev2 = None

    # -- resources -----------------------------------------------------------

    def service_web(self):
        r = self.r
        hc = r.HealthCheck(
            healthy_threshold=2,
            unhealthy_threshold=3,
            http=r.HttpHealthCheck(path="/healthz", expected_status_min=200, expected_status_max=299),
        )
        hc.interval.FromMilliseconds(5000)
        hc.timeout.FromMilliseconds(1000)
        return r.Service(
            name="web",
            labels={"team": "edge"},
            protocol=r.PROTOCOL_HTTP,
            lb_policy=r.LB_POLICY_LEAST_REQUEST,
            health_check=hc,
        )

    def endpoint(self, name, port, version):
        return self.r.Endpoint(
            name=name,
            service="web",
            address="127.0.0.1",
            port=port,
            labels={"version": version},
        )

    def route_web(self):
        r = self.r
        return r.Route(
            name="web-route",
            rules=[
                r.RouteRule(
                    matches=[r.RouteMatch(path=r.PathMatch(prefix="/"))],
                    action=r.RouteAction(
                        destinations=[
                            r.WeightedDestination(service="web", weight=90, subset={"version": "v1"}),
                            r.WeightedDestination(service="web", weight=10, subset={"version": "v2"}),
                        ]
                    ),
                )
            ],
        )

    def apply(self, resources):
        items = [self.op.ApplyItem(resource=res) for res in resources]
        return self.stub.Apply(self.op.ApplyRequest(items=items), timeout=RPC_TIMEOUT_S)

    def list_kind(self, kind):
        return self.stub.List(self.op.ListRequest(kind=kind), timeout=RPC_TIMEOUT_S)

    # -- steps ---------------------------------------------------------------

    def test_apply_creates(self):
        r, op = self.r, self.op
        resp = self.apply(
            [
                r.Resource(service=self.service_web()),
                r.Resource(endpoint=self.endpoint("web-v1", 8081, "v1")),
                r.Resource(endpoint=self.endpoint("web-v2", 8082, "v2")),
                r.Resource(route=self.route_web()),
            ]
        )
        check(resp.revision > 0, f"Apply revision must be > 0, got {resp.revision}")
        expected = [
            (r.KIND_SERVICE, "web"),
            (r.KIND_ENDPOINT, "web-v1"),
            (r.KIND_ENDPOINT, "web-v2"),
            (r.KIND_ROUTE, "web-route"),
        ]
        check_eq(len(resp.results), len(expected), "number of Apply results")
        for res, (kind, name) in zip(resp.results, expected):
            check_eq((res.ref.kind, res.ref.name), (kind, name), "Apply result ref (request order)")
            check_eq(
                op.ApplyAction.Name(res.action),
                "APPLY_ACTION_CREATED",
                f"action for {r.Kind.Name(kind)} {name}",
            )
            check_eq(res.revision, resp.revision, f"revision of result {name}")
        self.rev1 = resp.revision

    def test_list_services(self):
        r = self.r
        resp = self.list_kind(r.KIND_SERVICE)
        check(resp.revision >= self.rev1, f"List revision {resp.revision} < Apply revision {self.rev1}")
        services = [res.service for res in resp.resources]
        check_eq([s.name for s in services], ["web"], "service names")
        for res in resp.resources:
            check_eq(res.WhichOneof("kind"), "service", "resource kind in service list")
        web = services[0]
        check_eq(r.LbPolicy.Name(web.lb_policy), "LB_POLICY_LEAST_REQUEST", "web.lb_policy")
        check_eq(dict(web.labels), {"team": "edge"}, "web.labels")
        check(web.HasField("health_check"), "web.health_check is missing")
        check_eq(web.health_check.WhichOneof("check"), "http", "web.health_check kind")
        check_eq(web.health_check.http.path, "/healthz", "web.health_check.http.path")
        check_eq(web.health_check.interval.ToMilliseconds(), 5000, "web.health_check.interval")
        check_eq(web.revision, self.rev1, "web.revision")

    def test_list_endpoints(self):
        r = self.r
        resp = self.list_kind(r.KIND_ENDPOINT)
        for res in resp.resources:
            check_eq(res.WhichOneof("kind"), "endpoint", "resource kind in endpoint list")
        eps = [res.endpoint for res in resp.resources]
        check_eq([e.name for e in eps], ["web-v1", "web-v2"], "endpoint names (name order)")
        for ep, port, version in zip(eps, [8081, 8082], ["v1", "v2"]):
            check_eq(ep.service, "web", f"{ep.name}.service")
            check_eq(ep.address, "127.0.0.1", f"{ep.name}.address")
            check_eq(ep.port, port, f"{ep.name}.port")
            check_eq(dict(ep.labels), {"version": version}, f"{ep.name}.labels")
            check_eq(ep.revision, self.rev1, f"{ep.name}.revision")

    def test_list_routes(self):
        r = self.r
        resp = self.list_kind(r.KIND_ROUTE)
        for res in resp.resources:
            check_eq(res.WhichOneof("kind"), "route", "resource kind in route list")
        routes = [res.route for res in resp.resources]
        check_eq([rt.name for rt in routes], ["web-route"], "route names")
        route = routes[0]
        check_eq(route.revision, self.rev1, "web-route.revision")
        check_eq(len(route.rules), 1, "number of rules")
        rule = route.rules[0]
        check_eq(len(rule.matches), 1, "number of matches")
        check_eq(rule.matches[0].path.WhichOneof("kind"), "prefix", "path match kind")
        check_eq(rule.matches[0].path.prefix, "/", "path prefix")
        dests = [(d.service, d.weight, dict(d.subset)) for d in rule.action.destinations]
        check_eq(
            dests,
            [("web", 90, {"version": "v1"}), ("web", 10, {"version": "v2"})],
            "destinations (service, weight, subset)",
        )

    def test_watch_delivers_change(self):
        r, op = self.r, self.op
        changes = queue.Queue()
        call = self.stub.Watch(op.WatchRequest(from_revision=self.rev1), timeout=WATCH_WAIT_S + 20)

        def consume():
            try:
                for resp in call:
                    changes.put(("response", resp))
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.CANCELLED:
                    changes.put(("error", f"{e.code().name}: {e.details()}"))
            except Exception as e:  # noqa: BLE001 - reported to the main thread
                changes.put(("error", repr(e)))

        consumer = threading.Thread(target=consume, name="watch", daemon=True)
        consumer.start()
        try:
            resp = self.apply([r.Resource(endpoint=self.endpoint("web-v1", 8083, "v1"))])
            check_eq(len(resp.results), 1, "number of Apply results")
            check_eq(
                op.ApplyAction.Name(resp.results[0].action),
                "APPLY_ACTION_CONFIGURED",
                "action for the changed endpoint",
            )
            check(resp.revision > self.rev1, f"second Apply revision {resp.revision} <= {self.rev1}")
            self.rev2 = resp.revision

            deadline = time.monotonic() + WATCH_WAIT_S
            seen = []
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CheckFailed(
                        f"no Watch change for endpoint web-v1 at revision {self.rev2} "
                        f"within {WATCH_WAIT_S}s; got {seen}"
                    )
                try:
                    what, item = changes.get(timeout=left)
                except queue.Empty:
                    continue
                if what == "error":
                    raise CheckFailed(f"Watch failed: {item}")
                check(
                    item.revision >= max((c.revision for c in item.changes), default=0),
                    f"WatchResponse.revision {item.revision} below its changes",
                )
                for ch in item.changes:
                    check(
                        ch.revision > self.rev1,
                        f"Watch from {self.rev1} sent a change at revision {ch.revision}",
                    )
                    seen.append((ch.revision, op.ChangeOp.Name(ch.op), r.Kind.Name(ch.ref.kind), ch.ref.name))
                    if ch.ref.kind == r.KIND_ENDPOINT and ch.ref.name == "web-v1":
                        check_eq(op.ChangeOp.Name(ch.op), "CHANGE_OP_UPSERT", "change op")
                        check_eq(ch.revision, self.rev2, "change revision")
                        check_eq(ch.resource.WhichOneof("kind"), "endpoint", "change resource kind")
                        check_eq(ch.resource.endpoint.port, 8083, "changed endpoint port")
                        check_eq(ch.resource.endpoint.revision, self.rev2, "changed endpoint revision")
                        return
        finally:
            call.cancel()
            consumer.join(timeout=5)

    def test_invalid_apply(self):
        r = self.r
        bad = r.Endpoint(name="bad", service="missing", address="127.0.0.1", port=0)
        try:
            resp = self.apply([r.Resource(endpoint=bad)])
        except grpc.RpcError as e:
            check_eq(e.code(), grpc.StatusCode.INVALID_ARGUMENT, "status code")
            details = e.details() or ""
            check("port" in details, f"error details should name the field `port`: {details!r}")
        else:
            raise CheckFailed(f"Apply of an invalid endpoint succeeded: {resp}")
        # A failed Apply writes nothing.
        listed = self.list_kind(r.KIND_ENDPOINT)
        names = [res.endpoint.name for res in listed.resources]
        check("bad" not in names, f"invalid endpoint was stored: {names}")
        if self.rev2 is not None:
            check_eq(listed.revision, self.rev2, "store revision after a failed Apply")

    def metadata_size(self, e):
        """Bytes the refusal `e` took as metadata on the wire: its message
        and every trailing entry (binary ones travel in base64)."""
        size = len((e.details() or "").encode())
        for key, value in e.trailing_metadata() or ():
            if key.endswith("-bin"):
                size += len(key) + len(base64.b64encode(value))
            else:
                size += len(key) + len(value)
        return size

    def bad_request(self, e):
        """The google.rpc.BadRequest of the refusal `e`, as (field, description)."""
        status = rpc_status.from_call(e)
        check(status is not None, f"no grpc-status-details-bin in the refusal: {e.details()!r}")
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                return [(v.field, v.description) for v in bad.field_violations]
        raise CheckFailed(f"no BadRequest detail in {status}")

    def test_every_violation_bounded(self):
        """A 100 KB label key, a 1 MB address, a bad port and a missing
        service in one batch: one INVALID_ARGUMENT with each problem at its
        path, values quoted short, under 4 KB of metadata."""
        r = self.r
        key = "k" * 100_000
        items = [
            r.Resource(service=r.Service(name="huge-labels", labels={key: "x"})),
            r.Resource(endpoint=r.Endpoint(name="huge-address", service="web", address="a" * (1 << 20), port=80)),
            r.Resource(endpoint=r.Endpoint(name="lost", service="missing-svc", address="127.0.0.1", port=0)),
        ]
        try:
            resp = self.apply(items)
        except grpc.RpcError as e:
            check_eq(e.code(), grpc.StatusCode.INVALID_ARGUMENT, "status code")
            size = self.metadata_size(e)
            check(size < MAX_ERROR_METADATA, f"the refusal took {size} bytes of metadata")
            got = self.bad_request(e)
            expected = [
                (
                    'items[0].resource.service.labels["' + "k" * 64 + '…"]',
                    "label key must be at most 128 characters long, not 100000",
                ),
                (
                    "items[1].resource.endpoint.address",
                    "must be an IP address or a host name of at most 253 characters, not 1048576 characters",
                ),
                ("items[2].resource.endpoint.port", "must be in 1..65535, not 0"),
                (
                    "items[2].resource.endpoint.service",
                    'service "missing-svc" does not exist (nor is it in this request)',
                ),
            ]
            check_eq(got, expected, "field violations")
            for field, description in expected:
                check(f"{field}: {description}" in e.details(), f"message lacks {field}: {e.details()!r}")
            print(f"     refusal: {len(got)} violations, {size} bytes of metadata", flush=True)
        else:
            raise CheckFailed(f"Apply of invalid resources succeeded: {resp}")

    def test_too_large_is_resource_exhausted(self):
        r = self.r
        svc = r.Service(name="too-large", labels={"note": "x" * (DEFAULT_MAX_REQUEST + 1000)})
        try:
            resp = self.apply([r.Resource(service=svc)])
        except grpc.RpcError as e:
            check_eq(e.code(), grpc.StatusCode.RESOURCE_EXHAUSTED, "status code")
            check(
                f"limit of {DEFAULT_MAX_REQUEST} bytes (4 MiB)" in (e.details() or ""),
                f"the refusal should name the limit: {e.details()!r}",
            )
        else:
            raise CheckFailed(f"an Apply over the size limit succeeded: {resp}")

    def test_paging_tokens(self):
        r, op = self.r, self.op
        first = self.stub.List(op.ListRequest(kind=r.KIND_ENDPOINT, page_size=1), timeout=RPC_TIMEOUT_S)
        check_eq([res.endpoint.name for res in first.resources], ["web-v1"], "first page")
        token = first.next_page_token
        check(token and "web" not in token, f"page tokens are opaque: {token!r}")
        last = self.stub.List(
            op.ListRequest(kind=r.KIND_ENDPOINT, page_size=1, page_token=token), timeout=RPC_TIMEOUT_S
        )
        check_eq([res.endpoint.name for res in last.resources], ["web-v2"], "second page")
        check_eq(last.next_page_token, "", "next_page_token of the last page")
        for kind, selector, bad in [
            (r.KIND_SERVICE, "", token),
            (r.KIND_ENDPOINT, "version=v1", token),
            (r.KIND_ENDPOINT, "", "web-v1"),
        ]:
            try:
                self.stub.List(
                    op.ListRequest(kind=kind, label_selector=selector, page_size=1, page_token=bad),
                    timeout=RPC_TIMEOUT_S,
                )
            except grpc.RpcError as e:
                check_eq(e.code(), grpc.StatusCode.INVALID_ARGUMENT, "status of a misused page token")
                check_eq([f for f, _ in self.bad_request(e)], ["page_token"], "field of a misused page token")
            else:
                raise CheckFailed(f"a page token was accepted with kind {kind}, selector {selector!r}")

    def test_watch_from_the_future(self):
        op = self.op
        current = self.list_kind(self.r.KIND_SERVICE).revision
        call = self.stub.Watch(op.WatchRequest(from_revision=current + 100), timeout=RPC_TIMEOUT_S)
        try:
            for resp in call:
                raise CheckFailed(f"Watch from the future sent {resp}")
        except grpc.RpcError as e:
            check_eq(e.code(), grpc.StatusCode.OUT_OF_RANGE, "status of a Watch from the future")
            check(
                f"current revision {current}" in (e.details() or ""),
                f"the refusal should give the current revision {current}: {e.details()!r}",
            )
        else:
            raise CheckFailed("Watch from the future ended without a status")

    def steps(self):
        return [
            ("Apply creates a service, endpoints and a route", self.test_apply_creates),
            ("List services", self.test_list_services),
            ("List endpoints", self.test_list_endpoints),
            ("List routes", self.test_list_routes),
            ("Watch delivers the next change", self.test_watch_delivers_change),
            ("invalid Apply is INVALID_ARGUMENT naming the field", self.test_invalid_apply),
            (
                "huge values and a missing reference: every violation, bounded",
                self.test_every_violation_bounded,
            ),
            ("a request over 4 MiB is RESOURCE_EXHAUSTED naming the limit", self.test_too_large_is_resource_exhausted),
            ("page tokens: opaque, bound, no trailing page", self.test_paging_tokens),
            ("Watch from a future revision is OUT_OF_RANGE", self.test_watch_from_the_future),
        ]


class TokenTest:
    """TokenService and the refusals of a server with mutual TLS and
    `--auth on`; runs after InteropTest, whose resources it lists."""

    def __init__(self, pb, server, certs, admin_channel, tls_channel):
        self.pb = pb
        self.server = server
        self.certs = certs
        # The operator certificate and the admin token on every call.
        self.admin_tokens = pb.token_grpc.TokenServiceStub(admin_channel)
        # The operator certificate and no token: calls choose their own.
        self.tls_channel = tls_channel
        self.operator = pb.operator_grpc.OperatorServiceStub(tls_channel)
        self.reader_secret = None

    @staticmethod
    def bearer(secret):
        return [("authorization", f"Bearer {secret}")]

    def expect_code(self, call, code, what):
        try:
            resp = call()
        except grpc.RpcError as e:
            check_eq(e.code(), code, f"status of {what}")
            return e
        raise CheckFailed(f"{what} succeeded, expected {code.name}: {resp}")

    def list_services(self, metadata=None):
        return self.operator.List(
            self.pb.operator.ListRequest(kind=self.pb.resources.KIND_SERVICE),
            metadata=metadata,
            timeout=RPC_TIMEOUT_S,
        )

    def test_create_reader(self):
        t = self.pb.token
        resp = self.admin_tokens.CreateToken(
            t.CreateTokenRequest(name="interop-reader", role=t.ROLE_READER), timeout=RPC_TIMEOUT_S
        )
        check(len(resp.secret) >= 16, f"CreateToken returned a short secret: {len(resp.secret)} characters")
        check_eq(resp.token.name, "interop-reader", "created token name")
        check_eq(t.Role.Name(resp.token.role), "ROLE_READER", "created token role")
        check(not resp.token.HasField("revoked_at"), "a new token is revoked")
        self.reader_secret = resp.secret
        listed = self.admin_tokens.ListTokens(t.ListTokensRequest(), timeout=RPC_TIMEOUT_S)
        names = [tok.name for tok in listed.tokens]
        check("interop-reader" in names, f"ListTokens lacks the new token: {names}")
        check_eq(len(names), 2, f"tokens listed (the bootstrap admin and the reader: {names})")

    def test_reader_lists_but_cannot_apply(self):
        r, op = self.pb.resources, self.pb.operator
        check(self.reader_secret is not None, "no reader token (CreateToken failed)")
        meta = self.bearer(self.reader_secret)
        svc = r.Service(name="reader-made", protocol=r.PROTOCOL_HTTP)
        e = self.expect_code(
            lambda: self.operator.Apply(
                op.ApplyRequest(items=[op.ApplyItem(resource=r.Resource(service=svc))]),
                metadata=meta,
                timeout=RPC_TIMEOUT_S,
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "Apply with a reader token",
        )
        check("reader" in (e.details() or ""), f"the refusal should name the role: {e.details()!r}")
        names = [res.service.name for res in self.list_services(meta).resources]
        check_eq(names, ["web"], "services listed with the reader token (nothing written by its Apply)")

    def test_revoked_token_is_refused(self):
        t = self.pb.token
        check(self.reader_secret is not None, "no reader token (CreateToken failed)")
        resp = self.admin_tokens.RevokeToken(t.RevokeTokenRequest(name="interop-reader"), timeout=RPC_TIMEOUT_S)
        check(resp.token.HasField("revoked_at"), "RevokeToken returned a token without revoked_at")
        deadline = time.monotonic() + REVOKE_WAIT_S
        while True:
            try:
                self.list_services(self.bearer(self.reader_secret))
            except grpc.RpcError as e:
                check_eq(e.code(), grpc.StatusCode.UNAUTHENTICATED, "status of List with a revoked token")
                return
            if time.monotonic() >= deadline:
                raise CheckFailed(f"a revoked token still lists services after {REVOKE_WAIT_S}s")
            time.sleep(0.1)

    def test_no_token_is_unauthenticated(self):
        self.expect_code(self.list_services, grpc.StatusCode.UNAUTHENTICATED, "List without a token")
        self.expect_code(
            lambda: self.list_services(self.bearer("not-a-token")),
            grpc.StatusCode.UNAUTHENTICATED,
            "List with an unknown token",
        )

    def test_health_needs_no_token(self):
        health = health_pb2_grpc.HealthStub(self.tls_channel)
        resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT_S)
        check_eq(
            health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status),
            "SERVING",
            "health status without a token",
        )

    def refused(self, channel, what):
        with channel:
            health = health_pb2_grpc.HealthStub(channel)
            try:
                resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=REFUSED_TIMEOUT_S)
            except grpc.RpcError as e:
                # UNAVAILABLE: the handshake failed; DEADLINE_EXCEEDED: the
                # server dropped it silently. Anything but an answer.
                check(
                    e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED),
                    f"{what}: unexpected status {e.code().name}: {e.details()}",
                )
            else:
                raise CheckFailed(f"{what} got an answer from the TLS port: {resp}")

    def test_plaintext_client_is_refused(self):
        self.refused(grpc.insecure_channel(self.server.addr), "a plaintext client")

    def test_client_without_certificate_is_refused(self):
        self.refused(
            grpc.secure_channel(self.server.addr, self.certs.credentials(client_cert=False)),
            "a TLS client without a client certificate",
        )

    def steps(self):
        return [
            ("CreateToken reader, listed by ListTokens", self.test_create_reader),
            ("a reader token lists, and its Apply is PERMISSION_DENIED", self.test_reader_lists_but_cannot_apply),
            ("RevokeToken: the revoked token is UNAUTHENTICATED", self.test_revoked_token_is_refused),
            ("a call without a token is UNAUTHENTICATED", self.test_no_token_is_unauthenticated),
            ("gRPC health answers without a token", self.test_health_needs_no_token),
            ("a plaintext client gets no answer from the TLS port", self.test_plaintext_client_is_refused),
            ("a TLS client without a certificate gets no answer", self.test_client_without_certificate_is_refused),
        ]


def run_steps(steps):
    """Runs the steps in order; returns (passed, failed, skipped). When the
    first step fails, the others are skipped: they read what it wrote."""
    passed, failed, skipped = 0, 0, 0
    for i, (name, step) in enumerate(steps):
        start = time.monotonic()
        try:
            step()
        except Exception as e:  # noqa: BLE001
            failed += 1
            if isinstance(e, grpc.RpcError):
                msg = f"RPC failed: {e.code().name}: {e.details()}"
            else:
                msg = str(e) if isinstance(e, CheckFailed) else repr(e)
            print(f"FAIL {name}: {msg}", flush=True)
            if not isinstance(e, (CheckFailed, grpc.RpcError)):
                traceback.print_exc()
            if i == 0:
                skipped = len(steps) - 1
                break
            continue
        passed += 1
        print(f"ok   {name} ({time.monotonic() - start:.2f}s)", flush=True)
    return passed, failed, skipped


def read_token(path):
    """The secret --bootstrap-token-file wrote (before the server answered
    health: it is written before the port serves)."""
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.read().strip()
    except OSError as e:
        raise CheckFailed(f"--bootstrap-token-file was not written: {e}")
    check(secret, "--bootstrap-token-file is empty")
    mode = os.stat(path).st_mode & 0o777
    check_eq(oct(mode), oct(0o600), "mode of the bootstrap token file")
    return secret


def run_plaintext(binary, work_dir, pb, servers):
    """The steps against a plaintext server without authentication."""
    server = Server(binary, work_dir)
    servers.append(server)
    channel = None
    try:
        server.start()
        channel = grpc.insecure_channel(server.addr)
        server.wait_ready(channel, SERVER_READY_TIMEOUT_S)
        print(f"interop: plaintext server ready at {server.addr}", flush=True)
        steps = InteropTest(pb, pb.operator_grpc.OperatorServiceStub(channel)).steps()
        result = run_steps(steps)
    except Exception as e:  # noqa: BLE001
        print(f"FAIL plaintext setup: {e}", flush=True)
        if not isinstance(e, CheckFailed):
            traceback.print_exc()
        result = (0, 1, 0)
    finally:
        if channel is not None:
            channel.close()
        server.stop()
    return result


def run_tls(binary, work_dir, pb, servers):
    """The steps, then the token steps, against a server with mutual TLS and
    authentication, as deploy/ runs it."""
    server, channels = None, []
    try:
        certs = Certs(os.path.join(work_dir, "certs"))
        token_file = os.path.join(work_dir, "admin.token")
        server = Server(
            binary,
            work_dir,
            [
                "--tls-cert", certs.path("server.pem"),
                "--tls-key", certs.path("server.key"),
                "--client-ca", certs.path("ca.pem"),
                "--auth", "on",
                "--bootstrap-token-file", token_file,
            ],
        )
        servers.append(server)
        server.start()
        # The operator certificate, no token: health needs none.
        tls_channel = grpc.secure_channel(server.addr, certs.credentials())
        channels.append(tls_channel)
        server.wait_ready(tls_channel, SERVER_READY_TIMEOUT_S)
        print(f"interop: mutual TLS server ready at {server.addr}", flush=True)
        admin = read_token(token_file)
        admin_channel = grpc.secure_channel(
            server.addr,
            grpc.composite_channel_credentials(
                certs.credentials(), grpc.access_token_call_credentials(admin)
            ),
        )
        channels.append(admin_channel)
        steps = InteropTest(pb, pb.operator_grpc.OperatorServiceStub(admin_channel)).steps()
        steps += TokenTest(pb, server, certs, admin_channel, tls_channel).steps()
        result = run_steps(steps)
    except Exception as e:  # noqa: BLE001
        print(f"FAIL mutual TLS setup: {e}", flush=True)
        if not isinstance(e, CheckFailed):
            traceback.print_exc()
        result = (0, 1, 0)
    finally:
        for channel in channels:
            channel.close()
        if server is not None:
            server.stop()
    return result


def main():
    def on_alarm(signum, frame):
        raise OutOfTime(f"interop test exceeded {OVERALL_TIMEOUT_S}s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(OVERALL_TIMEOUT_S)

    binary = os.environ.get("SWITCHYARD_CP_BIN") or default_server_bin()
    work_dir = tempfile.mkdtemp(prefix="switchyard-interop.")
    totals = [0, 0, 0]
    try:
        try:
            if not os.access(binary, os.X_OK):
                raise CheckFailed(
                    f"server binary {binary} not found; run `cargo build --workspace --bin switchyard-cp`"
                )
            pb = generate_stubs(os.path.join(work_dir, "gen"))
        except Exception as e:  # noqa: BLE001
            print(f"FAIL setup: {e}", flush=True)
            if not isinstance(e, CheckFailed):
                traceback.print_exc()
            totals[1] += 1
            runs = []
        else:
            runs = [("plaintext", run_plaintext), ("mutual TLS and tokens", run_tls)]
        for title, run in runs:
            print(f"interop: -- {title} --", flush=True)
            run_dir = os.path.join(work_dir, title.split()[0])
            os.makedirs(run_dir)
            servers = []
            out_of_time = False
            try:
                result = run(binary, run_dir, pb, servers)
            except OutOfTime as e:
                print(f"FAIL {title}: {e}", flush=True)
                result, out_of_time = (0, 1, 0), True
            for i, n in enumerate(result):
                totals[i] += n
            if result[1] or result[2]:
                for server in servers:
                    if server.proc is not None:
                        print(f"---- switchyard-cp output ({title}) ----", flush=True)
                        print(server.log_text(), flush=True)
                        print("---- end of switchyard-cp output ----", flush=True)
            if out_of_time:
                break
    except OutOfTime as e:
        print(f"FAIL setup: {e}", flush=True)
        totals[1] += 1
    finally:
        signal.alarm(0)
        shutil.rmtree(work_dir, ignore_errors=True)

    passed, failed, skipped = totals
    summary = f"interop: {passed} passed, {failed} failed"
    if skipped:
        summary += f", {skipped} skipped"
    print(summary, flush=True)
    return 0 if failed == 0 and skipped == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
