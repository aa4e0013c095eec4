"""Small pure image augmentations, looked up by name (STYLE.md #6).

Every op in `AUGMENTATIONS` has the signature `op(images, seed, strength=1.0)`:

- `images`: float32 in [0, 1], one image `[S, S, C]` or a batch `[B, S, S, C]`.
  On a batch every image draws its own parameters, so the train pipeline can
  augment after `batch()` with one kernel call per op (see `fer_tf/data.py`)
  while each image still gets independent randomness.
- `seed`: int32/int64 `[2]`, for stateless random ops: the same seed gives the
  same output, eagerly and inside `tf.data`, so runs repeat with `--seed`.
- `strength`: scales every magnitude (and the probability of the on/off ops);
  0 is the identity, 1 the recipe below.

The output has the input's shape and dtype and stays in [0, 1].
`mixup` and `cutmix` are per-batch ops that also mix the targets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import tensorflow as tf

# Magnitudes at strength 1.
FLIP_PROB = 0.5
ROTATION_DEG = 15.0
SHIFT_FRACTION = 0.10
ZOOM_FRACTION = 0.10  # zoom in [0.9, 1.1]
SHEAR = 0.10  # shear factor (about 6 degrees)
CROP_MIN_AREA = 0.75  # random resized crop keeps 75-100% of the area
CROP_LOG_RATIO = math.log(4 / 3)
BRIGHTNESS = 0.2  # additive, in [0, 1] units
CONTRAST = 0.3  # factor in [0.7, 1.3] around the image mean
GAMMA_LOG = 0.4  # gamma in [e^-0.4, e^0.4] = [0.67, 1.49]
ERASING_PROB = 0.5  # Zhong et al. 2020
ERASING_AREA = (0.02, 0.33)
ERASING_LOG_RATIO = math.log(1 / 0.3)

Op = Callable[..., tf.Tensor]


def _as_batch(images: tf.Tensor) -> tuple[tf.Tensor, bool]:
    images = tf.convert_to_tensor(images, tf.float32)
    if images.shape.rank == 3:
        return images[tf.newaxis], False
    if images.shape.rank != 4:
        raise ValueError(f"expected [S,S,C] or [B,S,S,C] images, got shape {images.shape}")
    return images, True


def _uniform(seed: tf.Tensor, batch: tf.Tensor, low, high) -> tf.Tensor:
    return tf.random.stateless_uniform([batch], seed, minval=low, maxval=high)


def _strength(strength) -> tf.Tensor:
    return tf.cast(strength, tf.float32)


def flip(images: tf.Tensor, seed: tf.Tensor, strength: float = 1.0) -> tf.Tensor:
    """Mirrors each image left-right with probability 0.5 * min(strength, 1)."""
    batch, batched = _as_batch(images)
    prob = FLIP_PROB * tf.minimum(_strength(strength), 1.0)
    do = _uniform(seed, tf.shape(batch)[0], 0.0, 1.0) < prob
    if batch.shape[-1] == 1:
        # tf.reverse of [B,H,W,1] along W is ~8x slower than of [B,H,W] along its last axis.
        mirrored = tf.reverse(batch[..., 0], axis=[2])[..., tf.newaxis]
    else:
        mirrored = tf.reverse(batch, axis=[2])
    out = tf.where(do[:, None, None, None], mirrored, batch)
    return out if batched else out[0]


def affine(images: tf.Tensor, seed: tf.Tensor, strength: float = 1.0) -> tf.Tensor:
    """Random rotation (±15°), shift (±10%), zoom (0.9-1.1) and shear (±0.1).

    One bilinear `ImageProjectiveTransformV3` call for the whole batch, with
    one 3x3 transform per image; borders are filled by reflection, which
    keeps face-like texture in the corners instead of black wedges.
    """
    batch, batched = _as_batch(images)
    n = tf.shape(batch)[0]
    height, width = tf.shape(batch)[1], tf.shape(batch)[2]
    s = _strength(strength)
    seeds = tf.random.experimental.stateless_split(seed, 5)
    angle = _uniform(seeds[0], n, -1.0, 1.0) * s * (ROTATION_DEG * math.pi / 180)
    shear = _uniform(seeds[1], n, -1.0, 1.0) * s * SHEAR
    zoom = 1.0 + _uniform(seeds[2], n, -1.0, 1.0) * s * ZOOM_FRACTION
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    shift = _uniform(seeds[3], 2 * n, -1.0, 1.0) * s * SHIFT_FRACTION
    tx, ty = shift[:n] * w, shift[n:] * h
    # The op maps each OUTPUT pixel to the INPUT point it samples, so this is
    # the inverse map: input = A (output - center) + center - shift,
    # with A = rotation @ shear / zoom.
    cos, sin = tf.cos(angle), tf.sin(angle)
    a00, a01 = cos / zoom, (cos * shear - sin) / zoom
    a10, a11 = sin / zoom, (sin * shear + cos) / zoom
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    a02 = cx - a00 * cx - a01 * cy - tx
    a12 = cy - a10 * cx - a11 * cy - ty
    zeros = tf.zeros_like(a00)
    transforms = tf.stack([a00, a01, a02, a10, a11, a12, zeros, zeros], axis=1)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=batch,
        transforms=transforms,
        output_shape=tf.shape(batch)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )
    out = tf.ensure_shape(out, batch.shape)
    return out if batched else out[0]


def crop(images: tf.Tensor, seed: tf.Tensor, strength: float = 1.0) -> tf.Tensor:
    """Random resized crop: keeps 75-100% of the area (aspect 3:4-4:3), resized back.

    The crop always lies inside the image (no padding), so it only ever zooms
    in; `affine` handles shifts and zooming out.
    """
    batch, batched = _as_batch(images)
    n = tf.shape(batch)[0]
    s = _strength(strength)
    seeds = tf.random.experimental.stateless_split(seed, 4)
    area = 1.0 - _uniform(seeds[0], n, 0.0, 1.0) * s * (1.0 - CROP_MIN_AREA)
    log_ratio = _uniform(seeds[1], n, -1.0, 1.0) * s * CROP_LOG_RATIO
    crop_h = tf.minimum(tf.sqrt(area * tf.exp(-log_ratio)), 1.0)
    crop_w = tf.minimum(tf.sqrt(area * tf.exp(log_ratio)), 1.0)
    y0 = _uniform(seeds[2], n, 0.0, 1.0) * (1.0 - crop_h)
    x0 = _uniform(seeds[3], n, 0.0, 1.0) * (1.0 - crop_w)
    boxes = tf.stack([y0, x0, y0 + crop_h, x0 + crop_w], axis=1)
    out = tf.image.crop_and_resize(batch, boxes, tf.range(n), tf.shape(batch)[1:3])
    out = tf.ensure_shape(out, batch.shape)
    return out if batched else out[0]


def brightness_contrast(images: tf.Tensor, seed: tf.Tensor, strength: float = 1.0) -> tf.Tensor:
    """Random contrast (factor 0.7-1.3 around the image mean), then brightness (±0.2)."""
    batch, batched = _as_batch(images)
    n = tf.shape(batch)[0]
    s = _strength(strength)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    factor = (1.0 + _uniform(seeds[0], n, -1.0, 1.0) * s * CONTRAST)[:, None, None, None]
    delta = (_uniform(seeds[1], n, -1.0, 1.0) * s * BRIGHTNESS)[:, None, None, None]
    mean = tf.reduce_mean(batch, axis=[1, 2, 3], keepdims=True)
    # x * f + mean * (1 - f) rather than (x - mean) * f + mean: exact at f = 1.
    out = tf.clip_by_value(batch * factor + mean * (1.0 - factor) + delta, 0.0, 1.0)
    return out if batched else out[0]


def gamma(images: tf.Tensor, seed: tf.Tensor, strength: float = 1.0) -> tf.Tensor:
    """Random gamma x ** g, g log-uniform in [0.67, 1.49]; keeps 0 and 1 fixed."""
    batch, batched = _as_batch(images)
    log_g = _uniform(seed, tf.shape(batch)[0], -1.0, 1.0) * _strength(strength) * GAMMA_LOG
    out = tf.pow(batch, tf.exp(log_g)[:, None, None, None])
    return out if batched else out[0]


def _box_mask(size: tf.Tensor, top, left, box_h, box_w) -> tf.Tensor:
    """[B, H, W, 1] bool mask of the boxes [top, top+box_h) x [left, left+box_w), in pixels."""
    rows = tf.range(size[0], dtype=tf.float32)[None, :, None, None]
    cols = tf.range(size[1], dtype=tf.float32)[None, None, :, None]

    def col(v):
        return v[:, None, None, None]

    inside_y = (rows >= col(top)) & (rows < col(top + box_h))
    inside_x = (cols >= col(left)) & (cols < col(left + box_w))
    return inside_y & inside_x


def erasing(images: tf.Tensor, seed: tf.Tensor, strength: float = 1.0) -> tf.Tensor:
    """Random erasing (Zhong et al. 2020): a box of 2-33% of the area becomes noise.

    Applied with probability 0.5 * min(strength, 1); the box area upper bound
    also scales with strength. The uniform noise is drawn once per call, for
    one image, and shared by the batch: each image's box covers a different
    part of it, and drawing B images of noise to use ~10% of it was the most
    expensive part of the op.
    """
    batch, batched = _as_batch(images)
    n = tf.shape(batch)[0]
    s = tf.minimum(_strength(strength), 1.0)
    size = tf.shape(batch)[1:3]
    h, w = tf.cast(size[0], tf.float32), tf.cast(size[1], tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 6)
    do = _uniform(seeds[0], n, 0.0, 1.0) < ERASING_PROB * s
    low, high = ERASING_AREA[0], tf.maximum(ERASING_AREA[0], ERASING_AREA[1] * s)
    area = _uniform(seeds[1], n, 0.0, 1.0) * (high - low) + low
    log_ratio = _uniform(seeds[2], n, -ERASING_LOG_RATIO, ERASING_LOG_RATIO)
    box_h = tf.minimum(tf.round(tf.sqrt(area * h * w * tf.exp(log_ratio))), h)
    box_w = tf.minimum(tf.round(tf.sqrt(area * h * w * tf.exp(-log_ratio))), w)
    top = tf.floor(_uniform(seeds[3], n, 0.0, 1.0) * (h - box_h + 1.0))
    left = tf.floor(_uniform(seeds[4], n, 0.0, 1.0) * (w - box_w + 1.0))
    mask = _box_mask(size, top, left, box_h, box_w) & do[:, None, None, None]
    noise = tf.random.stateless_uniform(tf.shape(batch)[1:], seeds[5])[tf.newaxis]
    out = tf.where(mask, noise, batch)
    return out if batched else out[0]


AUGMENTATIONS: dict[str, Op] = {
    "flip": flip,
    "affine": affine,
    "crop": crop,
    "brightness_contrast": brightness_contrast,
    "gamma": gamma,
    "erasing": erasing,
}

# FER2013 recipe: faces are already centred and roughly aligned, so mild
# geometry (affine covers shift and zoom; `crop` would duplicate it) plus
# photometric jitter and occlusion (erasing), which helps with hands and
# glasses in the wild.
DEFAULT_AUGMENTATIONS: tuple[str, ...] = ("flip", "affine", "brightness_contrast", "erasing")


def apply(images: tf.Tensor, seed: tf.Tensor, names: Sequence[str], strength: float = 1.0) -> tf.Tensor:
    """Applies the named augmentations in order, each with its own derived seed.

    Args:
      images: float32 [S, S, C] or [B, S, S, C] in [0, 1].
      seed: int [2] stateless seed.
      names: keys of `AUGMENTATIONS`.
      strength: magnitude scale for every op.

    Returns:
      The augmented images, same shape and dtype.
    """
    check_names(names)
    if not names:
        return tf.convert_to_tensor(images, tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, len(names))
    for i, name in enumerate(names):
        images = AUGMENTATIONS[name](images, seeds[i], strength)
    return images


def check_names(names: Sequence[str]) -> None:
    """Raises ValueError naming any unknown augmentation."""
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentation(s) {unknown}; expected some of {sorted(AUGMENTATIONS)}")


def _beta(seed: tf.Tensor, n: tf.Tensor, alpha: float) -> tf.Tensor:
    seeds = tf.random.experimental.stateless_split(seed, 2)
    x = tf.random.stateless_gamma([n], seeds[0], alpha=alpha)
    y = tf.random.stateless_gamma([n], seeds[1], alpha=alpha)
    # Both gammas can underflow to 0 for tiny alpha; 0.5 is the symmetric answer.
    return tf.where(x + y > 0.0, x / tf.maximum(x + y, 1e-12), 0.5)


def _mix_lambda(seed: tf.Tensor, n: tf.Tensor, alpha: float, prob: float) -> tf.Tensor:
    """Per-image lambda ~ Beta(alpha, alpha), or 1 (no mixing) with probability 1 - prob."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    lam = _beta(seeds[0], n, alpha)
    keep = _uniform(seeds[1], n, 0.0, 1.0) >= prob
    return tf.where(keep, 1.0, lam)


