"""Input pipelines (TensorFlow / tfds): CIFAR-10/100, ImageNet, image folders.

Images come out as float32 raw RGB pixels in [0, 255] (the zoo models
normalize inside), labels as int32. Training pipelines shuffle and apply the
standard augmentation: CIFAR pad-4 random crop + horizontal flip; ImageNet
random-resized crop + flip, evaluation resize-256 + center crop.
"""

import os

CIFAR_DATASETS = ("cifar10", "cifar100")
IMAGENET = "imagenet2012"

_PREPARE_HINT = {
    "cifar10": (
        "This machine has no internet: build it offline with\n"
        "    python ../shared/data/build_tfds_cifar10.py \"$HOME/tensorflow_datasets\"\n"
        "(or download it elsewhere with tfds and copy the data_dir)."
    ),
    "cifar100": "Prepare it with `tfds build cifar100` on a machine with internet and copy the data_dir.",
    IMAGENET: (
        "imagenet2012 needs a manual download: put ILSVRC2012_img_train.tar and "
        "ILSVRC2012_img_val.tar in <data_dir>/downloads/manual and run "
        "`tfds build imagenet2012 --data_dir <data_dir>`."
    ),
}


def _tf():
    import tensorflow as tf

    return tf


def _data_dir(data_dir):
    return data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def load_tfds(name, split, data_dir=None):
    """Loads a prepared tfds dataset as `(image, label)` pairs, never downloading.

    Raises:
        FileNotFoundError: the dataset is not prepared in `data_dir`; the
            message says how to prepare it.
    """
    import tensorflow_datasets as tfds

    data_dir = _data_dir(data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # unknown name, broken registry
        raise ValueError(f"Unknown tfds dataset {name!r}: {error}") from None
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"Dataset {name!r} is not prepared in {data_dir}. "
            + _PREPARE_HINT.get(name, f"Prepare it with `tfds build {name}`.")
        )
    return builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)


def _cifar_augment(image, label):
    tf = _tf()
    image = tf.pad(image, [[4, 4], [4, 4], [0, 0]], mode="CONSTANT")
    image = tf.image.random_crop(image, tf.shape(image) - [8, 8, 0])
    image = tf.image.random_flip_left_right(image)
    return image, label


def _imagenet_train(image, label, size):
    tf = _tf()
    begin, crop, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.zeros([1, 0, 4]),
        area_range=(0.08, 1.0),
        aspect_ratio_range=(3 / 4, 4 / 3),
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.slice(image, begin, crop)
    image = tf.image.resize(image, (size, size))
    return tf.image.random_flip_left_right(image), label


def _imagenet_eval(image, label, size):
    tf = _tf()
    resize = int(round(size * 256 / 224))
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize / tf.reduce_min(shape)
    image = tf.image.resize(image, tf.cast(tf.round(shape * scale), tf.int32))
    return tf.image.resize_with_crop_or_pad(image, size, size), label


