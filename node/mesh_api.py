"""Mesh endpoints: the nearest-edge list for clients, status for operators, and intake of
self-authenticating roster records (how `yanzi mesh revoke` reaches a running node)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from crdt import DecodeError, strict_loads
from federation.service import Federation
from node.errors import ClientError

MAX_RECORDS_BODY = 1 << 20


class MeshApi:
    def __init__(self, federation: Federation) -> None:
        self.federation = federation

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/edges", self.edges),
            web.get("/v1/mesh/status", self.status),
            web.post("/v1/mesh/records", self.records),
        ]

    async def edges(self, request: web.Request) -> web.Response:
        return web.json_response({"edges": self.federation.edges()})

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.federation.status())

    async def records(self, request: web.Request) -> web.Response:
        """Roster records carry their own signatures, so no token is needed to submit one."""
        if self.federation.roster is None:
            raise ClientError("unavailable", "this node is not in a mesh")
        raw = await request.content.read(MAX_RECORDS_BODY + 1)
        try:
            body: Any = strict_loads(raw, max_bytes=MAX_RECORDS_BODY)
        except DecodeError as exc:
            raise ClientError("bad_json", f"body is not valid JSON: {exc}") from None
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise ClientError("bad_request", 'the body is {"records": [roster records]}')
        added = await self.federation.add_roster_records(records)
        await self.federation.publish_roster()
        return web.json_response({"added": added})
