"""Knowledge distillation (fer_tf.distill): blended targets, the flip teacher, and a distilled run."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from fer_tf import data, distill, runs, schema, train_lib


def _teacher(seed=0, num_classes=7, input_shape=(48, 48, 1)):
    """A small random network that is not mirror-symmetric, so its answers differ between views."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(4, 3, strides=4, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.5)),
        ]
    )


def _batches(images, targets):
    return tf.data.Dataset.from_tensor_slices((images, targets)).batch(4)


def test_targets_blend_labels_with_the_teachers_probabilities():
    teacher = _teacher()
    images = np.random.default_rng(0).random((8, 48, 48, 1), dtype=np.float32)
    labels = tf.one_hot(np.arange(8) % 7, 7).numpy()
    blended = np.concatenate(
        [y for _, y in distill.distill_targets(_batches(images, labels), teacher, 0.3, temperature=2.0)]
    )
    probs = tf.nn.softmax(teacher(images, training=False) / 2.0).numpy()
    np.testing.assert_allclose(blended, 0.7 * labels + 0.3 * probs, atol=1e-5)
    np.testing.assert_allclose(blended.sum(axis=1), 1.0, atol=1e-5)


def test_ensemble_teacher_averages_its_members(tmp_path):
    # Two teachers of different input sizes, each over its own views, then averaged.
    small, large = _teacher(3), _teacher(4, input_shape=(56, 56, 1))
    images = np.random.default_rng(2).random((8, 56, 56, 1), dtype=np.float32)
    labels = tf.one_hot(np.arange(8) % 7, 7).numpy()
    ds = _batches(images, labels)
    blended = np.concatenate([y for _, y in distill.distill_targets(ds, [small, large], 0.5, flip=True)])
    each = [distill.teacher_probabilities(t, tf.constant(images), flip=True).numpy() for t in (small, large)]
    assert not np.allclose(each[0], each[1], atol=1e-3)
    np.testing.assert_allclose(blended, 0.5 * labels + 0.25 * (each[0] + each[1]), atol=1e-5)
    small.save(str(tmp_path / "a.keras"))
    large.save(str(tmp_path / "b.keras"))
    loaded = distill.load_teachers(f"{tmp_path / 'a.keras'}, {tmp_path / 'b.keras'}")
    assert [t.input_shape for t in loaded] == [small.input_shape, large.input_shape]
    with pytest.raises(FileNotFoundError, match="no teacher model"):
        distill.load_teachers(f"{tmp_path / 'a.keras'},{tmp_path / 'missing.keras'}")
    with pytest.raises(ValueError, match="no teacher in"):
        distill.load_teachers(" , ")


def test_flip_teacher_averages_the_image_and_its_mirror():
    teacher = _teacher(1)
    images = np.random.default_rng(1).random((4, 48, 48, 1), dtype=np.float32)
    got = distill.teacher_probabilities(teacher, tf.constant(images), flip=True).numpy()
    plain = tf.nn.softmax(teacher(images, training=False)).numpy()
    mirrored = tf.nn.softmax(teacher(images[:, :, ::-1], training=False)).numpy()
    np.testing.assert_allclose(got, (plain + mirrored) / 2, atol=1e-5)
    assert not np.allclose(plain, mirrored, atol=1e-3), "random images should not be mirror-symmetric"
    # A symmetric image gives the same answer with or without the mirror.
    symmetric = np.concatenate([images[:, :, :24], images[:, :, :24][:, :, ::-1]], axis=2)
    np.testing.assert_allclose(
        distill.teacher_probabilities(teacher, tf.constant(symmetric), flip=True),
        tf.nn.softmax(teacher(symmetric, training=False)),
        atol=1e-5,
    )