def mixup(
    images: tf.Tensor, targets: tf.Tensor, alpha: float, seed: tf.Tensor, prob: float = 1.0
) -> tuple[tf.Tensor, tf.Tensor]:
    """Mixup (Zhang et al. 2018) with a per-image lambda ~ Beta(alpha, alpha).

    Image i is mixed with image i-1 of the batch (a roll: the batch is already
    in random order, and a roll never pairs an image with itself for B > 1).

    Args:
      images: float32 [B, S, S, C].
      targets: float32 [B, K] distributions.
      alpha: Beta concentration (> 0).
      seed: int [2] stateless seed.
      prob: probability that an image is mixed at all.

    Returns:
      (mixed images, mixed targets); targets still sum to 1.
    """
    n = tf.shape(images)[0]
    lam = _mix_lambda(seed, n, alpha, prob)
    return _blend(images, targets, lam[:, None, None, None], lam)


def cutmix(
    images: tf.Tensor, targets: tf.Tensor, alpha: float, seed: tf.Tensor, prob: float = 1.0
) -> tuple[tf.Tensor, tf.Tensor]:
    """CutMix (Yun et al. 2019): paste a box of image i-1 into image i.

    The box has area (1 - lambda) with lambda ~ Beta(alpha, alpha) per image;
    it is clipped to the image and the targets are mixed by the area actually
    pasted. Same arguments and returns as `mixup`.
    """
    n = tf.shape(images)[0]
    size = tf.shape(images)[1:3]
    h, w = tf.cast(size[0], tf.float32), tf.cast(size[1], tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, 3)
    lam = _mix_lambda(seeds[0], n, alpha, prob)
    cut = tf.sqrt(1.0 - lam)
    center = tf.random.stateless_uniform([2, n], seeds[1])
    cy, cx = tf.floor(center[0] * h), tf.floor(center[1] * w)
    top = tf.clip_by_value(cy - tf.round(cut * h / 2), 0.0, h)
    bottom = tf.clip_by_value(cy + tf.round(cut * h / 2), 0.0, h)
    left = tf.clip_by_value(cx - tf.round(cut * w / 2), 0.0, w)
    right = tf.clip_by_value(cx + tf.round(cut * w / 2), 0.0, w)
    mask = _box_mask(size, top, left, bottom - top, right - left)
    area_lam = 1.0 - (bottom - top) * (right - left) / (h * w)
    return _blend(images, targets, 1.0 - tf.cast(mask, tf.float32), area_lam)


