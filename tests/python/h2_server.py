"""A strict HTTP/2 server for the proxy's tests: hypercorn, whose HTTP/2 is
python-h2 with its default checks (it refuses, among other things, a request
whose Host differs from its :authority, RFC 9113 §8.3.1).

Cleartext HTTP/2 with prior knowledge (and HTTP/1.1). Every request is
answered 200 with the authority it arrived with as the body, and the HTTP
version it was spoken in as `x-http-version`. It listens on a free loopback
port, prints the port once serving, and stops when its standard input
closes.
"""

import asyncio
import socket
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config


def make_app(ready):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                    ready()
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        # hypercorn gives the request's :authority (or Host) as `host`.
        authority = dict(scope["headers"]).get(b"host", b"")
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"x-http-version", scope["http_version"].encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": authority})

    return app


async def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.accesslog = None
    config.errorlog = None

    loop = asyncio.get_running_loop()

    async def stdin_closed():
        await loop.run_in_executor(None, sys.stdin.read)

    app = make_app(lambda: print(port, flush=True))
    await serve(app, config, shutdown_trigger=stdin_closed)


if __name__ == "__main__":
    asyncio.run(main())
