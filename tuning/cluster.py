"""Ray: join a cluster or start a local one, and check up front that a trial fits on it.

Ray does not fail a trial that asks for more than any node has: it waits forever with a warning.
The sweep checks first and stops with one line saying what is missing.
"""

from __future__ import annotations

import logging
import math
import os
import sys

from core.errors import UserError

log = logging.getLogger(__name__)
# Ray maps 127.0.0.1 to the machine's network address and its servers listen on every interface;
# with multi-node mode off (Ray's switch for single-machine platforms) a local Ray stays on loopback.
# Read once, when ray is imported. Users who want other nodes to join run `ray start --head`.
LOOPBACK_ONLY_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def connect(address: str | None, num_cpus: int | None) -> bool:
    """Connect to Ray; returns True when this call started it (and so should shut it down).

    An already initialized Ray (a test, a notebook) is used as it is. A Ray started here listens
    on 127.0.0.1 only, unless the user set LOOPBACK_ONLY_SWITCH=1.
    """
    if not address and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ONLY_SWITCH, "0")
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        return False
    if address:
        try:
            ray.init(address=address, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise UserError(
                f"cannot join the Ray cluster at --address {address}: {str(error).splitlines()[0]}"
            ) from None
        return True
    if ray_constants.ENABLE_RAY_CLUSTER and os.environ.get(LOOPBACK_ONLY_SWITCH) != "1":
        log.warning("ray was imported before the sweep started it: the local Ray listens on all interfaces")
    # "local": a Ray of its own, even where RAY_ADDRESS is set or a `ray start` cluster runs on this machine
    # (which ray.init() would join instead, refusing num_cpus); joining one is what --address is for.
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False)
    return True


def alive_node_resources() -> list[dict[str, float]]:
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def trial_slots(nodes: list[dict[str, float]], cpus: float, gpus: float) -> int:
    """How many bundles of (cpus, gpus) the nodes hold at once, each bundle on one node."""
    slots = 0
    for resources in nodes:
        fits = [math.floor(resources.get("CPU", 0.0) / cpus + 1e-9)] if cpus > 0 else []
        if gpus > 0:
            fits.append(math.floor(resources.get("GPU", 0.0) / gpus + 1e-9))
        slots += min(fits) if fits else 0
    return slots


def check_resources(cpus_per_trial: float, gpus_per_trial: float, workers: int) -> int:
    """Fail unless at least one trial fits; returns how many trials fit at once."""
    nodes = alive_node_resources()
    total_cpus = sum(n.get("CPU", 0.0) for n in nodes)
    total_gpus = sum(n.get("GPU", 0.0) for n in nodes)
    described = f"{len(nodes)} node(s), {total_cpus:g} CPUs, {total_gpus:g} GPUs"
    if gpus_per_trial > 0 and total_gpus == 0:
        raise UserError(
            f"sweep.gpus_per_trial={gpus_per_trial:g} but the Ray cluster has no GPUs ({described}); "
            "set sweep.gpus_per_trial=0 (--gpus-per-trial 0) or join a cluster with GPU nodes"
        )
    if workers > 1:  # Ray Train workers may spread over nodes: count worker bundles
        fitted = trial_slots(nodes, cpus_per_trial / workers, gpus_per_trial / workers) // workers
        unit = f"{workers} workers x ({cpus_per_trial / workers:g} CPU, {gpus_per_trial / workers:g} GPU)"
    else:
        fitted = trial_slots(nodes, cpus_per_trial, gpus_per_trial)
        unit = f"{cpus_per_trial:g} CPU and {gpus_per_trial:g} GPU on one node"
    if fitted < 1:
        raise UserError(
            f"a trial needs {unit} but no such room exists on the Ray cluster ({described}); "
            "lower sweep.cpus_per_trial / sweep.gpus_per_trial or add nodes"
        )
    return fitted
