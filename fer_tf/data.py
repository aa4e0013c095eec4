"""Input pipelines: parse, cache, sample, augment, batch (STYLE.md #4).

The record schema lives in `fer_tf/schema.py`, shared with the writers in
`data_tools/`. `preprocess_for_eval` is the one preprocessing used by the eval
pipeline, the exported SavedModel and webcam.py (train/serve parity); the
train pipeline applies the same function and augments on top of it, in float.

Train (`make_train_dataset`):

    sorted shard list -> shard by file (tf.distribute) -> seeded shuffle of the files
    -> interleave(TFRecordDataset)
    -> per class k: keep label == k -> map(parse) -> cache() -> shuffle -> repeat
    -> class draws with the sampler's weights                  [fer_tf/sampling.py]
    -> batch(drop_remainder=True)
    -> map(preprocess_for_eval + augment, AUTOTUNE)            [fer_tf/augment.py]
    -> map(mixup / cutmix, AUTOTUNE) -> prefetch(AUTOTUNE)

With `sampling="instance"` there is one stream instead of K:
parse -> cache() -> full shuffle -> repeat, which has the instance class
frequencies by construction.

Deliberate deviations from STYLE.md #4, each measured with
benchmarks/pipeline_throughput.py and in the docstrings named below:

- One `cache()` per class, after the class filter, instead of one shared
  cache filtered K times: together the caches hold one decoded copy of the
  split (66 MB of pixels for FER2013) and each later pass reads only its
  own class. A shared cache, filtered, costs N reads per class pass (balanced
  sampling replays FER2013's 436 disgust images ~9 times per epoch: ~430 k
  reads per 28.7 k images delivered), and the K streams start concurrently,
  so it is filled K times on the first pass anyway (measured: 7 N parses).
  Here the class filter reads only the labels, 1,024 records per call, and
  each record gets one full parse (`_records`).
- The class draws are `sample_from_datasets` with a vectorised selector
  (`fer_tf.sampling.sample_classes`): the stock op's per-element selector
  was the bottleneck of the whole pipeline.
- Augmentation runs after `batch()`: every op in `fer_tf/augment.py` takes a
  batch and draws its parameters per image (e.g. the affine is one
  `ImageProjectiveTransformV3` call with one transform per image), so the
  randomness is still per image, for ~4x less CPU per image than a
  per-image `map` before `batch()` (measured: ~100 vs ~420 us).
- Files are listed sorted and shuffled with a NumPy permutation rather than
  `list_files(shuffle=True)`, so every worker shards the same order; as the
  data is cached, the file order only matters on the first pass anyway.

Randomness is stateless: batch i of a run with seed s is augmented with the
seed (s', i), where s' is s combined with the input-pipeline id under
tf.distribute, so a run repeats exactly with the same `--seed`.

One "epoch" is `steps_per_epoch(info, batch_size)` = floor(N_train / batch)
steps, whatever the sampler: balanced sampling shows minority images more
often within the same number of steps, it does not lengthen the epoch. The
train dataset is infinite; Keras `fit(steps_per_epoch=...)` cuts it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from fer_tf import augment, schema
from fer_tf.augment import DEFAULT_AUGMENTATIONS
from fer_tf.sampling import SAMPLERS, sample_classes

AUTOTUNE = tf.data.AUTOTUNE
# Bigger than FER2013's 28,709 training images: a full shuffle by default.
DEFAULT_SHUFFLE_BUFFER = 32_768
DEFAULT_PROGRESSIVE_EPOCHS = 30


def preprocess_for_eval(images: tf.Tensor, image_size: int = 48, channels: int = 1) -> tf.Tensor:
    """Turns uint8 images of any size and 1, 3 or 4 channels into model input.

    Args:
      images: uint8 `[H, W, C]` or `[N, H, W, C]`, C in {1, 3, 4} (RGB order).
      image_size: side S of the square model input.
      channels: 1 (grayscale) or 3.

    Returns:
      float32 `[..., S, S, channels]` in [0, 1].
    """
    images = tf.convert_to_tensor(images)
    batched = images.shape.rank == 4
    if not batched:
        images = images[tf.newaxis]
    images = tf.image.convert_image_dtype(images, tf.float32)
    in_channels = images.shape[-1]
    if in_channels == 4:
        images = images[..., :3]
        in_channels = 3
    if in_channels is None:
        raise ValueError("the channel dimension of images must be static")
    if channels == 1 and in_channels == 3:
        images = tf.image.rgb_to_grayscale(images)
    elif channels == 3 and in_channels == 1:
        images = tf.image.grayscale_to_rgb(images)
    # A same-size bilinear resize is an exact identity; skipping it saves the
    # train pipeline a kernel call per batch on the common 48x48 data.
    if images.shape[1] != image_size or images.shape[2] != image_size:
        images = tf.image.resize(images, [image_size, image_size], method="bilinear", antialias=True)
        images = tf.clip_by_value(images, 0.0, 1.0)
    return images if batched else images[0]


# The zoom of export.py --tta_zoom and evaluate.py --tta=zoom: the central 44 of 48 pixels.
TTA_ZOOM = 1.09


def center_zoom(images: tf.Tensor, zoom: float) -> tf.Tensor:
    """Zooms batched float images `[N, H, W, C]` in on their centre: crop, then resize back.

    The crop keeps the central `S - 2m` pixels of each side S, with
    `m = round(S * (1 - 1/zoom) / 2)`, so the zoom actually applied is
    `S / (S - 2m)` (`effective_zoom`); a plain bilinear upscale, which converts
    to every TFLite format.
    """
    height, width = images.shape[1], images.shape[2]
    top, left = zoom_margin(height, zoom), zoom_margin(width, zoom)
    crop = images[:, top : height - top, left : width - left, :]
    return tf.image.resize(crop, [height, width], method="bilinear")


def tta_views(x: tf.Tensor, flip: bool = False, zoom: float = 0.0) -> list[tf.Tensor]:
    """Views of a float batch `[N, S, S, C]` to average over: itself, its mirror, its centre zoom."""
    views = [x]
    if flip:
        views.append(tf.reverse(x, axis=[2]))
    if zoom:
        views.append(center_zoom(x, zoom))
    return views


def zoom_margin(size: int, zoom: float) -> int:
    """Pixels `center_zoom` crops from each side of an S x S image (at least 1 for zoom > 1)."""
    if zoom <= 1.0:
        raise ValueError(f"zoom must be > 1, got {zoom}")
    margin = max(1, round(size * (1.0 - 1.0 / zoom) / 2.0))
    if size - 2 * margin < 2:
        raise ValueError(f"zoom {zoom} leaves no centre of a {size} px image")
    return margin


def effective_zoom(size: int, zoom: float) -> float:
    """The zoom `center_zoom` applies to S x S images after rounding its crop to whole pixels."""
    return size / (size - 2 * zoom_margin(size, zoom))


def steps_per_epoch(info: Mapping[str, Any], batch_size: int) -> int:
    """Steps of one epoch: floor(train examples / batch_size), at least 1, for every sampler.

    Args:
      info: `dataset_info.json` as a dict.
      batch_size: the global batch size.
    """
    return max(1, int(info["splits"]["train"]["num_examples"]) // int(batch_size))


def _files(data_dir: str, split: str) -> list[str]:
    files = sorted(tf.io.gfile.glob(schema.shard_pattern(data_dir, split)))
    if not files:
        raise FileNotFoundError(f"no {split} shards in {data_dir} ({schema.shard_pattern(data_dir, split)})")
    return files


def _parser(info: Mapping[str, Any], soft_labels: bool):
    """Returns serialized -> (image uint8 [H,W,C], label int64, target float32 [K])."""
    if soft_labels and not info.get("has_soft_labels", False):
        raise ValueError("soft_labels=True but dataset_info.json says the records carry no soft labels")

    def parse(serialized):
        record = schema.parse_example(serialized, info)
        target = tf.one_hot(record["label"], len(info["class_names"]), dtype=tf.float32)
        if soft_labels:
            votes = record["soft_label"]
            total = tf.reduce_sum(votes)
            # Votes may be counts (FER+: 10 annotators) or fractions: normalise;
            # a record without votes keeps its one-hot label.
            target = tf.where(total > 0, votes / tf.maximum(total, 1e-12), target)
        return record["image"], record["label"], target

    return parse


def _records(
    files: Sequence[str], info, soft_labels: bool, label: int | None = None, ordered: bool = False
) -> tf.data.Dataset:
    """Files -> parsed (image, label, target); deterministic.

    `ordered` reads the files one after the other (eval: records in file
    order); otherwise up to 4 files are read in parallel, interleaved.
    With `label`, only the records of that class: every per-class stream scans
    all records on its first pass, so the scan reads just the labels, 1,024
    records per call, and only the class's own records get the full parse.
    """
    if ordered:
        ds = tf.data.TFRecordDataset(list(files))
    else:
        ds = tf.data.Dataset.from_tensor_slices(list(files)).interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(len(files), 4),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
    if label is not None:
        label_spec = {schema.KEY_LABEL: tf.io.FixedLenFeature([], tf.int64)}

        def keep_class(serialized):
            labels = tf.io.parse_example(serialized, label_spec)[schema.KEY_LABEL]
            return tf.boolean_mask(serialized, tf.equal(labels, label))

        ds = ds.batch(1024).map(keep_class, num_parallel_calls=AUTOTUNE, deterministic=True).unbatch()
    return ds.map(_parser(info, soft_labels), num_parallel_calls=AUTOTUNE, deterministic=True)


def _train_files(data_dir: str, seed: int, input_context) -> list[str]:
    files = _files(data_dir, "train")
    if input_context is not None and input_context.num_input_pipelines > 1:
        n = input_context.num_input_pipelines
        if len(files) < n:
            raise ValueError(f"{len(files)} train shards cannot be split over {n} input pipelines")
        # Shard the sorted list (every worker sees the same order), then shuffle.
        files = files[input_context.input_pipeline_id :: n]
    rng = np.random.default_rng(seed)
    return [files[i] for i in rng.permutation(len(files))]


def _pipeline_seed(seed: int, input_context) -> int:
    pipeline = input_context.input_pipeline_id if input_context is not None else 0
    return int(np.random.SeedSequence([seed, pipeline]).generate_state(1)[0] >> 1)


def _check_options(sampling: str, augmentations: Sequence[str], mixup_alpha, cutmix_alpha, epoch) -> None:
    if sampling not in SAMPLERS:
        raise ValueError(f"unknown sampling {sampling!r}; expected one of {sorted(SAMPLERS)}")
    if sampling == "progressive" and epoch is None:
        raise ValueError("sampling='progressive' needs the epoch tf.Variable")
    augment.check_names(augmentations)
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError("mixup_alpha and cutmix_alpha must be >= 0")


def _sampled(files, info, sampling, *, soft_labels, seed, epoch, progressive_epochs, shuffle_buffer):
    """Train files -> cached, shuffled, infinite stream following the sampler's class weights."""
    counts = schema.class_counts(info, "train")
    if sampling == "instance":
        # Plain full shuffle: the same class frequencies as instance weights,
        # drawn without replacement within a pass, and one stream is cheaper.
        buffer = max(1, min(shuffle_buffer, int(counts.sum())))
        return _records(files, info, soft_labels).cache().shuffle(buffer, seed=seed).repeat()
    streams = []
    for k, n_k in enumerate(counts):
        stream = _records(files, info, soft_labels, label=k)
        if n_k == 0:
            # Never drawn (weight 0); take(0) keeps it from scanning the files.
            streams.append(stream.take(0))
            continue
        buffer = min(shuffle_buffer, int(n_k))
        streams.append(stream.cache().shuffle(buffer, seed=seed + 1 + k).repeat())
    return sample_classes(
        streams, counts, sampling, seed=seed, epoch=epoch, progressive_epochs=progressive_epochs
    )


