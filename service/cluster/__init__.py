"""Replicas: membership, placement of models on replicas, ownership leases, hand-over."""
