"""Datasets read from local folders in torchvision's layout (never downloaded), and the embedded digits set.

Every dataset is held in memory as one uint8 tensor (N, C, H, W) and one int64 label tensor;
augmentation runs per batch on the training device with a seeded generator, so a run is
reproducible and can resume mid-training with the same batches.
"""
from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

DATASETS = ("digits", "cifar10", "cifar100", "fashionmnist", "tinyimagenet")
# (classes, image channels) of each dataset as distributed, known before reading it: the CLI checks a
# model configuration against them up front (Tiny ImageNet's class count is re-read from wnids.txt).
NOMINAL_SHAPES = {"digits": (10, 1), "cifar10": (10, 3), "cifar100": (100, 3), "fashionmnist": (10, 1),
                  "tinyimagenet": (200, 3)}
# optional modules a reader needs: (import name, pip package)
READER_NEEDS = {"digits": ("sklearn", "scikit-learn"), "tinyimagenet": ("PIL", "pillow")}


@dataclass
class Split:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool  # horizontal flips are label-preserving (not for digits)
    crop_padding: int

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]


class DatasetError(FileNotFoundError):
    """A dataset folder is missing or corrupt; the message names the files expected and where."""


def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    images = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    images = (images * 255).round().clamp(0, 255).to(torch.uint8)
    labels = torch.from_numpy(digits.target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))  # fixed split
    test_idx, train_idx = order[:360], order[360:]
    return Dataset("digits", Split(images[train_idx], labels[train_idx]), Split(images[test_idx], labels[test_idx]),
                   10, (0.19,), (0.30,), flip=False, crop_padding=2)


def _unpickle(path: str) -> dict:
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DatasetError(f"{path} is not a readable CIFAR batch file ({exc})") from exc


def _cifar_split(paths: list[str], label_key: str) -> Split:
    data, labels = [], []
    for path in paths:
        batch = _unpickle(path)
        if "data" not in batch or label_key not in batch:
            raise DatasetError(f"{path} lacks the 'data' or '{label_key}' entry of a CIFAR batch file")
        arr = np.asarray(batch["data"], dtype=np.uint8)
        if arr.ndim != 2 or arr.shape[1] != 3072 or len(batch[label_key]) != arr.shape[0]:
            raise DatasetError(f"{path}: 'data' must be N x 3072 uint8 with N labels, got {arr.shape}")
        data.append(arr.reshape(-1, 3, 32, 32))
        labels.extend(batch[label_key])
    return Split(torch.from_numpy(np.concatenate(data)), torch.tensor(labels, dtype=torch.long))


def _require(folder: str, names: list[str], dataset: str) -> list[str]:
    paths = [os.path.join(folder, n) for n in names]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DatasetError(f"{dataset}: expected {', '.join(names)} in {folder}; missing: {', '.join(missing)}. "
                           "Place the dataset there in torchvision's layout (nothing is downloaded).")
    return paths


def _cifar(data_dir: str, classes: int) -> Dataset:
    if classes == 10:
        folder = os.path.join(data_dir, "cifar-10-batches-py")
        train = _require(folder, [f"data_batch_{i}" for i in range(1, 6)], "cifar10")
        test = _require(folder, ["test_batch"], "cifar10")
        key = "labels"
    else:
        folder = os.path.join(data_dir, "cifar-100-python")
        train, test = _require(folder, ["train"], "cifar100"), _require(folder, ["test"], "cifar100")
        key = "fine_labels"
    return Dataset(f"cifar{classes}", _cifar_split(train, key), _cifar_split(test, key), classes,
                   (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), flip=True, crop_padding=4)


def _read_idx(path: str, expected_ndim: int) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DatasetError(f"{path} cannot be read ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != expected_ndim:
        raise DatasetError(f"{path} is not an IDX file of {expected_ndim}-D uint8 data")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(expected_ndim)]
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * expected_ndim)
    if body.size != int(np.prod(dims)):
        raise DatasetError(f"{path} holds {body.size} bytes of data, its header says {dims}")
    return body.reshape(dims)


def _fashionmnist(data_dir: str) -> Dataset:
    folder = os.path.join(data_dir, "FashionMNIST", "raw")
    names = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
    paths = []
    for name in names:
        found = [p for p in (os.path.join(folder, name), os.path.join(folder, name + ".gz")) if os.path.isfile(p)]
        if not found:
            _require(folder, names, "fashionmnist")
        paths.append(found[0])
    splits = []
    for img_path, lbl_path in ((paths[0], paths[1]), (paths[2], paths[3])):
        images, labels = _read_idx(img_path, 3), _read_idx(lbl_path, 1)
        if len(images) != len(labels):
            raise DatasetError(f"{img_path} has {len(images)} images but {lbl_path} has {len(labels)} labels")
        images = F.pad(torch.from_numpy(images.copy()).unsqueeze(1), (2, 2, 2, 2))  # 28x28 -> 32x32 (the paper's size)
        splits.append(Split(images, torch.from_numpy(labels.astype(np.int64))))
    return Dataset("fashionmnist", splits[0], splits[1], 10, (0.2860,), (0.3530,), flip=True, crop_padding=4)


