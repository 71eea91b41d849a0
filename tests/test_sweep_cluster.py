"""A sweep on a two-node Ray cluster (`ray.cluster_utils.Cluster`): trials are placed on both nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_sweep_helpers import child_runs, tiny_sweep
from tuning.sweep import run_sweep

pytestmark = pytest.mark.slow


def test_trials_run_on_both_nodes(tmp_path: Path, esc50_mini: Path, spectrogram_cache_dir: Path):
    import mlflow
    import ray
    from ray.cluster_utils import Cluster

    from tuning.tracking_server import tracking_server

    # Two nodes of one CPU each: two one-CPU trials can only run at once by using both.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address)
        cluster.wait_for_nodes()
        node_ids = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        assert len(node_ids) == 2
        with tracking_server(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "server.log") as uri:
            spec = tiny_sweep(
                tmp_path, "two-nodes", uri, esc50_mini, spectrogram_cache_dir,
                "sweep.grid.model.attention=[true]", "sweep.grid.data.normalize=[true]",
            )  # fmt: skip
            outcome = run_sweep(spec, address=cluster.address)
            assert (outcome.finished, outcome.errored) == (2, [])
            mlflow.set_tracking_uri(uri)
            placed = {run.data.tags["ray.node_id"] for run in child_runs(spec, outcome.parent_run_id)}
        assert placed == node_ids
    finally:
        ray.shutdown()
        cluster.shutdown()