def _blend(images, targets, image_weight, target_weight):
    """image_weight broadcasts to images; target_weight is [B]. Partner = roll by one."""
    other_images = tf.roll(images, shift=1, axis=0)
    other_targets = tf.roll(targets, shift=1, axis=0)
    mixed = images * image_weight + other_images * (1.0 - image_weight)
    t = target_weight[:, None]
    return mixed, targets * t + other_targets * (1.0 - t)


def mix_batch(
    images: tf.Tensor,
    targets: tf.Tensor,
    seed: tf.Tensor,
    *,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    prob: float = 1.0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """The per-batch op of the train pipeline: mixup, cutmix, or a per-image choice of the two.

    With both alphas > 0 each image gets mixup or cutmix with equal odds
    (timm's `switch_prob=0.5`); with both 0 the batch passes unchanged.
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, targets
    if cutmix_alpha <= 0:
        return mixup(images, targets, mixup_alpha, seed, prob)
    if mixup_alpha <= 0:
        return cutmix(images, targets, cutmix_alpha, seed, prob)
    seeds = tf.random.experimental.stateless_split(seed, 3)
    mu_images, mu_targets = mixup(images, targets, mixup_alpha, seeds[0], prob)
    cm_images, cm_targets = cutmix(images, targets, cutmix_alpha, seeds[1], prob)
    use_cutmix = _uniform(seeds[2], tf.shape(images)[0], 0.0, 1.0) < 0.5
    return (
        tf.where(use_cutmix[:, None, None, None], cm_images, mu_images),
        tf.where(use_cutmix[:, None], cm_targets, mu_targets),
    )
