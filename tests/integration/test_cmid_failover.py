"""A send retried at another node (failover) or sent at two partitioned nodes with one cmid has
exactly one effect, on every node (attrs.cmid: docs/crdt.md §6). Real processes, raw HTTP API
with the content an SDK builds (attrs.cmid = the send's cmid)."""

from __future__ import annotations

import aiohttp
import pytest

from tests.integration.conftest import eventually
from tests.integration.fed_helpers import (
    Mesh,
    full_history,
    login_when_replicated,
    wait_mesh_up,
)
from tests.integration.test_federation import _nats_down, mesh, shared_group  # noqa: F401

pytestmark = pytest.mark.integration


async def test_a_retry_at_another_node_shows_once(mesh: Mesh, http: aiohttp.ClientSession) -> None:  # noqa: F811
    server = await mesh.standalone_nats()
    a = mesh.init("a", "cn-east", server)
    b = mesh.join("b", "cn-south", server)
    await mesh.start(a, b)
    await wait_mesh_up(http, [a, b])
    conv = "g_retry"
    at_a, at_b, alice, _, bob = await shared_group(mesh, http, a, b, conv)
    # alice's device d1 fails over from A to B and retries the send with its cmid.
    alice_b = await login_when_replicated(at_b, "alice", alice.device)
    first = await at_a.message(alice, conv, "once", cmid="m-1", attrs={"cmid": "m-1"})

    async def b_has_it() -> bool:
        return any(m["op_id"] == first["op_id"] for m in await full_history(at_b, bob, conv))

    await eventually(b_has_it, timeout=20)
    again = await at_b.message(alice_b, conv, "once", cmid="m-1", attrs={"cmid": "m-1"})
    assert again["op_id"] == first["op_id"]
    for api, who in ((at_a, alice), (at_b, bob)):
        assert [m["op_id"] for m in await full_history(api, who, conv)] == [first["op_id"]]


async def test_one_cmid_sent_at_both_sides_of_a_partition_shows_once(
    mesh: Mesh,  # noqa: F811
    http: aiohttp.ClientSession,
) -> None:
    s1, s2 = await mesh.nats_cluster(2, advertise=False)
    a = mesh.init("a", "cn-east", s1)
    b = mesh.join("b", "cn-south", s2)
    await mesh.start(a, b)
    await wait_mesh_up(http, [a, b])
    conv = "g_retry_partition"
    at_a, at_b, alice, _, bob = await shared_group(mesh, http, a, b, conv)
    alice_b = await login_when_replicated(at_b, "alice", alice.device)
    await s2.kill()
    await eventually(lambda: _nats_down(http, b), timeout=20)
    sent_a = await at_a.message(alice, conv, "once", cmid="m-p", attrs={"cmid": "m-p"})
    sent_b = await at_b.message(alice_b, conv, "once", cmid="m-p", attrs={"cmid": "m-p"})
    assert sent_a["op_id"] != sent_b["op_id"]  # neither side could know of the other
    await s2.start()
    await wait_mesh_up(http, [a, b], timeout=30)

    async def one_each() -> bool:
        found = []
        for api, who in ((at_a, alice), (at_b, bob)):
            found.append([m["op_id"] for m in await full_history(api, who, conv)])
        return len(found[0]) == 1 and found[0] == found[1]

    await eventually(one_each, timeout=60)
    shown = [m["op_id"] for m in await full_history(at_a, alice, conv)]
    assert shown[0] in (sent_a["op_id"], sent_b["op_id"])
