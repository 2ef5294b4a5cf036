"""`--dataset` resolution: named sets (torchvision loaders, local ImageNet, the bundled digits), image
folders and array files. Every set yields (float CHW pixels in [0, 1], int label).

A data set's name is what results are grouped by, so it must say which images were used. Named sets are
their name (the loader fixes the files). An image folder or array file is named by its folder or file
name (or `--dataset-name`) and a digest of its content, `test#1f2e3d4c`: two folders both called
`test` are two data sets, and the same folder under two paths is one."""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .errors import UserError, unknown
from .models.base import Preprocess

_EPS_LINF_MNIST = (0.1, 0.2, 0.3)
_EPS_LINF_CIFAR = (2 / 255, 4 / 255, 8 / 255)
_EPS_LINF_IMAGENET = (1 / 255, 2 / 255, 4 / 255)


DIGEST_SEP = "#"            # name#digest (leaderboards.board.DIGEST_SEP: filters match either part)
FULL_CONTENT_FILES = 20_000        # folders up to this many files (and bytes) are hashed whole ...
FULL_CONTENT_BYTES = 512 * 2 ** 20
SAMPLED_FILES = 2_000              # ... larger ones by every name and size, and this many files' bytes


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    classes: tuple[str, ...] | None = None
    image_size: tuple[int, int] | None = None
    default_eps: dict[str, tuple[float, ...]] = field(default_factory=dict)
    digest: str | None = None          # sha256 of the content (folders, array files); None: a named set
    digest_scope: str | None = None    # what the digest covers

    def to_json(self) -> dict[str, Any]:
        out = {"name": self.name, "num_classes": self.num_classes, "channels": self.channels,
               "image_size": list(self.image_size) if self.image_size else None}
        if self.digest:
            out.update(digest=self.digest, digest_scope=self.digest_scope)
        return out


def check_dataset_name(name: str | None) -> str | None:
    """`--dataset-name`: a short label of the user's for an image folder or array file."""
    if name is None:
        return None
    text = " ".join(str(name).split())
    if not text or DIGEST_SEP in text or len(text) > 100:
        raise UserError(f"bad --dataset-name {name!r}: give a non-empty name of at most 100 characters without "
                        f"{DIGEST_SEP!r} (the content digest is appended to it)")
    return text


def identified(name: str, digest: str) -> str:
    return f"{name}{DIGEST_SEP}{digest[:8]}"


@dataclass(frozen=True)
class LoadedDataset:
    dataset: Dataset
    info: DatasetInfo

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]


class TensorImages(Dataset):
    """Images held as one float NCHW tensor in [0, 1] (arrays, the digits), optionally resized/cropped."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable | None = None) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int):
        img = self.x[i]
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.y[i])


def default_root() -> Path:
    return Path(os.environ.get("ROBUST_BENCH_DATA", Path.home() / ".cache" / "robust-bench" / "data"))


def image_transform(pre: Preprocess | None):
    """PIL or tensor image -> float tensor in [0, 1], with the model's resize and center crop."""
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode
    ops: list[Any] = []
    if pre is not None and pre.resize:
        ops.append(T.Resize(pre.resize, interpolation=InterpolationMode(pre.interpolation), antialias=True))
    if pre is not None and pre.crop:
        ops.append(T.CenterCrop(pre.crop))

    def to_tensor(img):
        if isinstance(img, torch.Tensor):
            return img.float()
        return T.functional.to_tensor(img)
    ops.append(to_tensor)
    return T.Compose(ops)


def tensor_transform(pre: Preprocess | None):
    return image_transform(pre) if pre is not None and (pre.resize or pre.crop) else None


# ---- named sets ----

@dataclass(frozen=True)
class DatasetEntry:
    name: str
    loader: Callable[[Path | None, str, Preprocess | None, bool], LoadedDataset]
    description: str


_DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(name: str, loader, description: str) -> DatasetEntry:
    if name in _DATASETS:
        raise ValueError(f"dataset {name!r} is already registered")
    entry = DatasetEntry(name, loader, description)
    _DATASETS[name] = entry
    return entry


