"""Tests of fer_tf/data.py on tiny real TFRecord datasets written into tmp_path."""

import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import write_info

from fer_tf import data, sampling, schema

CLASSES = schema.FER2013_CLASSES
TRAIN_COUNTS = [12, 3, 10, 25, 8, 6, 6]  # 70, imbalanced; disgust rarest
VAL_SIZE = 23  # not a multiple of the eval batch


def _image(index: int, rng) -> np.ndarray:
    """A random 48x48x1 image whose first pixel is its index: images identify themselves."""
    image = rng.integers(0, 256, size=(48, 48, 1), dtype=np.uint8)
    image[0, 0, 0] = index
    return image


def _write(data_dir, split, images, labels, votes, num_shards):
    for shard in range(num_shards):
        path = os.path.join(data_dir, schema.shard_name(split, shard, num_shards))
        with tf.io.TFRecordWriter(path) as writer:
            for i in range(shard, len(labels), num_shards):
                example = schema.make_example(images[i], int(labels[i]), f"{split}/{i}", soft_label=votes[i])
                writer.write(example.SerializeToString())
    # Records in sorted-shard order, as an ordered reader returns them.
    return np.concatenate([np.arange(s, len(labels), num_shards) for s in range(num_shards)])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A train split of 70 (4 shards) and a val split of 23 (2 shards), with FER+-style votes."""
    data_dir = str(tmp_path_factory.mktemp("tfrecords"))
    rng = np.random.default_rng(0)
    arrays, num_shards = {}, {"train": 4, "val": 2}
    train_labels = rng.permutation(np.repeat(np.arange(7), TRAIN_COUNTS))
    val_labels = rng.integers(0, 7, size=VAL_SIZE)
    offset = 0
    for split, labels in (("train", train_labels), ("val", val_labels)):
        images = np.stack([_image(offset + i, rng) for i in range(len(labels))])
        votes = rng.integers(0, 4, size=(len(labels), 7)).astype(np.float32)
        votes[np.arange(len(labels)), labels] += 6  # 10-ish annotators, majority = label
        order = _write(data_dir, split, images, labels, votes, num_shards[split])
        arrays[split] = (images, labels, votes, order)
        offset += len(labels)
    labels = {split: split_arrays[1] for split, split_arrays in arrays.items()}
    write_info(data_dir, CLASSES, labels, num_shards, has_soft_labels=True)
    return data_dir, schema.read_dataset_info(data_dir), arrays


def _index(images_float):
    """Recovers each image's index from its first pixel (exact when not augmented)."""
    return np.round(images_float[:, 0, 0, 0] * 255).astype(int)


def _batches(ds, n):
    images, targets = zip(*[(x.numpy(), y.numpy()) for x, y in ds.take(n)], strict=True)
    return np.concatenate(images), np.concatenate(targets)


# --- preprocess_for_eval (the train/serve contract)


