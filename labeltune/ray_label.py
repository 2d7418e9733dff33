"""`labeltune label --ray ADDRESS`: the chunks of a label job through Ray Data, one model replica per actor.

The driver (labeltune.label) keeps every contract of `label`: it reads the input, writes the output CSV
in input order and checkpoints after each chunk. Ray Data does the labelling: a dataset with one item
per chunk (the chunk's texts, as `label` would cut them: the same chunk boundaries, so the same
batches inside the engine and the same predictions), ``map_batches`` over an actor pool of
``replicas`` ChunkLabeller actors (each loads the run once, on one GPU where the cluster has GPUs,
else on its share of the CPUs), and the results come back in chunk order (``preserve_order``) as soon
as each is ready, so the driver writes and checkpoints them as they stream in. A killed job run again
sends only the chunks after the last one written.

Each node needs labeltune (with the engine's extra) installed and the run directory at the same path.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from dataclasses import asdict


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ValueError("--ray needs Ray Data: pip install 'labeltune[ray]'") from None
    return ray


class ChunkLabeller:
    """A Ray Data actor: one engine (model replica) that labels whole chunks."""

    def __init__(
        self,
        run_dir: str,
        engine: str,
        dtype: str,
        threads: int | None,
        batch_size: int | None,
        settings: dict,
    ):
        from labeltune.engine import load_engine
        from labeltune.run import open_run

        self.engine = load_engine(open_run(run_dir), engine, dtype, threads, batch_size)
        self.settings = settings  # predict's keyword arguments: mode, temperature, ...

    def __call__(self, batch: dict) -> dict:
        out = []
        for texts in batch["texts"]:
            predictions = self.engine.predict([str(t) for t in texts], **self.settings)
            out.append(json.dumps([asdict(p) for p in predictions], ensure_ascii=False))
        return {"chunk": batch["chunk"], "predictions": out}


REACH_TIMEOUT_S = 10.0


def check_reachable(address: str, timeout: float = REACH_TIMEOUT_S) -> None:
    """Refuse a HOST:PORT (or ray://HOST:PORT) that accepts no TCP connection within `timeout` seconds:
    ray.init retries such an address for about 14 minutes (Ray 2.60) and then blames token authentication."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(
            f"--ray {address}: expected HOST:PORT (e.g. 10.0.0.5:6379), ray://HOST:PORT, auto or local"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        why = f"no answer within {timeout:g} s" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise ValueError(
            f"--ray {address}: unreachable ({why}); check the address and that the cluster's head runs "
            f"there (`ray start --head --port {port}`) and that no firewall blocks the port, "
            "or use --ray local"
        ) from None


def connect(address: str):
    """ray.init on a new local cluster (address "local") or an existing one; returns the ray module.
    An explicit address is checked first (check_reachable), so an unreachable one fails in seconds.
    Ray (>= 2.59) turns token authentication on for clusters it starts, and a driver finds the token by
    itself only with `auto`: for an explicit address it must be told (RAY_AUTH_MODE=token), which a
    refused connection says."""
    ray = _ray()
    if not ray.is_initialized():
        kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        if address == "local":
            ray.init(**kwargs)
        else:
            if address != "auto":
                check_reachable(address)
            try:
                ray.init(address=address, **kwargs)
            except ConnectionError as e:
                hint = (
                    ""
                    if os.environ.get("RAY_AUTH_MODE")
                    else "; if the cluster uses token authentication (Ray's default since 2.59), set "
                    "RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN, or the file ~/.ray/auth_token), "
                    "or use --ray auto on one of its nodes"
                )
                raise ValueError(f"--ray {address}: {e}{hint}") from None
    return ray


def replica_resources(total: dict, replicas: int) -> dict:
    """Each replica's share of a cluster with these resources (ray.cluster_resources()): one whole GPU
    where it has at least one per replica; its CPUs split evenly (at least one each, also the torch thread
    count) where it has none; refused where it has GPUs but fewer than replicas. Each replica loads the
    whole model onto its device, and Ray 2.60 does not hide the GPUs from an actor that asked for none
    (ray/_private/utils.py, set_visible_accelerator_ids: with no accelerator ids it leaves
    CUDA_VISIBLE_DEVICES as it is unless RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO is set), so replicas without a GPU
    of their own would all load onto cuda:0: two 9B copies overflow a T4, two vLLM engines each claim 92% of
    it."""
    gpus = int(total.get("GPU", 0))
    if gpus >= replicas:
        return {"num_gpus": 1, "num_cpus": 1, "threads": None}
    if gpus:
        raise ValueError(
            f"--replicas {replicas}: the Ray cluster has {gpus} GPU{'s' * (gpus > 1)}, and each replica "
            "loads the whole model onto a GPU of its own (sharing one runs out of memory); use --replicas "
            f"{gpus}"
        )
    cpus = max(1, int(total.get("CPU", 1)) // replicas)
    return {"num_gpus": 0, "num_cpus": cpus, "threads": cpus}


def predict_chunks(
    address: str,
    replicas: int,
    run_dir: str,
    engine: str,
    dtype: str,
    threads: int | None,
    batch_size: int | None,
    settings: dict,
    chunks: list[list],
) -> Iterator[list]:
    """The predictions of each chunk of texts, in chunk order, labelled by `replicas` actors on the
    cluster at `address`."""
    from labeltune.answers import Answer

    if not chunks:
        return
    ray = connect(address)
    from ray.data import DataContext

    context = DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    share = replica_resources(ray.cluster_resources(), replicas)
    if (
        engine != "hf"
    ):  # the replica's CPU share as torch threads: the hf engine's setting (vLLM sets its own)
        share["threads"] = None
    items = [
        {"chunk": i, "texts": ["" if t is None else str(t) for t in texts]} for i, texts in enumerate(chunks)
    ]
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        ChunkLabeller,
        fn_constructor_kwargs=dict(
            run_dir=os.path.abspath(run_dir),
            engine=engine,
            dtype=dtype,
            threads=threads or share["threads"],
            batch_size=batch_size,
            settings=settings,
        ),
        batch_size=1,
        concurrency=replicas,
        num_cpus=share["num_cpus"],
        num_gpus=share["num_gpus"],
        batch_format="numpy",
    )
    expected = 0
    for row in dataset.iter_rows():
        if int(row["chunk"]) != expected:
            raise RuntimeError(
                f"Ray returned chunk {row['chunk']} where chunk {expected} was due (order not preserved)"
            )
        expected += 1
        yield [Answer(**p) for p in json.loads(row["predictions"])]