def test_zoom_teacher_averages_the_image_and_its_centre_zoom():
    teacher = _teacher(2)
    images = np.random.default_rng(2).random((4, 48, 48, 1), dtype=np.float32)
    got = distill.teacher_probabilities(teacher, tf.constant(images), zoom=1.09).numpy()
    zoomed = data.center_zoom(tf.constant(images), 1.09)
    want = (
        tf.nn.softmax(teacher(images, training=False)) + tf.nn.softmax(teacher(zoomed, training=False))
    ) / 2
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got, tf.nn.softmax(teacher(images, training=False)), atol=1e-3)
    both = distill.teacher_probabilities(teacher, tf.constant(images), flip=True, zoom=1.09).numpy()
    mirrored = tf.nn.softmax(teacher(images[:, :, ::-1], training=False))
    np.testing.assert_allclose(both, (2 * want + mirrored) / 3, atol=1e-5)


def test_teacher_of_another_size_sees_the_batch_resized():
    teacher = _teacher(3)  # 48x48
    images = np.random.default_rng(3).random((4, 56, 56, 1), dtype=np.float32)
    resized = tf.image.resize(images, [48, 48], antialias=True)
    got = distill.teacher_probabilities(teacher, tf.constant(images), zoom=1.09).numpy()
    want = (
        tf.nn.softmax(teacher(resized, training=False))
        + tf.nn.softmax(teacher(data.center_zoom(resized, 1.09), training=False))
    ) / 2
    np.testing.assert_allclose(got, want, atol=1e-5)
    blended = np.concatenate(
        [y for _, y in distill.distill_targets(_batches(images, np.eye(7)[:4]), teacher, 1.0, zoom=1.09)]
    )
    np.testing.assert_allclose(blended, want, atol=1e-5)


def test_teacher_must_match_the_student():
    teacher = _teacher()
    distill.check_teacher(teacher, (48, 48, 1), 7)
    distill.check_teacher(teacher, (64, 64, 1), 7)  # resized to 48 by teacher_probabilities
    with pytest.raises(ValueError, match="predicts 8 classes"):
        distill.check_teacher(_teacher(num_classes=8), (48, 48, 1), 7)
    with pytest.raises(ValueError, match=r"takes \(48, 48, 3\)"):
        distill.check_teacher(_teacher(input_shape=(48, 48, 3)), (48, 48, 1), 7)
    with pytest.raises(ValueError, match=r"takes \(48, 40, 1\)"):
        distill.check_teacher(_teacher(input_shape=(48, 40, 1)), (48, 48, 1), 7)


def test_adjusted_teacher_teaches_its_class_balanced_distribution():
    """With tau > 0 every teacher's logits lose tau * log prior before the softmax: the rare
    classes gain, and an ensemble averages its members' adjusted probabilities."""
    small, large = _teacher(5), _teacher(6, input_shape=(56, 56, 1))
    images = np.random.default_rng(5).random((8, 56, 56, 1), dtype=np.float32)
    labels = tf.one_hot(np.arange(8) % 7, 7).numpy()
    counts = np.array([4000, 400, 4000, 7000, 5000, 3000, 5000], np.float64)
    log_prior = np.log(counts / counts.sum())
    ds = _batches(images, labels)
    got = np.concatenate(
        [y for _, y in distill.distill_targets(ds, [small, large], 0.5, tau=0.6, log_prior=log_prior)]
    )
    resized = tf.image.resize(images, [48, 48], antialias=True)
    adjusted = [
        tf.nn.softmax(teacher(x, training=False) - 0.6 * log_prior).numpy()
        for teacher, x in ((small, resized), (large, images))
    ]
    np.testing.assert_allclose(got, 0.5 * labels + 0.25 * (adjusted[0] + adjusted[1]), atol=1e-5)
    plain = np.concatenate([y for _, y in distill.distill_targets(ds, [small, large], 0.5)])
    assert (got[:, 1] > plain[:, 1]).all(), "the rarest class (disgust) must gain in every target"
    assert (got[:, 3] < plain[:, 3]).all(), "the commonest class (happy) must lose in every target"


