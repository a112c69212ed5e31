"""A minimal LLM proxy in Python: the reference `meshbench gateway` sets the hub's gateway beside.

Usage: proxy.py PORT UPSTREAM_URL. Each request (HTTP/1.1, keep-alive) is forwarded to the same
path on UPSTREAM and its answer streamed back chunk by chunk as it arrives, through httpx (which
the official clients use). It does nothing else: no parsing, no keys, no logging, so it is the
least a Python proxy costs (LiteLLM's proxy does all of those on top).
"""

import asyncio
import sys

import httpx


async def serve(reader, writer, client, upstream):
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            method, path, _ = line.decode().split(" ", 2)
            headers = {}
            while True:
                header = await reader.readline()
                if header in (b"\r\n", b"\n", b""):
                    break
                name, value = header.decode().split(":", 1)
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            forwarded = {"content-type": headers.get("content-type", "application/json")}
            async with client.stream(method, upstream + path, content=body, headers=forwarded) as answer:
                kind = answer.headers.get("content-type", "application/json")
                writer.write(
                    f"HTTP/1.1 {answer.status_code} OK\r\ncontent-type: {kind}\r\n"
                    "transfer-encoding: chunked\r\n\r\n".encode()
                )
                async for chunk in answer.aiter_raw():
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main(port, upstream):
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        server = await asyncio.start_server(
            lambda r, w: serve(r, w, client, upstream.rstrip("/")), "127.0.0.1", port, backlog=2048
        )
        print("ready", flush=True)
        async with server:
            await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
