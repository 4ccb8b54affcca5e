"""onlinenorm's HTTP service: FastAPI routes over one single-writer learner per model,
with every accepted sample in a Redis write-ahead log and periodic snapshots."""
