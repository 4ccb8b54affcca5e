"""Redis persistence: key names, connections, the write-ahead log, snapshots, stats."""
