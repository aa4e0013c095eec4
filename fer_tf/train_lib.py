"""Compile, fit, save, resume: the one training loop (STYLE.md #8).

`train(config)` reads a converted dataset (its `dataset_info.json` counts are
trusted), builds a registered model, fits it with the chosen imbalance
methods and writes the run directory of DESIGN.md contract 3. Re-running the
same config resumes from `backup/` at the last finished epoch; a finished run
is not trained again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from fer_tf import augment, data, distill, losses, metrics, model_tools, models, report, runs, schema
from fer_tf import callbacks as cb
from fer_tf.optim import make_optimizer

BEST_CHECKPOINT = os.path.join("checkpoints", "best.keras")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every knob of one training run; `train.py` builds it from flags."""

    run_dir: str
    data_dir: str
    # model
    model: str = "fernet"
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    image_size: int = 48
    channels: int = 1
    init_weights: str = ""
    init_widen: bool = False  # embed a narrower init_weights model (model_tools.embed_narrow_weights)
    init_slim: bool = False  # keep the top expanded channels of a wider one (model_tools.slim_weights)
    crt_from: str = ""  # cRT: re-fit only the head of this finished run
    # input
    batch_size: int = 64
    epochs: int = 30
    steps_per_epoch: int = 0  # 0: train examples // batch size (one "epoch")
    sampling: str = "instance"
    progressive_epochs: int = 0  # 0: all epochs
    augmentations: tuple[str, ...] = ()
    aug_strength: float = 1.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    soft_labels: bool = False
    # distillation: a teacher run or .keras file, or several comma-separated (averaged); "" off
    teacher: str = ""
    distill_weight: float = 0.5
    distill_temperature: float = 1.0
    teacher_flip: bool = True
    teacher_zoom: float = 0.0
    teacher_tau: float = 0.0  # logit-adjust the teachers by tau * log training prior (0: off)
    # loss
    loss: str = "crossentropy"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    focal_alpha: tuple[float, ...] = ()
    cb_beta: float = 0.9999
    la_tau: float = 1.0
    class_weight: str = "none"
    # optimizer
    optimizer: str = "adamw"
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    clipnorm: float = 0.0
    # run
    monitor: str = "val_balanced_accuracy"
    early_stopping_patience: int = 0
    seed: int = 0
    deterministic: bool = False
    mixed_precision: str = "float32"
    jit_compile: bool = False
    strategy: str = "auto"
    verbose: int = 2


def train(config: TrainConfig, flags_text: str = "") -> dict[str, Any]:
    """Trains (or resumes, or skips if finished) one run.

    Args:
      config: the run's configuration.
      flags_text: every flag value, written to `flags.txt`.

    Returns:
      The final validation metrics (`metrics.json`).

    Raises:
      callbacks.NanLossError: when the loss diverges (the backup is kept).
    """
    # A finished run keeps the flags it was trained with: export.py, soup.py and fer_tf.recover
    # read them, so a later command under the same name must not rewrite them.
    finished = _finished_metrics(config.run_dir)
    if finished is not None:
        return finished
    os.makedirs(config.run_dir, exist_ok=True)
    with open(os.path.join(config.run_dir, "flags.txt"), "w") as f:
        f.write(flags_text or json.dumps(dataclasses.asdict(config), indent=2, default=list))
    strategy = _set_up_runtime(config)
    info = schema.read_dataset_info(config.data_dir)
    class_names = info["class_names"]

    # --- input
    steps = config.steps_per_epoch or data.steps_per_epoch(info, config.batch_size)
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    train_ds = _train_input(config, info, strategy, epoch_var)
    val_ds = data.make_eval_dataset(
        config.data_dir,
        info,
        "val",
        batch_size=256,
        image_size=config.image_size,
        channels=config.channels,
    )

    # --- model, loss, optimizer
    with strategy.scope():
        model = _build_model(config, len(class_names))
        model.compile(
            optimizer=make_optimizer(config, steps),
            loss=make_loss(config, info),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
            jit_compile=config.jit_compile,
        )
        if config.strategy == "multi_worker":
            _prebuild_for_multi_worker(model, train_ds)
    print(model_tools.summary_line(model), flush=True)
    _write_run_info(config, info, model)

    # --- fit
    callbacks, validation = _callbacks(config, class_names, val_ds, epoch_var, steps)
    cb.log_hparams(os.path.join(config.run_dir, "logs"), _hparams(config))
    class_weight = None
    if config.class_weight != "none":
        counts = schema.class_counts(info, "train")
        class_weight = losses.class_weights(counts, mode=config.class_weight, beta=config.cb_beta)
    model.fit(
        train_ds,
        epochs=config.epochs,
        steps_per_epoch=steps,
        callbacks=callbacks,
        class_weight=class_weight,
        verbose=config.verbose,
    )

    # --- save
    return _finish(config, model, val_ds, class_names)