@pytest.mark.parametrize("channels_in", [1, 3, 4])
@pytest.mark.parametrize("channels", [1, 3])
def test_preprocess_for_eval_contract(channels_in, channels):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(2, 37, 61, channels_in), dtype=np.uint8)
    out = data.preprocess_for_eval(images, 48, channels).numpy()
    single = data.preprocess_for_eval(images[0], 48, channels).numpy()
    assert out.shape == (2, 48, 48, channels) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(single, out[0], atol=1e-6)
    x = tf.image.convert_image_dtype(images[..., : min(channels_in, 3)], tf.float32)
    if channels == 1 and channels_in > 1:
        x = tf.image.rgb_to_grayscale(x)
    elif channels == 3 and channels_in == 1:
        x = tf.image.grayscale_to_rgb(x)
    expected = tf.image.resize(x, [48, 48], antialias=True).numpy().clip(0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_center_zoom_keeps_only_the_centre_and_its_symmetry():
    assert data.zoom_margin(48, 1.09) == 2 and data.effective_zoom(48, 1.09) == pytest.approx(48 / 44)
    images = np.zeros((2, 48, 48, 1), np.float32)
    images[:, 2:46, 2:46] = 0.25  # the border the zoom crops away is 0, the centre constant
    images[1, 2:46, 2:46, 0] += np.abs(np.arange(44) - 21.5)[None, :] / 100.0  # mirror-symmetric
    zoomed = data.center_zoom(tf.constant(images), 1.09).numpy()
    assert zoomed.shape == images.shape
    np.testing.assert_allclose(zoomed[0], 0.25, atol=1e-6)
    np.testing.assert_allclose(zoomed[1], zoomed[1, :, ::-1], atol=1e-6)
    assert zoomed[1].max() > 0.25 + 0.2  # the ramp is stretched, not lost
    for bad in (1.0, 0.9, 100.0):
        with pytest.raises(ValueError, match="zoom"):
            data.zoom_margin(48, bad)


def test_preprocess_for_eval_same_size_is_exact_and_works_in_map():
    images = np.random.default_rng(2).integers(0, 256, size=(3, 48, 48, 1), dtype=np.uint8)
    np.testing.assert_allclose(data.preprocess_for_eval(images).numpy(), images / 255.0, atol=1e-7)
    # Unknown height and width inside tf.data: still [S, S, C].
    ds = tf.data.Dataset.from_generator(
        lambda: iter([images[0], images[1, :40, :30]]),
        output_signature=tf.TensorSpec([None, None, 1], tf.uint8),
    ).map(lambda x: data.preprocess_for_eval(x, 32, 3))
    outs = [o.numpy() for o in ds]
    assert [o.shape for o in outs] == [(32, 32, 3), (32, 32, 3)]
    np.testing.assert_allclose(outs[0], data.preprocess_for_eval(images[0], 32, 3).numpy(), atol=1e-6)


# --- eval


def test_eval_dataset_round_trips_keeps_remainder_and_repeats(dataset):
    data_dir, info, arrays = dataset
    images, labels, _, order = arrays["val"]
    ds = data.make_eval_dataset(data_dir, info, "val", batch_size=8)
    sizes = [x.shape[0] for x, _ in ds]
    assert sizes == [8, 8, 7]
    first, second = _batches(ds, 10), _batches(ds, 10)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    x, y = first
    np.testing.assert_allclose(x, images[order] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(y, np.eye(7)[labels[order]])


def test_eval_dataset_soft_labels_and_rgb(dataset):
    data_dir, info, arrays = dataset
    _, _, votes, order = arrays["val"]
    ds = data.make_eval_dataset(
        data_dir, info, "val", batch_size=16, image_size=32, channels=3, soft_labels=True
    )
    x, y = _batches(ds, 10)
    assert x.shape == (VAL_SIZE, 32, 32, 3)
    np.testing.assert_allclose(x[..., 0], x[..., 2])
    np.testing.assert_allclose(y, votes[order] / votes[order].sum(1, keepdims=True), atol=1e-6)


def test_eval_arrays(dataset):
    data_dir, info, arrays = dataset
    images, labels, _, order = arrays["val"]
    x, y = data.eval_arrays(data_dir, info, "val", image_size=48, channels=1)
    assert x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x, images[order])
    np.testing.assert_array_equal(y, labels[order])
    small, _ = data.eval_arrays(data_dir, info, "val", image_size=24, channels=3)
    assert small.shape == (VAL_SIZE, 24, 24, 3) and small.dtype == np.uint8
    expected = np.round(data.preprocess_for_eval(images[order], 24, 3).numpy() * 255)
    np.testing.assert_array_equal(small, expected.astype(np.uint8))


# --- train


def test_steps_per_epoch_is_floor_for_every_sampler(dataset):
    _, info, _ = dataset
    assert data.steps_per_epoch(info, 16) == 70 // 16
    assert data.steps_per_epoch(info, 7) == 10
    assert data.steps_per_epoch(info, 500) == 1


def test_train_without_augmentation_yields_stored_images_with_their_labels(dataset):
    data_dir, info, arrays = dataset
    images, labels, _, _ = arrays["train"]
    ds = data.make_train_dataset(data_dir, info, batch_size=16, augmentations=(), seed=3)
    x, y = _batches(ds, 3 * data.steps_per_epoch(info, 16))  # three epochs: it repeats
    assert x.shape == (3 * 4 * 16, 48, 48, 1) and y.shape == (3 * 4 * 16, 7)
    idx = _index(x)
    np.testing.assert_array_equal(x, data.preprocess_for_eval(images[idx]).numpy())  # train/serve parity
    np.testing.assert_array_equal(y, np.eye(7)[labels[idx]])
    # Instance sampling is a full shuffle: the first epoch has no repeats.
    assert len(set(idx[:64])) == 64


def test_train_shapes_range_and_mixing(dataset):
    data_dir, info, _ = dataset
    ds = data.make_train_dataset(
        data_dir,
        info,
        batch_size=8,
        image_size=40,
        channels=3,
        sampling="sqrt",
        mixup_alpha=0.4,
        cutmix_alpha=1.0,
        seed=1,
    )
    x, y = _batches(ds, 6)
    assert x.shape == (48, 40, 40, 3) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1
    np.testing.assert_allclose(y.sum(1), 1.0, atol=1e-5)
    assert (y.max(1) < 1).sum() >= 12  # most images are mixed


def test_train_is_deterministic_given_the_seed(dataset):
    data_dir, info, _ = dataset

    def first_batches(seed):
        ds = data.make_train_dataset(
            data_dir, info, batch_size=8, sampling="balanced", seed=seed, mixup_alpha=0.2
        )
        return _batches(ds, 4)

    a, b, c = first_batches(0), first_batches(0), first_batches(1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_train_soft_labels(dataset):
    data_dir, info, arrays = dataset
    _, _, votes, _ = arrays["train"]
    ds = data.make_train_dataset(data_dir, info, batch_size=10, augmentations=(), soft_labels=True)
    x, y = _batches(ds, 7)
    idx = _index(x)
    np.testing.assert_allclose(y, votes[idx] / votes[idx].sum(1, keepdims=True), atol=1e-6)


def test_balanced_sampling_from_tfrecords(dataset):
    data_dir, info, arrays = dataset
    _, labels, _, _ = arrays["train"]
    ds = data.make_train_dataset(data_dir, info, batch_size=50, sampling="balanced", augmentations=(), seed=4)
    x, y = _batches(ds, 40)
    observed = np.bincount(y.argmax(1), minlength=7)
    expected = sampling.class_weights("balanced", TRAIN_COUNTS) * observed.sum()
    assert (((observed - expected) ** 2) / expected).sum() < 22.46  # chi2, df 6, p 0.001
    idx = _index(x)
    np.testing.assert_array_equal(y.argmax(1), labels[idx])
    assert len(set(idx[labels[idx] == 1])) == 3  # all three disgust images are used, repeatedly


def test_progressive_sampling_follows_the_epoch_variable(dataset):
    data_dir, info, _ = dataset
    epoch = tf.Variable(0, dtype=tf.int64)
    ds = data.make_train_dataset(
        data_dir,
        info,
        batch_size=50,
        sampling="progressive",
        epoch=epoch,
        progressive_epochs=2,
        augmentations=(),
        seed=5,
    )
    it = iter(ds)
    shares = []
    for e in (0, 2):
        epoch.assign(e)
        for _ in range(12):  # drain what was drawn and prefetched before the assignment
            next(it)
        y = np.concatenate([next(it)[1].numpy() for _ in range(20)])
        shares.append(np.mean(y.argmax(1) == 1))
    assert shares[0] < 0.1 and shares[1] > 0.1  # disgust: 3/70 = 4% -> 1/7 = 14%
    with pytest.raises(ValueError, match="epoch"):
        data.make_train_dataset(data_dir, info, batch_size=8, sampling="progressive")


def test_input_context_shards_by_file(dataset):
    data_dir, info, arrays = dataset
    seen = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline, num_replicas_in_sync=2
        )
        ds = data.make_train_dataset(data_dir, info, batch_size=5, augmentations=(), input_context=context)
        x, _ = _batches(ds, 14)
        seen.append(set(_index(x)))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(70))
    with pytest.raises(ValueError, match="shards"):
        context = tf.distribute.InputContext(num_input_pipelines=8, input_pipeline_id=0)
        data.make_train_dataset(data_dir, info, batch_size=5, input_context=context)


