"""A gRPC server on grpcio (the C core) for the proxy's tests.

It serves the two methods of grpc.health.v1.Health with hand-encoded
messages (no generated code needed): Check answers SERVING, or NOT_FOUND
for the service "unknown"; Watch streams SERVING, NOT_SERVING, SERVING and
ends. It listens on a free loopback port, prints the port once serving, and
stops when its standard input closes.
"""

import sys
from concurrent import futures

import grpc

# HealthCheckResponse{status: SERVING} and {status: NOT_SERVING}.
SERVING = b"\x08\x01"
NOT_SERVING = b"\x08\x02"


def service_of(request: bytes) -> str:
    """The `service` field (1, a string) of a HealthCheckRequest."""
    if len(request) >= 2 and request[0] == 0x0A and request[1] < 0x80:
        return request[2 : 2 + request[1]].decode()
    return ""


def check(request, context):
    if service_of(request) == "unknown":
        context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
    return SERVING


def watch(request, context):
    yield from (SERVING, NOT_SERVING, SERVING)


def main() -> None:
    handler = grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {
            "Check": grpc.unary_unary_rpc_method_handler(check),
            "Watch": grpc.unary_stream_rpc_method_handler(watch),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
