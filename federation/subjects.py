"""NATS subject names of a mesh. Conversation ids may hold characters NATS reserves ('.', '*',
'>'), so a conversation's subject token is a hash of its id."""

from __future__ import annotations

import hashlib

from crdt import b64encode


def conv_token(conv: str) -> str:
    """16 url-safe chars: 96 bits of SHA-256 of the conversation id."""
    return b64encode(hashlib.sha256(conv.encode()).digest()[:12])


class Subjects:
    def __init__(self, mesh_id: str) -> None:
        self.prefix = f"yanzi.{mesh_id}"

    def ops(self, conv: str) -> str:
        """Live op batches of one conversation (interest-based: only hosts subscribe)."""
        return f"{self.prefix}.ops.{conv_token(conv)}"

    def node(self, node_id: str) -> str:
        """Requests addressed to one node: anti-entropy pages, 'which conversations' lookups."""
        return f"{self.prefix}.node.{node_id}"

    @property
    def roster(self) -> str:
        return f"{self.prefix}.roster"

    @property
    def accounts(self) -> str:
        return f"{self.prefix}.accounts"

    @property
    def interest(self) -> str:
        """Membership notices: 'users U are now in conversation C' (hosts of U subscribe)."""
        return f"{self.prefix}.interest"

    @property
    def hello(self) -> str:
        """Heartbeats: region, URLs, health, per-node load; drive status and nearest-edge."""
        return f"{self.prefix}.hello"
