"""Dagster definitions: resources, partitions, assets, checks and jobs."""