def test_bad_inputs_raise_clear_errors(dataset, tmp_path):
    data_dir, info, _ = dataset
    with pytest.raises(FileNotFoundError, match="no train shards"):
        data.make_train_dataset(str(tmp_path), info, batch_size=8)
    with pytest.raises(ValueError, match="unknown augmentation"):
        data.make_train_dataset(data_dir, info, batch_size=8, augmentations=("flip", "warp"))
    with pytest.raises(ValueError, match="unknown sampling"):
        data.make_train_dataset(data_dir, info, batch_size=8, sampling="oversample")
    no_votes = dict(info, has_soft_labels=False)
    with pytest.raises(ValueError, match="soft labels"):
        data.make_eval_dataset(data_dir, no_votes, batch_size=8, soft_labels=True)


def test_class_without_examples_is_never_drawn(tmp_path):
    rng = np.random.default_rng(5)
    labels = np.array([0, 2] * 10)
    images = np.stack([_image(i, rng) for i in range(20)])
    _write(str(tmp_path), "train", images, labels, [None] * 20, 2)
    info = write_info(tmp_path, ["a", "b", "c"], {"train": labels}, 2)
    assert info["splits"]["train"]["class_counts"] == {"a": 10, "b": 0, "c": 10}
    ds = data.make_train_dataset(str(tmp_path), info, batch_size=20, sampling="balanced", augmentations=())
    _, y = _batches(ds, 10)
    counts = np.bincount(y.argmax(1), minlength=3)
    assert counts[1] == 0 and 70 <= counts[0] <= 130