def _finished_metrics(run_dir: str) -> dict[str, Any] | None:
    """The metrics of a finished run (metrics.json and model.keras both written), else None."""
    metrics_path = os.path.join(run_dir, "metrics.json")
    if not (os.path.exists(metrics_path) and os.path.exists(os.path.join(run_dir, "model.keras"))):
        return None
    print(f"{run_dir} is finished; delete metrics.json to train again.")
    with open(metrics_path) as f:
        return json.load(f)


def _set_up_runtime(config: TrainConfig) -> tf.distribute.Strategy:
    """Seeds, determinism, precision policy and GPU memory growth; returns the strategy."""
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(config.mixed_precision)
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)
    return make_strategy(config.strategy)


def make_strategy(name: str) -> tf.distribute.Strategy:
    """Returns the tf.distribute strategy for `--strategy`.

    `auto` mirrors over all GPUs when there are several and otherwise uses the
    default strategy; `multi_worker` reads the cluster from `TF_CONFIG`.
    """
    if name == "auto":
        gpus = tf.config.list_physical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}; expected auto, mirrored or multi_worker")


def _train_input(config, info, strategy, epoch_var):
    """The training dataset; under tf.distribute each worker reads its own shard files."""
    context = None
    if strategy.num_replicas_in_sync > 1:
        resolver = getattr(strategy, "cluster_resolver", None)
        workers = resolver.cluster_spec().num_tasks("worker") if resolver and resolver.cluster_spec() else 1
        task = resolver.task_id if resolver and resolver.task_id is not None else 0
        context = tf.distribute.InputContext(workers, task, strategy.num_replicas_in_sync)
    ds = data.make_train_dataset(
        config.data_dir,
        info,
        batch_size=config.batch_size,
        image_size=config.image_size,
        channels=config.channels,
        sampling=config.sampling,
        augmentations=config.augmentations or augment.DEFAULT_AUGMENTATIONS,
        aug_strength=config.aug_strength,
        mixup_alpha=config.mixup_alpha,
        cutmix_alpha=config.cutmix_alpha,
        soft_labels=config.soft_labels,
        epoch=epoch_var,
        progressive_epochs=config.progressive_epochs or config.epochs,
        seed=config.seed,
        input_context=context,
    )
    if config.teacher:
        teachers = distill.load_teachers(config.teacher)
        for teacher in teachers:
            distill.check_teacher(
                teacher, (config.image_size, config.image_size, config.channels), len(info["class_names"])
            )
        ds = distill.distill_targets(
            ds,
            teachers,
            config.distill_weight,
            config.distill_temperature,
            flip=config.teacher_flip,
            zoom=config.teacher_zoom,
            tau=config.teacher_tau,
            log_prior=runs.train_log_prior(info, info) if config.teacher_tau else None,
        )
    if context is not None:
        # Files are already split per worker; Keras splits each global batch over replicas.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        ds = ds.with_options(options)
    return ds


def _prebuild_for_multi_worker(model: keras.Model, train_ds: tf.data.Dataset) -> None:
    """Prepares a model for fit under MultiWorkerMirroredStrategy.

    Keras 3.15's fit first reduces a PerReplica batch with `strategy.reduce`,
    which fails for collective strategies (keras-team/keras#20585). Building
    everything up front from one plain batch makes that step unnecessary.
    """
    # Batch statistics are averaged over workers too, so every worker ends with identical weights.
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
    model._symbolic_build(data_batch=next(iter(train_ds)))
    model.optimizer.build(model.trainable_variables)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    # It also averages the step's logs over workers with `reduce(..., axis=0)`,
    # which rejects scalars: hand it rank-1 values instead.
    step = model.train_step
    model.train_step = lambda batch: {k: tf.reshape(v, [1]) for k, v in step(batch).items()}


def _build_model(config: TrainConfig, num_classes: int) -> keras.Model:
    input_shape = (config.image_size, config.image_size, config.channels)
    if config.crt_from:
        model = keras.models.load_model(os.path.join(config.crt_from, "model.keras"), compile=False)
        head = model.get_layer("head")
        for layer in model.layers:
            layer.trainable = layer is head
        # cRT re-learns the classifier from scratch on balanced batches.
        head.set_weights(
            [
                np.asarray(head.kernel_initializer(w.shape)) if w.ndim >= 2 else np.zeros(w.shape)
                for w in head.get_weights()
            ]
        )
        return model
    model = models.build_model(config.model, num_classes, input_shape, **dict(config.model_kwargs))
    if config.init_weights:
        loaded, skipped = model_tools.load_init_weights(
            model, config.init_weights, widen=config.init_widen, slim=config.init_slim
        )
        print(f"init_weights: loaded {len(loaded)} layers, skipped {len(skipped)}: {skipped}")
    return model