def test_adjusted_teacher_needs_priors_and_a_non_negative_tau():
    ds = _batches(np.zeros((4, 48, 48, 1), np.float32), np.eye(7, dtype=np.float32)[:4])
    with pytest.raises(ValueError, match="needs the training log priors"):
        distill.distill_targets(ds, _teacher(), 0.5, tau=0.6)
    with pytest.raises(ValueError, match="tau must be >= 0"):
        distill.distill_targets(ds, _teacher(), 0.5, tau=-0.1, log_prior=np.zeros(7))


def test_run_adjusts_its_teacher_by_the_training_prior(synthetic_data_dir, tmp_path):
    """train_lib feeds the dataset's training class counts to the teacher's adjustment."""
    teacher = _teacher(7)
    teacher_path = str(tmp_path / "teacher.keras")
    teacher.save(teacher_path)
    config = train_lib.TrainConfig(
        run_dir=str(tmp_path / "student"),
        data_dir=synthetic_data_dir,
        batch_size=16,
        teacher=teacher_path,
        distill_weight=1.0,
        teacher_flip=False,
        teacher_tau=1.0,
    )
    info = schema.read_dataset_info(synthetic_data_dir)
    log_prior = runs.train_log_prior(info, info)
    assert np.ptp(log_prior) > 1.0, "the synthetic data must be imbalanced for this test to bite"
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
    images, targets = next(iter(train_lib._train_input(config, info, tf.distribute.get_strategy(), epoch)))
    want = tf.nn.softmax(teacher(images, training=False) - log_prior).numpy()
    np.testing.assert_allclose(targets.numpy(), want, atol=1e-5)
    assert not np.allclose(targets.numpy(), tf.nn.softmax(teacher(images, training=False)).numpy(), atol=1e-3)


@pytest.mark.parametrize("weight, temperature", [(0.0, 1.0), (1.5, 1.0), (0.5, 0.0)])
def test_bad_weight_or_temperature_is_refused(weight, temperature):
    ds = _batches(np.zeros((4, 48, 48, 1), np.float32), np.eye(7, dtype=np.float32)[:4])
    with pytest.raises(ValueError, match="distillation"):
        distill.distill_targets(ds, _teacher(), weight, temperature)


def test_missing_teacher_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no teacher model"):
        distill.load_teacher(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no teacher model"):
        distill.load_teacher(str(tmp_path / "teacher.h5"))


def test_distilled_run_learns_the_teachers_answers(synthetic_data_dir, tmp_path):
    """Pure distillation (weight 1) from a teacher that always says 'disgust' trains a student
    that says 'disgust', whatever the labels: the targets really come from the teacher."""
    teacher = _teacher(2)
    head = teacher.layers[-1]
    kernel, bias = head.get_weights()
    head.set_weights([np.zeros_like(kernel), np.where(np.arange(7) == 1, 5.0, 0.0).astype(bias.dtype)])
    teacher_path = str(tmp_path / "teacher.keras")
    teacher.save(teacher_path)
    config = train_lib.TrainConfig(
        run_dir=str(tmp_path / "student"),
        data_dir=synthetic_data_dir,
        model_kwargs={"width": 0.25},
        batch_size=32,
        epochs=2,
        steps_per_epoch=8,
        learning_rate=3e-3,
        warmup_epochs=0.0,
        teacher=teacher_path,
        distill_weight=1.0,
        verbose=0,
    )
    train_lib.train(config)
    with open(os.path.join(config.run_dir, "run_info.json")) as f:
        assert json.load(f)["config"]["teacher"] == teacher_path
    student = keras.models.load_model(os.path.join(config.run_dir, "model.keras"), compile=False)
    info = schema.read_dataset_info(synthetic_data_dir)
    images = np.concatenate(
        [x for x, _ in data.make_eval_dataset(synthetic_data_dir, info, "val", batch_size=70)]
    )
    predicted = student.predict(images, verbose=0).argmax(axis=1)
    assert (predicted == 1).mean() > 0.9