def registered_datasets() -> list[DatasetEntry]:
    return [_DATASETS[k] for k in sorted(_DATASETS)]


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits.csv.gz, read directly: importing sklearn costs seconds."""
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",", dtype=np.float64)
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # a layout this code does not know: the public API
    d = load_digits()
    return d.images, d.target.astype(np.int64)


def _digits(root: Path | None, split: str, pre: Preprocess | None, download: bool) -> LoadedDataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, values 0..16). Fixed split: a permutation
    from RandomState(0); the last 360 (20%) are the test set."""
    images, target = _digits_arrays()
    order = np.random.RandomState(0).permutation(len(target))
    part = order[-360:] if split == "test" else order[:-360]
    x = torch.tensor(images[part] / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(target[part], dtype=torch.long)
    info = DatasetInfo("digits", 10, 1, tuple(str(i) for i in range(10)), (8, 8),
                       {"linf": (0.05, 0.1, 0.2), "l2": (0.25, 0.5, 1.0)})
    return LoadedDataset(TensorImages(x, y, tensor_transform(pre)), info)


# where torchvision's loaders look under --data-dir ROOT (the layout of each set's official archive)
_LAYOUTS = {
    "mnist": "ROOT/MNIST/raw/ holding t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (and train-*)",
    "fashion-mnist": "ROOT/FashionMNIST/raw/ holding t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (and train-*)",
    "cifar10": "ROOT/cifar-10-batches-py/ holding data_batch_1 .. data_batch_5, test_batch and batches.meta (the "
               "extracted 'python version' archive, cifar-10-python.tar.gz)",
    "cifar100": "ROOT/cifar-100-python/ holding train, test and meta (the extracted cifar-100-python.tar.gz)",
    "svhn": "ROOT/test_32x32.mat and ROOT/train_32x32.mat",
}


def _layout_hint(name: str, base: Path) -> str:
    """What --data-dir must hold for a named set, and the likely mix-up: an image folder given as the root."""
    text = f"torchvision expects {_LAYOUTS[name].replace('ROOT', str(base))}" if name in _LAYOUTS else ""
    if base.is_dir():
        subs = [d for d in sorted(base.iterdir()) if d.is_dir()]
        folders = [d for d in subs if any(c.is_dir() for c in d.iterdir())]
        if folders:   # e.g. DIR/test/<class>/*.png: an exported image folder, not the archive layout
            text += (f"; {base} holds image folders ({', '.join(d.name for d in folders[:3])}): to evaluate one, "
                     f"pass --dataset {folders[0]} instead of --dataset {name}")
    return text


def _torchvision_set(cls_name: str, name: str, channels: int, size: int, eps: dict[str, tuple[float, ...]],
                     split_kw: Callable[[str], dict[str, Any]]):
    def load(root: Path | None, split: str, pre: Preprocess | None, download: bool) -> LoadedDataset:
        import torchvision
        cls = getattr(torchvision.datasets, cls_name)
        base = Path(root) if root else default_root()
        tf = image_transform(pre)
        where = f"--data-dir {base}" if root else f"the default folder {base} (no --data-dir given)"
        try:
            ds = cls(root=str(base), download=False, transform=tf, **split_kw(split))
        except (RuntimeError, FileNotFoundError, OSError):
            hint = _layout_hint(name, base)
            if not download:
                raise UserError(f"{name} is not under {where}: {hint}; pass --data-dir ROOT with that layout") from None
            try:
                ds = cls(root=str(base), download=True, transform=tf, **split_kw(split))
            except Exception as e:  # noqa: BLE001 - offline: say where the files must go
                raise UserError(f"{name} is not under {where} and downloading it failed ({type(e).__name__}): "
                                f"{hint}; pass --data-dir ROOT with that layout") from None
        classes = tuple(getattr(ds, "classes", ()) or ()) or tuple(str(i) for i in range(10))
        targets = getattr(ds, "targets", None)
        if targets is None:
            targets = getattr(ds, "labels", None)   # SVHN
        if targets is not None:   # in memory already: the check is cheap
            class_indices(np.asarray(targets), f"{name} under {base}", len(classes))
        info = DatasetInfo(name, len(classes), channels, classes, (size, size), eps)
        return LoadedDataset(ds, info)
    return load


def _train_flag(split: str) -> dict[str, Any]:
    return {"train": split == "train"}


def _svhn_split(split: str) -> dict[str, Any]:
    return {"split": "train" if split == "train" else "test"}


register_dataset("digits", _digits, "scikit-learn's bundled 8x8 handwritten digits (offline), 360 test images")
register_dataset("mnist", _torchvision_set("MNIST", "mnist", 1, 28,
                                           {"linf": _EPS_LINF_MNIST, "l2": (1.0, 2.0)}, _train_flag),
                 "MNIST through torchvision (--data-dir ROOT holding MNIST/raw)")
register_dataset("fashion-mnist", _torchvision_set("FashionMNIST", "fashion-mnist", 1, 28,
                                                   {"linf": (0.05, 0.1, 0.2), "l2": (1.0, 2.0)}, _train_flag),
                 "Fashion-MNIST through torchvision")
register_dataset("cifar10", _torchvision_set("CIFAR10", "cifar10", 3, 32,
                                             {"linf": _EPS_LINF_CIFAR, "l2": (0.25, 0.5)}, _train_flag),
                 "CIFAR-10 through torchvision (--data-dir ROOT holding cifar-10-batches-py)")
register_dataset("cifar100", _torchvision_set("CIFAR100", "cifar100", 3, 32,
                                              {"linf": _EPS_LINF_CIFAR, "l2": (0.25, 0.5)}, _train_flag),
                 "CIFAR-100 through torchvision")
register_dataset("svhn", _torchvision_set("SVHN", "svhn", 3, 32,
                                          {"linf": _EPS_LINF_CIFAR, "l2": (0.25, 0.5)}, _svhn_split),
                 "SVHN through torchvision")


def _imagenet(root: Path | None, split: str, pre: Preprocess | None, download: bool) -> LoadedDataset:
    """A local ImageNet validation folder (ROOT/val/<wnid>/*.JPEG or ROOT itself); classes in the
    canonical order, i.e. sorted WordNet ids. ImageNet cannot be downloaded automatically."""
    if root is None:
        raise UserError("imagenet needs --data-dir pointing to the validation folder (val/<wnid>/*.JPEG)")
    base = Path(root)
    folder = base / split if (base / split).is_dir() else base / "val" if (base / "val").is_dir() else base
    if not folder.is_dir():
        raise UserError(f"ImageNet folder not found: {folder}")
    loaded = image_folder(folder, pre or Preprocess(resize=256, crop=224), name="imagenet",
                          eps={"linf": _EPS_LINF_IMAGENET, "l2": (0.5, 1.0, 2.0)}, identify=False)
    if loaded.info.num_classes != 1000:
        raise UserError(f"{folder} has {loaded.info.num_classes} class folders; ImageNet has 1000")
    return loaded


register_dataset("imagenet", _imagenet, "ImageNet validation from a local folder (--data-dir), canonical class order")


def _precomputed(name: str):
    def load(root, split, pre, download):
        raise UserError(f"{name} holds corrupted images: evaluate it with --attack corruptions")
    return load


for _name, _what in (("cifar10-c", "CIFAR-10-C"), ("cifar100-c", "CIFAR-100-C"), ("imagenet-c", "ImageNet-C")):
    register_dataset(_name, _precomputed(_name), f"{_what}, the published precomputed files (--data-dir; "
                     f"with --attack corruptions)")


# ---- labels ----

def class_indices(y: Any, where: str, num_classes: int | None = None) -> np.ndarray:
    """Labels as int64 class indices, refused unless every one is a whole number in [0, num_classes):
    a label of -1 would be scored as a mistake, 3.5 silently truncated, text parsed."""
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise UserError(f"{where}: labels must be integer class indices, not {y.dtype} values")
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            raise UserError(f"{where}: labels must be whole numbers (class indices); found {y[bad][0]:g} "
                            f"({int(bad.sum())} such label(s))")
    out = y.astype(np.int64)
    if out.size and out.min() < 0:
        raise UserError(f"{where}: labels must be class indices >= 0; found {int(out.min())} "
                        f"({int((out < 0).sum())} such label(s))")
    if num_classes is not None and out.size and out.max() >= num_classes:
        raise UserError(f"{where}: label {int(out.max())} is not a class index of its {num_classes} classes")
    return out


# ---- folders and array files ----

def folder_digest(root: Path, samples: Sequence[tuple[str, int]]) -> tuple[str, str]:
    """(sha256, scope) of an image folder's examples in their order: each file's path below `root`, its
    label and its bytes. Folders of more than FULL_CONTENT_FILES files or FULL_CONTENT_BYTES bytes: every
    path, label and size, and the bytes of SAMPLED_FILES evenly spaced files (a full read of ImageNet's
    6 GB would cost minutes on every run)."""
    h = hashlib.sha256()
    sizes = [os.path.getsize(p) for p, _ in samples]
    whole = len(samples) <= FULL_CONTENT_FILES and sum(sizes) <= FULL_CONTENT_BYTES
    step = 1 if whole else max(1, len(samples) // SAMPLED_FILES)
    for i, ((p, label), size) in enumerate(zip(samples, sizes)):
        rel = os.path.relpath(p, root).replace(os.sep, "/")
        h.update(f"{rel}\0{label}\0{size}\0".encode())
        if i % step == 0:
            with open(p, "rb") as f:
                h.update(f.read())
    scope = "every file's path, label and bytes" if whole else \
        f"every file's path, label and size, the bytes of every {step}th file"
    return h.hexdigest(), scope


def image_folder(path: Path, pre: Preprocess | None, *, name: str | None = None,
                 eps: dict[str, tuple[float, ...]] | None = None, identify: bool = True) -> LoadedDataset:
    """torchvision's ImageFolder (classes = sorted sub-folders). If every file name is an integer, the
    examples are ordered by it: exported test sets keep their official order that way, so
    `--subset first` means the official first N. `identify`: named `NAME#digest` by its content (see the
    module docstring), NAME = `name` or the folder's name; otherwise plainly `name` (a named set)."""
    from torchvision.datasets import ImageFolder
    try:
        ds = ImageFolder(str(path), transform=image_transform(pre))
    except (FileNotFoundError, OSError) as e:
        raise UserError(f"cannot read image folder {path}: {e}") from None
    stems = [Path(p).stem for p, _ in ds.samples]
    if stems and all(s.isdigit() for s in stems) and len(set(map(int, stems))) == len(stems):
        order = sorted(range(len(stems)), key=lambda i: int(stems[i]))
        ds.samples = [ds.samples[i] for i in order]
        ds.imgs = ds.samples
        ds.targets = [t for _, t in ds.samples]
    if not ds.samples:
        raise UserError(f"image folder {path} holds no images")
    first = ds[0][0]
    channels, size = int(first.shape[0]), tuple(int(v) for v in first.shape[1:])
    digest = scope = None
    shown = name or path.resolve().name
    if identify:
        digest, scope = folder_digest(path, ds.samples)
        shown = identified(shown, digest)
    info = DatasetInfo(shown, len(ds.classes), channels, tuple(ds.classes), size,  # type: ignore[arg-type]
                       eps or _guess_eps(size), digest, scope)
    return LoadedDataset(ds, info)


def _guess_eps(size: Sequence[int]) -> dict[str, tuple[float, ...]]:
    if max(size) >= 128:
        return {"linf": _EPS_LINF_IMAGENET, "l2": (0.5, 1.0, 2.0)}
    return {"linf": _EPS_LINF_CIFAR, "l2": (0.25, 0.5)}


def array_file(path: Path, pre: Preprocess | None, *, name: str | None = None) -> LoadedDataset:
    """`.npz` with `x` and `y`, or `.npy` of images with `labels.npy` beside it. x: uint8 NHWC
    (the CIFAR-10-C layout) or float NCHW in [0, 1]. Named `NAME#digest` of the arrays (NAME = `name` or
    the file's stem)."""
    try:
        if path.suffix == ".npz":
            with np.load(path) as z:
                if "x" not in z or "y" not in z:
                    raise UserError(f"{path} must hold arrays 'x' and 'y' (has {', '.join(z.files) or 'none'})")
                x, y = z["x"], z["y"]
        else:
            x = np.load(path)
            labels = path.with_name("labels.npy")
            if not labels.is_file():
                raise UserError(f"{path} holds images only; labels are read from {labels}, which is missing")
            y = np.load(labels)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - corrupt or unreadable file
        raise UserError(f"cannot read {path}: {e}") from None
    if x.ndim == 3:
        x = x[..., None] if x.dtype == np.uint8 else x[:, None]
    if x.ndim != 4:
        raise UserError(f"{path}: images must be NHWC uint8 or NCHW float, got shape {x.shape}")
    if x.dtype == np.uint8:
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 255.0
    else:
        t = torch.from_numpy(np.asarray(x, dtype=np.float32))
        if t.numel() and (t.min() < 0 or t.max() > 1):
            raise UserError(f"{path}: float images must be in [0, 1] (found {t.min():.3g}..{t.max():.3g})")
    y = np.asarray(y).reshape(-1)
    class_indices(y, str(path))
    if len(y) != t.shape[0]:
        if t.shape[0] % max(len(y), 1) == 0 and len(y):
            y = np.tile(y, t.shape[0] // len(y))   # CIFAR-10-C: 5 severities share one label file
        else:
            raise UserError(f"{path}: {t.shape[0]} images but {len(y)} labels")
    yt = torch.from_numpy(class_indices(y, str(path)))
    n_classes = int(yt.max()) + 1 if yt.numel() else 0
    h = hashlib.sha256(f"{tuple(t.shape)}\0".encode())
    h.update(t.contiguous().numpy().tobytes())
    h.update(yt.numpy().astype("<i8").tobytes())
    digest = h.hexdigest()
    info = DatasetInfo(identified(name or path.stem, digest), n_classes, int(t.shape[1]), None, tuple(t.shape[2:]),
                       _guess_eps(t.shape[2:]), digest, "the images (as [0, 1] floats) and labels")
    return LoadedDataset(TensorImages(t, yt, tensor_transform(pre)), info)


def load_dataset(spec: str, *, data_dir: str | None = None, split: str = "test",
                 preprocess: Preprocess | None = None, download: bool = True, name: str | None = None) -> LoadedDataset:
    """`name` (`--dataset-name`): what an image folder or array file is called, before its digest."""
    if split not in ("test", "train"):
        raise UserError(f"split must be test or train, got {split!r}")
    check_dataset(spec)
    name = check_dataset_name(name)
    if spec in _DATASETS:
        if name is not None:
            raise UserError(f"{spec} is a named data set and keeps its name; --dataset-name names an image folder "
                            f"or an array file")
        return _DATASETS[spec].loader(Path(data_dir) if data_dir else None, split, preprocess, download)
    path = Path(spec)
    if path.is_dir():
        return image_folder(path, preprocess, name=name)
    return array_file(path, preprocess, name=name)


def check_dataset(spec: str, *, data_dir: str | None = None) -> None:
    """The error `load_dataset` would give for a name or path that resolves to nothing, without reading it."""
    if spec in _DATASETS or Path(spec).is_dir():
        return
    path = Path(spec)
    if path.suffix in (".npz", ".npy"):
        if not path.is_file():
            raise UserError(f"data file not found: {path}")
        return
    if path.suffix or "/" in spec:
        raise UserError(f"dataset path not found: {spec}")
    raise unknown("dataset", spec, _DATASETS)


def select_indices(n_total: int, n_examples: int | None, subset: str, seed: int) -> np.ndarray:
    """Deterministic subset: the first N (RobustBench's protocol) or a seeded random sample, sorted."""
    if n_total == 0:
        raise UserError("the data set is empty")
    if n_examples is None or n_examples >= n_total:
        if n_examples is not None and n_examples > n_total:
            raise UserError(f"--n-examples {n_examples} exceeds the data set's {n_total} examples")
        return np.arange(n_total, dtype=np.int64)
    if n_examples <= 0:
        raise UserError(f"--n-examples must be > 0, got {n_examples}")
    if subset == "first":
        return np.arange(n_examples, dtype=np.int64)
    if subset != "random":
        raise UserError(f"--subset must be random or first, got {subset!r}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=n_examples, replace=False)).astype(np.int64)


def indices_sha256(indices: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()
