"""Which tf.distribute strategy a run uses (the engines TensorFlow already has),
and which part of the work falls to this process in a multi-worker cluster. On
other Keras backends a run uses that backend's default device and no strategy
(``None``)."""
import contextlib
import json
import os
from dataclasses import dataclass

import keras


def choose_strategy():
    """MultiWorkerMirroredStrategy when TF_CONFIG names a cluster, MirroredStrategy
    over several visible GPUs, otherwise the default single-device strategy; None
    on a backend other than TensorFlow."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    if sum(len(hosts) for hosts in cluster.values()) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


@dataclass(frozen=True)
class ClusterRole:
    count: int  # training processes: the chief (if named) and the workers
    index: int  # this process among them: the chief is 0, then worker 0, 1, ...
    is_chief: bool  # the one that writes checkpoints, backups and logs


def strategy_scope(strategy):
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def cluster_role(strategy) -> ClusterRole:
    """This process's place in the cluster that TF_CONFIG describes (Vertex AI and
    Kubernetes name a "chief" and "worker"s; without a chief, worker 0 leads)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if not spec:
        return ClusterRole(1, 0, True)
    chiefs, workers = len(spec.get("chief", [])), len(spec.get("worker", []))
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    index = task_id if task_type == "chief" else chiefs + task_id
    return ClusterRole(chiefs + workers, index, is_chief=index == 0)


def describe(strategy) -> str:
    if strategy is None:
        if keras.backend.backend() != "jax":
            return keras.backend.backend()
        import jax

        return f"jax on {', '.join(str(device) for device in jax.devices())}"
    import tensorflow as tf

    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s) on {', '.join(d.name for d in devices)}"


def fix_keras_for_multi_worker(model, strategy) -> None:
    """Two places where Keras 3.15's TensorFlow trainer fails under
    MultiWorkerMirroredStrategy, mended for this process:
    - fit and evaluate build the model from their first batch with one
      ``strategy.reduce`` over the whole ``(inputs, targets)`` structure, which this
      strategy refuses; only the batch's shapes matter there, so this worker's first
      replica's batch is used instead;
    - each step's logs are averaged over workers with ``reduce(axis=0)``, which fails
      on scalars; a plain cross-replica mean is what is meant."""
    if strategy is None:
        return
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as keras_trainer

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return

    def symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(lambda value: strategy.experimental_local_results(value)[0],
                                                   next(batches))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = symbolic_build
    keras_reduce = keras_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy_, reduction="auto"):
        if reduction not in ("auto", "mean") or strategy_ is not strategy:
            return keras_reduce(values, strategy_, reduction)
        return tf.nest.map_structure(
            lambda value: strategy.reduce("MEAN", value, axis=None)
            if isinstance(value, tf.distribute.DistributedValues) else value, values)

    keras_trainer.reduce_per_replica = reduce_per_replica