def make_train_dataset(
    data_dir: str,
    info: Mapping[str, Any],
    *,
    batch_size: int,
    image_size: int = 48,
    channels: int = 1,
    sampling: str = "instance",
    augmentations: Sequence[str] = DEFAULT_AUGMENTATIONS,
    aug_strength: float = 1.0,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    mix_prob: float = 1.0,
    soft_labels: bool = False,
    epoch: tf.Variable | None = None,
    progressive_epochs: int = DEFAULT_PROGRESSIVE_EPOCHS,
    seed: int = 0,
    input_context: tf.distribute.InputContext | None = None,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
) -> tf.data.Dataset:
    """The infinite, augmented, class-sampled training dataset.

    Args:
      data_dir: directory with the `train-*` shards and `dataset_info.json`.
      info: its `dataset_info.json` (`schema.read_dataset_info`).
      batch_size: images per yielded batch. Under tf.distribute this is the
        per-replica size: `input_context.get_per_replica_batch_size(global)`.
      image_size: side S of the model input.
      channels: 1 or 3 (model input channels).
      sampling: a key of `fer_tf.sampling.SAMPLERS`.
      augmentations: names from `fer_tf.augment.AUGMENTATIONS`, applied in order.
      aug_strength: magnitude scale of every augmentation (0: none).
      mixup_alpha: mixup Beta alpha; 0 disables mixup.
      cutmix_alpha: cutmix Beta alpha; 0 disables cutmix.
      mix_prob: probability that an image is mixed when mixup/cutmix is on.
      soft_labels: targets are the normalised `soft_label` votes (FER+).
      epoch: int tf.Variable with the current epoch (progressive sampling).
      progressive_epochs: epochs for progressive sampling to reach balanced.
      seed: seed of file order, shuffles, class draws and augmentation.
      input_context: from `distribute_datasets_from_function`; shards by file.
      shuffle_buffer: cap on each shuffle buffer (per class when sampling).

    Returns:
      Dataset of (images float32 [B,S,S,C] in [0,1], targets float32 [B,K]).
    """
    _check_options(sampling, augmentations, mixup_alpha, cutmix_alpha, epoch)
    seed = _pipeline_seed(seed, input_context)
    ds = _sampled(
        _train_files(data_dir, seed, input_context),
        info,
        sampling,
        soft_labels=soft_labels,
        seed=seed,
        epoch=epoch,
        progressive_epochs=progressive_epochs,
        shuffle_buffer=shuffle_buffer,
    )
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = _augmented(ds, seed, image_size, channels, tuple(augmentations), aug_strength)
    if mixup_alpha > 0 or cutmix_alpha > 0:

        def mix(images, targets, mix_seed):
            return augment.mix_batch(
                images, targets, mix_seed, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=mix_prob
            )

        ds = ds.map(mix, num_parallel_calls=AUTOTUNE)
    else:
        ds = ds.map(lambda images, targets, mix_seed: (images, targets))
    return ds.prefetch(AUTOTUNE)