def _read_jpeg(path: str, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"{path} is not a readable image ({exc})") from exc
    if arr.shape != (size, size, 3):
        raise DatasetError(f"{path} is {arr.shape[1]}x{arr.shape[0]}, Tiny ImageNet images are {size}x{size}")
    return arr


def _image_split(paths: list[str], labels: list[int]) -> Split:
    images = np.stack([_read_jpeg(p, 64) for p in paths]).transpose(0, 3, 1, 2)
    return Split(torch.from_numpy(np.ascontiguousarray(images)), torch.tensor(labels, dtype=torch.long))


def _tinyimagenet(data_dir: str) -> Dataset:
    """tiny-imagenet-200 as distributed: wnids.txt, train/<wnid>/images/*.JPEG, val/images + val_annotations.txt.

    The labelled validation set is the test split (the official test set has no labels).
    """
    folder = os.path.join(data_dir, "tiny-imagenet-200")
    wnids_path, annotations = _require(folder, ["wnids.txt", os.path.join("val", "val_annotations.txt")],
                                       "tinyimagenet")
    with open(wnids_path) as fh:
        wnids = [line.strip() for line in fh if line.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise DatasetError(f"{wnids_path} must list distinct class ids (wnids), one per line")
    index = {w: i for i, w in enumerate(wnids)}
    train_paths, train_labels = [], []
    for wnid in wnids:
        class_dir = os.path.join(folder, "train", wnid, "images")
        if not os.path.isdir(class_dir):
            raise DatasetError(f"tinyimagenet: expected the training images of class {wnid} in {class_dir}")
        names = sorted(n for n in os.listdir(class_dir) if n.lower().endswith((".jpeg", ".jpg", ".png")))
        if not names:
            raise DatasetError(f"tinyimagenet: {class_dir} holds no images")
        train_paths += [os.path.join(class_dir, n) for n in names]
        train_labels += [index[wnid]] * len(names)
    test_paths, test_labels = [], []
    with open(annotations) as fh:
        for number, line in enumerate(fh, 1):
            fields = line.rstrip("\n").split("\t")
            if not line.strip():
                continue
            if len(fields) < 2 or fields[1] not in index:
                raise DatasetError(f"{annotations} line {number}: expected '<file>\\t<wnid>...' with a wnid from "
                                   f"wnids.txt, got {line.strip()!r}")
            test_paths.append(os.path.join(folder, "val", "images", fields[0]))
            test_labels.append(index[fields[1]])
    if not test_paths:
        raise DatasetError(f"{annotations} lists no validation images")
    return Dataset("tinyimagenet", _image_split(train_paths, train_labels), _image_split(test_paths, test_labels),
                   len(wnids), (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262), flip=True, crop_padding=4)


def load_dataset(name: str, data_dir: str | None) -> Dataset:
    if name == "digits":
        return _digits()
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    if data_dir is None:
        raise DatasetError(f"dataset {name!r} is read from a local folder: pass --data-dir")
    data_dir = os.path.expanduser(data_dir)
    if name == "fashionmnist":
        return _fashionmnist(data_dir)
    if name == "tinyimagenet":
        return _tinyimagenet(data_dir)
    return _cifar(data_dir, 10 if name == "cifar10" else 100)


def prepare_batch(images: torch.Tensor, ds: Dataset, augment: bool, generator: torch.Generator | None,
                  device: torch.device) -> torch.Tensor:
    """uint8 batch -> normalised float on ``device``; random crop (zero padding) and flip when ``augment``."""
    x = images.to(device, non_blocking=True).float().div_(255)
    if augment:
        n, _, h, w = x.shape
        p = ds.crop_padding
        offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=generator)
        padded = F.pad(x, (p, p, p, p))
        rows = (torch.arange(h)[None, :] + offsets[:, :1]).to(device)  # (n, h)
        cols = (torch.arange(w)[None, :] + offsets[:, 1:]).to(device)  # (n, w)
        x = padded[torch.arange(n, device=device)[:, None, None, None], torch.arange(x.shape[1], device=device)[
            None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]
        if ds.flip:
            flip = (torch.rand(n, generator=generator) < 0.5).to(device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
    mean = torch.tensor(ds.mean, device=device)[None, :, None, None]
    std = torch.tensor(ds.std, device=device)[None, :, None, None]
    return (x - mean) / std
