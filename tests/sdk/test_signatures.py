"""Every op the SDK writes carries a device signature the node verifies."""

from __future__ import annotations

from pathlib import Path

from crdt import verify_content
from tests.helpers import NodeProcess, eventually
from tests.sdk.conftest import new_client, unique_user
from yanzi import Client


async def test_a_node_requiring_device_signatures_accepts_every_sdk_op(tmp_path: Path) -> None:
    node = NodeProcess(tmp_path / "node", env={"YANZI_REQUIRE_DEVICE_SIGNATURES": "true"})
    node.start()
    clients: list[Client] = []
    try:
        alice = await new_client(node.url, tmp_path / "a.keys", clients, user=unique_user())
        bob = await new_client(node.url, tmp_path / "b.keys", clients, user=unique_user())
        carol = await new_client(node.url, tmp_path / "c.keys", clients, user=unique_user())
        # POST /v1/direct writes an unsigned create here and is refused; the SDK falls back to
        # a signed create of the same, node-derived conversation id.
        direct = await alice.direct(bob.user)
        assert await bob.direct(alice.user) == direct
        hello = await alice.send(direct, "signed hello")
        await alice.edit(direct, hello.op_id, "signed hello, edited")
        await bob.react(direct, hello.op_id, "+1")
        await eventually(lambda: "+1" in bob.messages(direct)[0].reactions)
        await bob.unreact(direct, hello.op_id, "+1")

        group = await alice.create_group("signed", [bob.user])
        await alice.add_member(group, carol.user)
        await alice.set_role(group, bob.user, "admin")
        await alice.update_settings(group, {"title": "renamed"})
        note = await carol.send(group, "hi")
        await bob.delete(group, note.op_id)
        await eventually(lambda: carol.state(group).settings.get("title") == "renamed")

        # Every op verifies against its device's registered key (the direct create and the
        # E2EE key shares included).
        keys = {c.device: c.keystore.signing_key.verify_key for c in (alice, bob, carol)}

        def group_ops() -> list[str]:
            return [op.kind for op in carol.ops(group) if op.kind != "key_share"]

        await eventually(lambda: len(group_ops()) == 6)
        for op in [*bob.ops(direct), *carol.ops(group)]:
            verify_content(op.content, op.dsig, keys[op.content.device])
        assert set(group_ops()) == {
            "create",
            "member_add",
            "member_role",
            "settings",
            "message",
            "delete",
        }
        assert "key_share" in {op.kind for op in carol.ops(group)}
    finally:
        for client in clients:
            await client.close()
        node.stop()