def _augmented(ds, seed: int, image_size: int, channels: int, names: tuple[str, ...], strength: float):
    """Batches of (uint8 images, labels, targets) -> (float images, targets, seed for the mix op).

    Batch i gets the stateless seed (seed, i): runs repeat exactly, and every
    image still draws its own parameters inside the batched ops.
    """

    def augment_batch(batch, step):
        images, _, targets = batch
        seeds = tf.random.experimental.stateless_split(tf.stack([tf.constant(seed, tf.int64), step]), 2)
        images = preprocess_for_eval(images, image_size, channels)
        return augment.apply(images, seeds[0], names, strength), targets, seeds[1]

    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.counter()))
    return ds.map(augment_batch, num_parallel_calls=AUTOTUNE)


def make_eval_dataset(
    data_dir: str,
    info: Mapping[str, Any],
    split: str = "val",
    *,
    batch_size: int,
    image_size: int = 48,
    channels: int = 1,
    soft_labels: bool = False,
) -> tf.data.Dataset:
    """The deterministic eval dataset: every record once, in file order.

    Args:
      data_dir: directory with the `<split>-*` shards and `dataset_info.json`.
      info: its `dataset_info.json`.
      split: "train", "val" or "test".
      batch_size: images per batch; the last, partial batch is kept.
      image_size: side S of the model input.
      channels: 1 or 3.
      soft_labels: targets are the normalised votes instead of one-hot labels.

    Returns:
      Dataset of (images float32 [B,S,S,C] in [0,1], targets float32 [B,K]).
    """
    ds = _records(_files(data_dir, split), info, soft_labels, ordered=True).cache()
    ds = ds.batch(batch_size, drop_remainder=False)
    ds = ds.map(
        lambda images, labels, targets: (preprocess_for_eval(images, image_size, channels), targets),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    return ds.prefetch(AUTOTUNE)


def eval_arrays(
    data_dir: str, info: Mapping[str, Any], split: str = "val", *, image_size: int, channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every image and label of a split as NumPy arrays, in file order.

    The images are the uint8 model-size images that both the SavedModel and
    the TFLite models accept: the stored bytes when the stored shape is
    already [S, S, C], otherwise `preprocess_for_eval` rounded back to uint8.

    Args:
      data_dir: directory with the shards and `dataset_info.json`.
      info: its `dataset_info.json`.
      split: "train", "val" or "test".
      image_size: side S.
      channels: 1 or 3.

    Returns:
      (images uint8 [N, S, S, channels], labels int64 [N]).
    """
    same = list(info["image_shape"]) == [image_size, image_size, channels]

    def to_model_size(images, labels, targets):
        if not same:
            images = preprocess_for_eval(images, image_size, channels)
            images = tf.cast(tf.round(images * 255.0), tf.uint8)
        return images, labels

    ds = _records(_files(data_dir, split), info, soft_labels=False, ordered=True)
    ds = ds.batch(1024).map(to_model_size)
    images, labels = [], []
    for batch_images, batch_labels in ds.as_numpy_iterator():
        images.append(batch_images)
        labels.append(batch_labels)
    if not images:
        return np.zeros([0, image_size, image_size, channels], np.uint8), np.zeros([0], np.int64)
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)
