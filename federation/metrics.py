"""Federation metrics, registered into the node's own Prometheus registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class FederationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.envelopes_in = Counter(
            "yanzi_fed_envelopes_in_total", "Envelopes received", ["kind"], registry=r
        )
        self.envelopes_out = Counter(
            "yanzi_fed_envelopes_out_total", "Envelopes published", ["kind"], registry=r
        )
        self.dropped = Counter(
            "yanzi_fed_dropped_total",
            "Envelopes or ops dropped (forged, not_in_roster, malformed, refused: a dot replayed"
            " with other content, or clock drift)",
            ["reason"],
            registry=r,
        )
        self.ops_in = Counter("yanzi_fed_ops_in_total", "Remote ops accepted", registry=r)
        self.ops_out = Counter("yanzi_fed_ops_out_total", "Local ops published", registry=r)
        self.duplicates = Counter(
            "yanzi_fed_duplicate_ops_total", "Remote ops we already had", registry=r
        )
        self.ae_rounds = Counter("yanzi_fed_ae_rounds_total", "Anti-entropy rounds", registry=r)
        self.ae_ops = Counter(
            "yanzi_fed_ae_ops_total", "Ops repaired through anti-entropy", registry=r
        )
        self.gaps = Counter("yanzi_fed_gaps_total", "Gaps detected in live streams", registry=r)
        self.peers_up = Gauge("yanzi_fed_peers_up", "Roster peers heard from recently", registry=r)
        self.hosted = Gauge(
            "yanzi_fed_hosted_conversations", "Conversations this node subscribes to", registry=r
        )
        self.nats_connected = Gauge(
            "yanzi_fed_nats_connected", "1 while connected to NATS", registry=r
        )
        self.lag = Histogram(
            "yanzi_fed_replication_lag_seconds",
            "From an op's HLC time at its origin to its acceptance here",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5, 30, 300),
            registry=r,
        )
