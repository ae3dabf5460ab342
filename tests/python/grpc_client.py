"""A gRPC client on grpcio (the C core) for the proxy's tests.

Usage: grpc_client.py HOST:PORT CALL...

Each CALL is METHOD:SERVICE[@DEADLINE], METHOD being `check` (the unary
grpc.health.v1.Health/Check) or `watch` (the server-streaming Watch), and
DEADLINE the call's deadline in seconds (none when absent). The messages
are hand-encoded, as in grpc_server.py. For each call one JSON line is
printed: the status code's name, its details, the health statuses
received, and how long the call took in seconds.
"""

import json
import sys
import time

import grpc


def request(service: str) -> bytes:
    """A HealthCheckRequest{service}."""
    name = service.encode()
    return b"\x0a" + bytes([len(name)]) + name


def status_of(response: bytes) -> int:
    """The `status` field (1, a varint below 128) of a HealthCheckResponse."""
    if len(response) >= 2 and response[0] == 0x08:
        return response[1]
    return 0


def call(channel: grpc.Channel, spec: str) -> dict:
    method, _, rest = spec.partition(":")
    service, _, deadline = rest.partition("@")
    timeout = float(deadline) if deadline else None
    statuses = []
    started = time.monotonic()
    try:
        if method == "check":
            check = channel.unary_unary("/grpc.health.v1.Health/Check")
            statuses.append(status_of(check(request(service), timeout=timeout)))
        elif method == "watch":
            watch = channel.unary_stream("/grpc.health.v1.Health/Watch")
            for response in watch(request(service), timeout=timeout):
                statuses.append(status_of(response))
        else:
            raise SystemExit(f"unknown method {method!r}")
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        code, details = e.code(), e.details()
    return {
        "call": spec,
        "code": code.name,
        "details": details,
        "statuses": statuses,
        "seconds": round(time.monotonic() - started, 3),
    }


def main() -> None:
    target, calls = sys.argv[1], sys.argv[2:]
    with grpc.insecure_channel(target) as channel:
        for spec in calls:
            print(json.dumps(call(channel, spec)), flush=True)


if __name__ == "__main__":
    main()
