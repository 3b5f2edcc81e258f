"""Federation: edge nodes exchanging signed ops over NATS, repaired by anti-entropy."""