def _finish(dataset, batch_size, training, augment, shuffle_buffer, seed, resize=None):
    """Float images and int labels, shuffled and augmented when training, in batches (resized to `resize`)."""
    tf = _tf()

    def to_float(image, label):
        return tf.cast(image, tf.float32), tf.cast(label, tf.int32)

    dataset = dataset.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
    if training:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if augment is not None:
        dataset = dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(batch_size, drop_remainder=training)
    if resize is not None:
        dataset = dataset.map(lambda images, labels: (tf.image.resize(images, resize), labels),
                              num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def cifar(name="cifar10", split="train", batch_size=128, training=None, data_dir=None,
          take=None, seed=None, image_size=None):
    """A CIFAR-10/100 pipeline of `(images, labels)` batches.

    Args:
        name: "cifar10" or "cifar100".
        split: tfds split, e.g. "train", "test", "train[:10%]".
        batch_size: batch size (training drops the last partial batch).
        training: shuffle + augment; defaults to `split` starting with "train".
        data_dir: tfds data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).
        take: keep only the first `take` examples (before shuffling).
        seed: shuffle / augmentation seed.
        image_size: resize every image (bilinear, after the 32x32
            augmentation) to `image_size x image_size` (or `(height, width)`),
            e.g. 224 for a network in its ImageNet layout; None keeps 32x32.
    """
    if name not in CIFAR_DATASETS:
        raise ValueError(f"`name` must be one of {CIFAR_DATASETS}; got {name!r}.")
    training = split.startswith("train") if training is None else training
    dataset = load_tfds(name, split, data_dir)
    if take is not None:
        dataset = dataset.take(take)
    # 150 MB decoded: keeping it in memory saves decoding every image every epoch.
    dataset = dataset.cache()
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    # Resized after the cache, batch by batch: 50,000 resized copies would not fit it (30 GB at 224).
    resize = None if image_size is None or tuple(image_size) == (32, 32) else tuple(image_size)
    return _finish(dataset, batch_size, training, _cifar_augment if training else None, 50_000, seed, resize)


def cifar_arrays(name="cifar10", split="test", take=None, data_dir=None, image_size=None):
    """A CIFAR split as numpy arrays `(images float32 (N, 32, 32, 3) in 0..255, labels int32 (N,))`.

    Unshuffled and not augmented: for evaluation and benchmarks that need the
    images themselves (shifted copies, .tflite timing). `image_size` resizes
    them (bilinear) to `image_size x image_size` (or `(height, width)`), e.g.
    224 to time a network at phone resolution on real pixels.
    """
    import numpy as np

    batches = list(cifar(name, split, batch_size=1000, training=False, data_dir=data_dir, take=take,
                         image_size=image_size))
    if not batches:
        raise ValueError(f"Split {split!r} of {name} holds no images (take={take}).")
    images = np.concatenate([np.asarray(x) for x, _ in batches]).astype("float32")
    labels = np.concatenate([np.asarray(y) for _, y in batches])
    return images, labels


def imagenet(split="train", batch_size=256, training=None, data_dir=None, image_size=224, seed=None):
    """An ImageNet (imagenet2012, manual download) pipeline; see `cifar` for args."""
    training = split.startswith("train") if training is None else training
    dataset = load_tfds(IMAGENET, split, data_dir)
    tf = _tf()
    prepare = _imagenet_train if training else _imagenet_eval
    dataset = dataset.map(
        lambda image, label: prepare(tf.cast(image, tf.float32), label, image_size),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return _finish(dataset, batch_size, training, None, 10_000, seed)


def image_folder(directory, image_size, batch_size=64, training=False, seed=None, shuffle=None):
    """Images in `directory/<class name>/*.jpg|png` as `(images, labels)` batches.

    Class indices follow the sorted class-folder names. Training applies a
    random horizontal flip (plus the CIFAR crop for 32x32 images). `shuffle`
    (default: `training`) reads the files in a `seed`ed random order: without
    it they come class by class, so the first images are all of one class.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"Image folder {directory!r} does not exist; expected "
            "<directory>/<class name>/<image files>."
        )
    import keras

    dataset = keras.utils.image_dataset_from_directory(
        directory,
        image_size=tuple(image_size),
        batch_size=None,
        shuffle=training if shuffle is None else shuffle,
        seed=seed,
        label_mode="int",
    )
    tf = _tf()

    def flip(image, label):
        return tf.image.random_flip_left_right(image), label

    augment = None
    if training:
        augment = _cifar_augment if tuple(image_size) == (32, 32) else flip
    return _finish(dataset, batch_size, training, augment, 10_000, seed)


def folder_arrays(directory, image_size, take=None, seed=0):
    """The image files under `directory` (any depth) as one float32 array `(N, height, width, 3)` in 0..255.

    For images without labels, such as a device's own photos to calibrate or
    check an export on: each file is resized (bilinear) to `image_size`
    `(height, width)` as `image_folder` resizes them, grayscale and RGBA files
    become RGB. `take` keeps the first `take` files of a `seed`ed random order,
    so that a few of a folder sorted by class still span its classes.

    Example:

    >>> import os, tempfile
    >>> import keras, numpy as np
    >>> folder = tempfile.mkdtemp()
    >>> for index in range(3):
    ...     image = np.full((40, 60, 3), 50 * index, "uint8")
    ...     keras.utils.save_img(os.path.join(folder, f"{index}.png"), image, scale=False)
    >>> images = folder_arrays(folder, (32, 32), take=2)
    >>> images.shape, images.dtype
    ((2, 32, 32, 3), dtype('float32'))
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Image folder {directory!r} does not exist.")
    import keras
    import numpy as np

    dataset = keras.utils.image_dataset_from_directory(
        directory, labels=None, image_size=tuple(image_size), batch_size=None, shuffle=True, seed=seed, verbose=False)
    if take is not None:
        dataset = dataset.take(take)
    images = [np.asarray(image, np.float32) for image in dataset]
    if not images:
        raise ValueError(f"Image folder {directory!r} holds no images (take={take}).")
    return np.stack(images)


def load(name, split, batch_size=128, training=None, data_dir=None, **kwargs):
    """Dispatches on `name`: "cifar10", "cifar100", "imagenet2012" or a folder path."""
    if name in CIFAR_DATASETS:
        return cifar(name, split, batch_size, training, data_dir, **kwargs)
    if name == IMAGENET:
        return imagenet(split, batch_size, training, data_dir, **kwargs)
    if os.path.sep in name or os.path.isdir(name):
        return image_folder(os.path.join(name, split), batch_size=batch_size,
                            training=bool(training), **kwargs)
    raise ValueError(
        f"Unknown dataset {name!r}: use cifar10, cifar100, imagenet2012 or a "
        "path to an image folder."
    )
