"""Ray Train's side of a run on cnnctl's clusters: where the workers go (``place_workers``, for
`cnnctl train` and `cnnctl eval --workers`), which TorchTrainer runs them (``torch_trainer``), and its
autoscaling coordinator started early (``warm_up_train``)."""

from __future__ import annotations

from cnnctl.orchestrator.cluster import ClusterError


def _start_coordinator() -> None:
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        get_or_create_autoscaling_coordinator,
    )

    get_or_create_autoscaling_coordinator()


def warm_up_train() -> None:
    """Start Ray Train's autoscaling coordinator (a detached actor) while the driver prepares the
    run. A Train controller starts it on its first resource request and waits 5 s at most; on a
    busy machine the actor's process takes longer, and the controller logs a warning with a
    traceback ("safe to ignore") and asks again later. Not waited for."""
    import ray

    ray.remote(num_cpus=0, max_retries=0)(_start_coordinator).remote()


def state_api_served() -> bool:
    """Whether the cluster serves Ray's State API (it comes with the dashboard)."""
    from ray.util.state import list_nodes

    try:
        list_nodes(limit=1, timeout=5)
    except Exception:  # noqa: BLE001 - no dashboard: the client cannot connect
        return False
    return True


def whole_nodes_policy(workers_per_node: int, settle_s: float):
    """Ray Train's elastic scaling policy, counting whole nodes: a node offers its workers in
    multiples of ``workers_per_node``, so a resize never starts part of a node (a tower pair or an OWT
    group would straddle two) and Ray Train's node-by-node ranks put each node's group together.

    After a running group fails it waits ``settle_s`` before sizing the next: Ray marks a lost node
    dead only once its health checks fail, and a group sized while the node still counts waits for
    workers that cannot start (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s) before the next try.
    For the same reason each decision asks Ray's autoscaling coordinator to look at the cluster now:
    on its own it looks every 20 s, and until then it counts a dead node's resources as reserved."""
    import ray
    from ray.train.v2._internal.execution.scaling_policy import ElasticScalingPolicy, NoopDecision
    from ray.train.v2._internal.util import time_monotonic

    class WholeNodes(ElasticScalingPolicy):
        ran, stopped_at = False, None

        def _get_reserved_resources(self):
            if time_monotonic() - self._latest_reserved_resources_query_time < self.GET_RESERVED_RESOURCES_INTERVAL_S:
                return super()._get_reserved_resources()  # Ray's answer of the last second
            try:
                ray.get(self._autoscaling_coordinator.get_reserved_resources.remote(self._requester_id, recompute=True),
                        timeout=10)
            except Exception:  # noqa: BLE001 - Ray's own call below says what failed, and decides nothing
                pass
            return super()._get_reserved_resources()

        def _count_possible_workers(self, reserved_resources) -> int:
            count = super()._count_possible_workers
            per_node = [count({node: free}) // workers_per_node * workers_per_node
                        for node, free in reserved_resources.items()]
            return min(sum(per_node), self.scaling_config.max_workers)

        def make_decision_for_running_worker_group(self, *args, **kwargs):
            self.ran, self.stopped_at = True, None
            return super().make_decision_for_running_worker_group(*args, **kwargs)

        def make_decision_for_non_running_worker_group(self):
            if self.ran:
                self.stopped_at = self.stopped_at or time_monotonic()
                if time_monotonic() - self.stopped_at < settle_s:
                    return NoopDecision()
            return super().make_decision_for_non_running_worker_group()

    return WholeNodes


def torch_trainer(workers_per_node: int = 1, settle_s: float = 0):
    """Ray Train's TorchTrainer: an elastic run resizes by whole nodes (``whole_nodes_policy``), and
    a cluster without the State API runs it without its placement-group cleaner.

    Why: the cleaner (a detached actor per run) asks the State API every second whether the run's
    controller still lives, and the State API is served by the dashboard, which cnnctl's Rays do not
    run (a local Ray for a run, `cnnctl cluster up`, the `ray[train,tune]` install). Each ask failed
    with a warning (215 lines in a 10-epoch demo) and the cleaner could never clean anything. A run's
    placement group goes with its driver's job in any case; a Tune trial's Train run is cleaned up
    by `tune.TrialRun`. A cluster that serves the State API keeps the cleaner.
    """
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    cleaner = state_api_served()

    class Trainer(TorchTrainer):
        def _create_default_callbacks(self):
            return [c for c in super()._create_default_callbacks()
                    if cleaner or not isinstance(c, PlacementGroupCleanerCallback)]

        def _initialize_and_run_controller(self, **kwargs):
            if self.scaling_config.elasticity_enabled:
                kwargs["scaling_policy"] = whole_nodes_policy(workers_per_node, settle_s)(self.scaling_config)
            return super()._initialize_and_run_controller(**kwargs)

    return Trainer


def place_workers(nodes: int, workers_per_node: int, cpus_per_worker: float, gpus: bool) -> list[dict] | None:
    """One label selector per worker: exactly ``workers_per_node`` workers on each of ``nodes`` nodes.

    Ray Train numbers workers node by node, so with an even count per node the mp-inner tower pairs
    (ranks 2i, 2i+1) share a node. A cluster that cannot hold the request is an error now, not an
    endless wait for a placement group.
    """
    import ray
    from ray._raylet import RAY_NODE_ID_KEY

    need_cpu, need_gpu = workers_per_node * cpus_per_worker, workers_per_node if gpus else 0
    alive = [n for n in ray.nodes() if n["Alive"]]
    fit = [n for n in alive if n["Resources"].get("CPU", 0) >= need_cpu and n["Resources"].get("GPU", 0) >= need_gpu]
    if len(fit) < nodes:
        gpu = f' and {need_gpu} GPU' if need_gpu else ''
        raise ClusterError(
            f"the cluster has {len(alive)} live node(s), {len(fit)} with {need_cpu:g} CPU{gpu} "
            f"free for {workers_per_node} worker(s) each; --nodes {nodes} needs {nodes}"
        )
    if nodes == 1 and len(alive) == 1:
        return None
    chosen = sorted(fit, key=lambda n: n["NodeID"])[:nodes]
    return [{RAY_NODE_ID_KEY: n["NodeID"]} for n in chosen for _ in range(workers_per_node)]
