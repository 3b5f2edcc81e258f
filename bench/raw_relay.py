"""The ceiling for bench.node_bench: the least a Python aiohttp WebSocket relay can do.

No storage, no auth check, no signatures, no queues: the first frame names the user
(`{"type":"auth","token":NAME}` — the "token" IS the name, so the load generator is the same
one that drives Yanzi), every `send` frame is parsed with stdlib json, forwarded to every socket
of the user named in `conv`, and acked to the sender. Whatever Yanzi spends beyond this is the
price of durability, validation, ordering and signing.

    python -m bench.raw_relay --port 0      # prints "raw relay listening on http://HOST:PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from aiohttp import WSMsgType, web

_COMPACT = (",", ":")  # the same compact JSON Yanzi writes


class RawRelay:
    def __init__(self) -> None:
        self.by_user: dict[str, set[web.WebSocketResponse]] = {}

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        first = await ws.receive()
        if first.type != WSMsgType.TEXT:
            await ws.close()
            return ws
        user = json.loads(first.data)["token"]
        self.by_user.setdefault(user, set()).add(ws)
        await ws.send_str(json.dumps({"type": "ready", "user": user}, separators=_COMPACT))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                out = json.dumps(
                    {"type": "op", "op": {"from": user, "body": frame["body"]}}, separators=_COMPACT
                )
                for peer in tuple(self.by_user.get(frame["conv"], ())):
                    await peer.send_str(out)
                await ws.send_str(
                    json.dumps({"type": "ack", "id": frame["id"]}, separators=_COMPACT)
                )
        finally:
            self.by_user[user].discard(ws)
        return ws


async def serve(host: str, port: int) -> None:
    app = web.Application()
    app.router.add_get("/v1/ws", RawRelay().handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"raw relay listening on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
