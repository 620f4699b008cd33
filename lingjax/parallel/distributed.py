"""Multi-host start-up: `initialize()` around `jax.distributed.initialize`.

    lingjax.parallel.initialize()                      # Slurm / TPU VM: detected
    lingjax.parallel.initialize("10.0.0.1:1234", 4, i) # anywhere else: explicit

Call it once per process before anything touches the devices. Every process then runs the same
program: the mesh spans all processes' devices, each process loads its share of every batch
(`ShardedTraining.data_index/data_count`), and only process 0 writes config, logs and metrics.
"""

from __future__ import annotations

import glob
import os

import jax
import numpy as np

_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")
_TPU_VARS = ("TPU_WORKER_HOSTNAMES", "TPU_WORKER_ID", "MEGASCALE_COORDINATOR_ADDRESS")


def detect_cluster(environ: dict[str, str] | None = None) -> str | None:
    """ "slurm" for a Slurm step with more than one task, "tpu" on a Cloud TPU VM, else None
    (a single process: nothing to initialise)."""
    env = os.environ if environ is None else environ
    if all(v in env for v in _SLURM_VARS):
        tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1"
        if int(tasks) > 1:
            return "slurm"
    if any(env.get(v) for v in _TPU_VARS):
        return "tpu"
    if environ is None and (glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*")):
        return "tpu"  # TPU chips: JAX asks the VM's metadata server for the workers
    return None


def slurm_local_device_ids(environ: dict[str, str] | None = None) -> list[int] | None:
    """All GPUs of the node when Slurm runs one task on it (JAX would otherwise give each
    process only GPU SLURM_LOCALID, right for one task per GPU); else None (JAX decides)."""
    env = os.environ if environ is None else environ
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or ""
    nodes = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_JOB_NUM_NODES") or "1"
    tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "0"
    # "1(x4)" (one task on each of 4 nodes), or as many tasks as nodes.
    one_per_node = per_node.split("(")[0] == "1" or (per_node == "" and tasks == nodes)
    gpus = env.get("SLURM_GPUS_ON_NODE") or ""
    if not gpus and env.get("CUDA_VISIBLE_DEVICES"):
        gpus = str(len(env["CUDA_VISIBLE_DEVICES"].split(",")))
    if one_per_node and gpus.isdigit() and int(gpus) > 1:
        return list(range(int(gpus)))
    return None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: list[int] | None = None,
) -> str | None:
    """Joins this process to the job. Explicit arguments win; without them a Slurm or TPU VM
    job is detected (JAX reads the coordinator, process count and id from the environment) and
    anything else runs as a single process. CPU processes use gloo collectives. Returns the
    cluster kind ("explicit", "slurm", "tpu") or None when nothing was initialised."""
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError(
                "explicit multi-process setup needs all of coordinator_address (host:port of "
                "process 0), num_processes and process_id; got "
                f"coordinator_address={coordinator_address!r}, num_processes={num_processes!r}, "
                f"process_id={process_id!r}"
            )
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process_id={process_id} must be in [0, {num_processes})")
        kind = "explicit"
    else:
        kind = detect_cluster()
        if kind is None:
            return None
        if kind == "slurm" and local_device_ids is None:
            local_device_ids = slurm_local_device_ids()
    if os.environ.get("JAX_PLATFORMS", "").split(",")[0] == "cpu":
        # Cross-process collectives on CPU (the tests' two local processes).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
    )
    return kind


class Board:
    """Small messages between the processes of a job, through the key-value store of JAX's
    distributed runtime (the coordination service `jax.distributed.initialize` started): no
    transport of lingjax's own. For agreeing on host-side decisions without a collective, so
    that a process that is not ready does not hold the others (A-EDiT: process 0 posts when
    the next sync is, the others read it between their own steps).

    Every key lives under `prefix`, which process 0 makes unique per job start and every
    process learns at construction (a collective: construct it on all processes together)."""

    def __init__(self, name: str) -> None:
        from jax._src import distributed as _distributed  # the runtime's client: no public API
        from jax.experimental import multihost_utils

        self._client = _distributed.global_state.client
        if self._client is None:
            raise RuntimeError(
                "Board needs a multi-process job: call lingjax.parallel.initialize() first"
            )
        mine = np.frombuffer(os.urandom(8), np.uint32) if jax.process_index() == 0 else None
        nonce = multihost_utils.broadcast_one_to_all(
            mine if mine is not None else np.zeros((2,), np.uint32)
        )
        self.prefix = f"lingjax/{name}/" + "".join(f"{int(x):08x}" for x in np.asarray(nonce))

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}"

    def post(self, key: str, value: str) -> None:
        self._client.key_value_set(self._key(key), value)

    def read(self, key: str) -> str | None:
        """The value of `key`, or None if nobody posted it yet (does not wait)."""
        try:
            return self._client.key_value_try_get(self._key(key))
        except jax.errors.JaxRuntimeError as e:
            if "NOT_FOUND" in str(e):
                return None
            raise

    def wait(self, key: str, timeout_s: float) -> str:
        """The value of `key`, waiting up to `timeout_s` for it to be posted."""
        return self._client.blocking_key_value_get(self._key(key), int(timeout_s * 1000))

    def add(self, key: str, amount: int) -> int:
        """Adds `amount` to the counter `key` (0 if never set); returns the new total."""
        return int(self._client.key_value_increment(self._key(key), amount))
