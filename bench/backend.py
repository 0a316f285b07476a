"""bench/run: a backend with a service time (Python asyncio, stdlib only).

    python3 bench/backend.py PORT ACCESS_LOG [SERVICE_MS]

HTTP/1.1 with keep-alive on 127.0.0.1:PORT. Every request is answered
`200 ok` SERVICE_MS (default 10) milliseconds after its head arrived, except
paths under /hold/, which are never answered (the connection stays open until
the client closes it): the memory scenario uses them to keep HAProxy's server
busy so that its queue fills. The arrival of every request outside /hold/ is
logged as `<arrival, unix time with microseconds> 200 <uri> <service ms>
<X-Sent-At>` (the NGINX backend's `$msec $status $request_uri`, the time from
arrival to the response being written, and the request's `X-Sent-At` header —
the client's send time in unix microseconds, put there by the flash-crowd
client — or `-`), one line each, flushed as written, so the report can
compare backend arrival with client send times.
"""
import asyncio, sys, time

PORT = int(sys.argv[1])
LOG = open(sys.argv[2], "a", buffering=1)
SERVICE = (float(sys.argv[3]) if len(sys.argv) > 3 else 10.0) / 1000
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


async def serve(reader, writer):
    loop = asyncio.get_running_loop()
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            arrival = time.time()
            due = loop.time() + SERVICE
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ")
            uri = parts[1] if len(parts) > 2 else "/"
            close = False
            length = 0
            sent_at = "-"
            for h in lines[1:]:
                name, _, value = h.partition(":")
                name = name.strip().lower()
                if name == "connection" and "close" in value.lower():
                    close = True
                elif name == "content-length":
                    length = int(value.strip() or 0)
                elif name == "x-sent-at" and value.strip().isdigit():
                    sent_at = value.strip()
            if length:
                await reader.readexactly(length)
            if uri.startswith("/hold/"):
                await reader.read()  # until the client goes away
                return
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(OK_CLOSE if close else OK)
            LOG.write(f"{arrival:.6f} 200 {uri} {(time.time() - arrival) * 1000:.2f} {sent_at}\n")
            await writer.drain()
            if close:
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", PORT, backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
