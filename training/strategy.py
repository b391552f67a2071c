"""Which tf.distribute strategy a run uses: the engines TensorFlow already has."""
import json
import os

import tensorflow as tf


def choose_strategy() -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy when TF_CONFIG names a cluster, MirroredStrategy
    over several visible GPUs, otherwise the default single-device strategy."""
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    if sum(len(hosts) for hosts in cluster.values()) > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def describe(strategy: tf.distribute.Strategy) -> str:
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s) on {', '.join(d.name for d in devices)}"