def make_loss(config: TrainConfig, info: Mapping[str, Any]) -> keras.losses.Loss:
    """Builds the configured loss from the `losses.LOSSES` registry."""
    counts = schema.class_counts(info, "train")
    kwargs: dict[str, Any] = {
        "crossentropy": {"label_smoothing": config.label_smoothing},
        "focal": {
            "gamma": config.focal_gamma,
            "alpha": list(config.focal_alpha) or None,
            "label_smoothing": config.label_smoothing,
        },
        "class_balanced": {"class_counts": counts, "beta": config.cb_beta},
        "class_balanced_focal": {"class_counts": counts, "beta": config.cb_beta, "gamma": config.focal_gamma},
        "logit_adjusted": {
            "class_counts": counts,
            "tau": config.la_tau,
            "label_smoothing": config.label_smoothing,
        },
        "balanced_softmax": {"class_counts": counts},
    }.get(config.loss)
    if kwargs is None or config.loss not in losses.LOSSES:
        raise ValueError(f"unknown loss {config.loss!r}; expected one of {sorted(losses.LOSSES)}")
    return losses.LOSSES[config.loss](**kwargs)


def _callbacks(config, class_names, val_ds, epoch_var, steps):
    run = config.run_dir
    history_csv = os.path.join(run, "history.csv")
    validation = metrics.ValidationMetrics(val_ds, class_names)
    checkpoint = keras.callbacks.ModelCheckpoint(
        os.path.join(run, BEST_CHECKPOINT), monitor=config.monitor, mode="max", save_best_only=True
    )
    tracked = [checkpoint]
    callbacks = [
        # ValidationMetrics first: it adds val_* to logs for everyone after it.
        validation,
        cb.LearningRateLogger(),
        cb.EpochVariable(epoch_var),
        cb.StopOnNaN(steps),
        cb.RunCost(os.path.join(run, "cost.json")),
        keras.callbacks.BackupAndRestore(os.path.join(run, "backup")),
        checkpoint,
    ]
    if config.early_stopping_patience > 0:
        stopper = keras.callbacks.EarlyStopping(
            monitor=config.monitor, mode="max", patience=config.early_stopping_patience
        )
        callbacks.append(stopper)
        tracked.append(stopper)
    callbacks += [
        cb.RestoreBest(history_csv, config.monitor, tracked),
        keras.callbacks.TensorBoard(os.path.join(run, "logs")),
        cb.ConfusionMatrixImage(
            os.path.join(run, "logs"),
            lambda: validation.confusion_matrix,
            class_names,
            report.confusion_matrix_image,
        ),
        keras.callbacks.CSVLogger(history_csv, append=True),
    ]
    return callbacks, validation


def _finish(config: TrainConfig, model, val_ds, class_names) -> dict[str, Any]:
    run = config.run_dir
    model.save(os.path.join(run, runs.LAST_CHECKPOINT))
    best = os.path.join(run, BEST_CHECKPOINT)
    if os.path.exists(best):
        model = keras.models.load_model(best, compile=False)
    model.save(os.path.join(run, "model.keras"))
    y_true, logits = metrics.predict_labels(model, val_ds)
    result = metrics.classification_report(y_true, logits, class_names)
    with open(os.path.join(run, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    report.plot_confusion_matrix(
        result["confusion_matrix"], class_names, os.path.join(run, "confusion_matrix.png")
    )
    report.plot_training_curves(os.path.join(run, "history.csv"), os.path.join(run, "curves.png"))
    shutil.rmtree(os.path.join(run, "backup"), ignore_errors=True)
    print(
        f"val accuracy {result['accuracy']:.4f}  balanced accuracy {result['balanced_accuracy']:.4f}  "
        f"macro-F1 {result['macro_f1']:.4f}  -> {run}",
        flush=True,
    )
    return result


def _write_run_info(config: TrainConfig, info: Mapping[str, Any], model: keras.Model) -> None:
    run_info = {
        "data_dir": os.path.abspath(config.data_dir),
        "class_names": info["class_names"],
        "image_size": config.image_size,
        "channels": config.channels,
        "model": config.model if not config.crt_from else f"crt:{config.crt_from}",
        "params": int(model.count_params()),
        "dataset_source": info.get("source", {}),
        "train_class_counts": info["splits"]["train"]["class_counts"],
        "seed": config.seed,
        "config": dataclasses.asdict(config),
    }
    with open(os.path.join(config.run_dir, "run_info.json"), "w") as f:
        json.dump(run_info, f, indent=2, default=list)


def _hparams(config: TrainConfig) -> dict[str, Any]:
    keys = (
        "model",
        "batch_size",
        "epochs",
        "sampling",
        "loss",
        "label_smoothing",
        "focal_gamma",
        "la_tau",
        "class_weight",
        "optimizer",
        "learning_rate",
        "weight_decay",
        "schedule",
        "mixup_alpha",
        "cutmix_alpha",
        "teacher",
        "distill_weight",
        "seed",
    )
    return {k: getattr(config, k) for k in keys}
