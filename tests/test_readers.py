"""Dataset readers on tiny files generated here in the exact real formats."""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from quantrieve.data import DATASETS, DataError, ImageSet, IndexedImages, read_dataset
from quantrieve.data import cache as cache_module
from quantrieve.data.cache import cached_images, default_cache_dir, load_images
from quantrieve.data.cifar import read_cifar10, read_cifar100
from quantrieve.data.folder import read_image_folder
from quantrieve.data.images import decode_image
from quantrieve.data.listfile import (
    read_flickr25k,
    read_image_target_files,
    read_list_file,
    read_nuswide21,
)

CIFAR10_NAMES = [
    b"airplane",
    b"automobile",
    b"bird",
    b"cat",
    b"deer",
    b"dog",
    b"frog",
    b"horse",
    b"ship",
    b"truck",
]


# ---------------------------------------------------------------- CIFAR


def _hwc_to_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, 3072): R plane, G plane, B plane, each row-major."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _py2_pickle(obj: object) -> bytes:
    """Pickle like Python 2's cPickle (protocol 2), as the official CIFAR files were written.

    Byte strings become py2 ``str`` opcodes and uint8 arrays reference ``numpy.core.multiarray``;
    Python 3 cannot write this itself (it wraps bytes in ``_codecs.encode``).
    """
    out = bytearray(b"\x80\x02")

    def string(raw: bytes) -> None:
        if len(raw) < 256:
            out.extend(b"U" + bytes([len(raw)]) + raw)
        else:
            out.extend(b"T" + struct.pack("<i", len(raw)) + raw)

    def write(o: object) -> None:
        if o is None:
            out.extend(b"N")
        elif isinstance(o, bytes):
            string(o)
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        elif isinstance(o, list | tuple):
            out.extend(b"](" if isinstance(o, list) else b"(")
            for item in o:
                write(item)
            out.extend(b"e" if isinstance(o, list) else b"t")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for key, value in o.items():
                write(key)
                write(value)
            out.extend(b"u")
        elif isinstance(o, np.ndarray) and o.dtype == np.uint8:
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n")
            write((0,))
            string(b"b")
            out.extend(b"tR(")  # state tuple: (1, shape, dtype, False, raw data)
            write(1)
            write(o.shape)
            out.extend(b"cnumpy\ndtype\n")
            write((b"u1", 0, 1))
            out.extend(b"R")
            write((3, b"|", None, None, None, -1, -1, 0))
            out.extend(b"b\x89")
            string(o.tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(f"cannot pickle {type(o)}")

    write(obj)
    return bytes(out + b".")


def _cifar_batch(images: np.ndarray, labels: list[int], label_key: bytes) -> bytes:
    batch = {
        b"batch_label": b"generated batch",
        label_key: labels,
        b"data": _hwc_to_rows(images),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    return _py2_pickle(batch)


def _cifar10_files(rng: np.random.Generator, per_batch: int = 2) -> tuple[dict[str, bytes], dict]:
    """Member name -> pickled bytes of a tiny CIFAR-10, and the expected arrays."""
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    files, expected = {}, {"train": ([], []), "test": ([], [])}
    for name in names:
        images = rng.integers(0, 256, size=(per_batch, 32, 32, 3), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, size=per_batch)]
        files[name] = _cifar_batch(images, labels, b"labels")
        part = "test" if name == "test_batch" else "train"
        expected[part][0].append(images)
        expected[part][1].extend(labels)
    meta = {b"num_cases_per_batch": per_batch, b"label_names": CIFAR10_NAMES, b"num_vis": 3072}
    files["batches.meta"] = _py2_pickle(meta)
    return files, {p: (np.concatenate(i), np.array(lab)) for p, (i, lab) in expected.items()}


def _write_tarball(path: Path, prefix: str, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in files.items():
            info = tarfile.TarInfo(f"{prefix}/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def _write_folder(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True)
    for name, raw in files.items():
        (folder / name).write_bytes(raw)


def _check_cifar10(parts: dict, expected: dict) -> None:
    assert set(parts) == {"train", "test"}
    for part, (images, labels) in expected.items():
        got = parts[part]
        assert got.images.dtype == np.uint8 and got.images.shape == images.shape
        np.testing.assert_array_equal(got.images, images)
        np.testing.assert_array_equal(got.labels.argmax(1), labels)
        assert got.labels.sum(1).tolist() == [1] * len(labels)
        assert got.class_names[:2] == ["airplane", "automobile"] and len(got.class_names) == 10
        assert got.ids[1] == f"{part}:1"


def test_cifar10_tarball_and_folder(tmp_path: Path) -> None:
    files, expected = _cifar10_files(np.random.default_rng(0))
    (tmp_path / "tar").mkdir()
    _write_tarball(tmp_path / "tar" / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
    _write_folder(tmp_path / "ext" / "cifar-10-batches-py", files)
    for root in (
        tmp_path / "tar",
        tmp_path / "tar" / "cifar-10-python.tar.gz",
        tmp_path / "ext",
        tmp_path / "ext" / "cifar-10-batches-py",
    ):
        _check_cifar10(read_cifar10(root), expected)
    assert not (tmp_path / "tar" / "cifar-10-batches-py").exists()  # nothing extracted


def test_cifar_plane_order_is_rgb_row_major(tmp_path: Path) -> None:
    files, _ = _cifar10_files(np.random.default_rng(1))
    row = np.zeros((1, 3072), dtype=np.uint8)
    row[0, 0], row[0, 1], row[0, 32] = 10, 11, 12  # R of pixels (y0,x0), (y0,x1), (y1,x0)
    row[0, 1024], row[0, 2048] = 20, 30  # G and B of pixel (0, 0)
    files["test_batch"] = pickle.dumps({b"labels": [3], b"data": row}, protocol=2)
    _write_folder(tmp_path / "cifar-10-batches-py", files)
    image = read_cifar10(tmp_path)["test"].images[0]
    assert image[0, 0].tolist() == [10, 20, 30]
    assert image[0, 1, 0] == 11 and image[1, 0, 0] == 12


def test_cifar100_fine_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    fine_names = [f"class{i:02d}".encode() for i in range(100)]
    files, expected = {}, {}
    for part, n in (("train", 3), ("test", 2)):
        images = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        fine = [int(x) for x in rng.integers(0, 100, size=n)]
        batch = {
            b"filenames": [b"x"] * n,
            b"batch_label": b"b",
            b"fine_labels": fine,
            b"coarse_labels": [0] * n,
            b"data": _hwc_to_rows(images),
        }
        # Python 3 pickles of the same dicts (re-saved files) are read too.
        files[part] = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
        expected[part] = (images, fine)
    meta = {b"fine_label_names": fine_names, b"coarse_label_names": [b"c"] * 20}
    files["meta"] = pickle.dumps(meta, protocol=2)
    _write_tarball(tmp_path / "cifar-100-python.tar.gz", "cifar-100-python", files)
    parts = read_dataset("cifar100", tmp_path)
    for part, (images, fine) in expected.items():
        np.testing.assert_array_equal(parts[part].images, images)
        assert parts[part].labels.shape == (len(fine), 100)
        assert parts[part].labels.argmax(1).tolist() == fine
    assert parts["train"].class_names[7] == "class07"
    _write_folder(tmp_path / "cifar-100-python", files)
    np.testing.assert_array_equal(read_cifar100(tmp_path)["test"].images, expected["test"][0])


def test_cifar_errors_name_file_and_member(tmp_path: Path) -> None:
    files, _ = _cifar10_files(np.random.default_rng(3))
    missing = {k: v for k, v in files.items() if k != "data_batch_3"}
    _write_tarball(tmp_path / "a.tar.gz", "cifar-10-batches-py", missing)
    with pytest.raises(DataError, match=r"a\.tar\.gz: member cifar-10-batches-py/data_batch_3"):
        read_cifar10(tmp_path / "a.tar.gz")

    short = dict(
        files,
        data_batch_2=pickle.dumps(
            {b"labels": [1, 2], b"data": np.zeros((2, 3000), np.uint8)}, protocol=2
        ),
    )
    _write_tarball(tmp_path / "b.tar.gz", "cifar-10-batches-py", short)
    with pytest.raises(
        DataError,
        match=r"b\.tar\.gz\[cifar-10-batches-py/data_batch_2\]: "
        r"wrong data length",
    ):
        read_cifar10(tmp_path / "b.tar.gz")

    folder = tmp_path / "ext" / "cifar-10-batches-py"
    _write_folder(folder, dict(files, test_batch=files["test_batch"][:100]))
    with pytest.raises(DataError, match=r"test_batch: corrupt pickle"):
        read_cifar10(tmp_path / "ext")
    (folder / "data_batch_5").unlink()
    with pytest.raises(DataError, match=r"data_batch_5: batch file not found"):
        read_cifar10(folder)

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    (folder / "data_batch_5").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(DataError, match=r"data_batch_5: corrupt pickle.*refusing"):
        read_cifar10(folder)

    (tmp_path / "c.tar.gz").write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    with pytest.raises(DataError, match=r"c\.tar\.gz: corrupt or unreadable tarball"):
        read_cifar10(tmp_path / "c.tar.gz")
    with pytest.raises(DataError, match="neither cifar-10-batches-py/"):
        read_cifar10(tmp_path)


# ---------------------------------------------------------------- list files


def _save(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (20, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 100, 50)]


def _list_root(tmp_path: Path, num_classes: int = 3) -> Path:
    """A root with images/0.png .. images/3.png and list.txt (with one blank line)."""
    root = tmp_path / "data"
    lines = []
    for i, color in enumerate(COLORS):
        _save(root / "images" / f"{i}.png", color)
        labels = [(i + j) % 2 for j in range(num_classes)]
        lines.append(f"images/{i}.png " + " ".join(map(str, labels)))
    lines.insert(2, "")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return root


def test_list_file_reads_images_and_labels(tmp_path: Path) -> None:
    root = _list_root(tmp_path)
    got = read_list_file(root / "list.txt", root, image_size=8, num_classes=3)
    assert got.images.shape == (4, 8, 8, 3) and got.images.dtype == np.uint8
    for image, color in zip(got.images, COLORS, strict=True):
        assert (image == np.array(color, np.uint8)).all()  # PNG: lossless, exact
    assert got.labels.tolist()[:2] == [[False, True, False], [True, False, True]]
    assert got.ids == [f"images/{i}.png" for i in range(4)]
    assert got.class_names == ["label_0", "label_1", "label_2"]


def test_list_file_missing_image_names_file_and_line(tmp_path: Path) -> None:
    root = _list_root(tmp_path)
    text = (root / "list.txt").read_text() + "images/xyz.jpg 0 1 1\n"
    (root / "list.txt").write_text(text)
    with pytest.raises(DataError) as info:
        read_list_file(root / "list.txt", root, image_size=8)
    assert str(info.value) == f"{root / 'list.txt'}:6: image not found: {root / 'images/xyz.jpg'}"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("images/0.png 0 1", r"list\.txt:6: expected 3 labels \(as on line 1\), found 2"),
        ("images/0.png 0 2 1", r"list\.txt:6: label '2' in column 1 is not 0 or 1"),
        ("images/0.png 0 1 x", r"list\.txt:6: label 'x' in column 2"),
    ],
)
def test_list_file_bad_lines(tmp_path: Path, line: str, message: str) -> None:
    root = _list_root(tmp_path)
    (root / "list.txt").write_text((root / "list.txt").read_text() + line + "\n")
    with pytest.raises(DataError, match=message):
        read_list_file(root / "list.txt", root, image_size=8)


def test_list_file_wrong_num_classes_and_unreadable_image(tmp_path: Path) -> None:
    root = _list_root(tmp_path)
    with pytest.raises(DataError, match=r"list\.txt:1: expected 24 labels \(num_classes\)"):
        read_list_file(root / "list.txt", root, image_size=8, num_classes=24)
    (root / "images" / "1.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"list\.txt:2: unreadable image .*1\.png"):
        read_list_file(root / "list.txt", root, image_size=8)


def test_resize_crops_the_centre_square(tmp_path: Path) -> None:
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :5] = (0, 0, 255)  # cut away by the centre crop (columns 10..29 stay)
    image[:, 5:] = (0, 255, 0)
    Image.fromarray(image).save(tmp_path / "wide.png")
    out = decode_image(tmp_path / "wide.png", 10)
    assert out.shape == (10, 10, 3) and (out == (0, 255, 0)).all()
    Image.new("L", (30, 30), 77).save(tmp_path / "gray.png")
    assert (decode_image(tmp_path / "gray.png", 6) == 77).all()


def test_image_target_pair(tmp_path: Path) -> None:
    root = _list_root(tmp_path)
    (root / "img.txt").write_text("images/0.png\nimages/1.png\nimages/2.png\n\n")
    (root / "targets.txt").write_text("1 0 1\n0 0 0\n0 1 1\n")
    got = read_image_target_files(root / "img.txt", root / "targets.txt", root, 4)
    assert got.labels.tolist() == [[True, False, True], [False] * 3, [False, True, True]]
    (root / "targets.txt").write_text("1 0 1\n0 0 0\n")
    with pytest.raises(DataError) as info:
        read_image_target_files(root / "img.txt", root / "targets.txt", root, 4)
    assert str(info.value).startswith(f"{root / 'img.txt'}:3: line count mismatch")
    assert "img.txt has 3 lines, targets.txt 2" in str(info.value)
    (root / "targets.txt").write_text("1 0 1\n0 0\n0 1 1\n")
    with pytest.raises(DataError, match=r"targets\.txt:2: expected 3 labels \(as on line 1\)"):
        read_image_target_files(root / "img.txt", root / "targets.txt", root, 4)


def test_named_list_dataset_parts_and_cache(tmp_path: Path) -> None:
    root = tmp_path / "flickr"
    rng = np.random.default_rng(4)
    for part, n in (("database", 3), ("test", 2)):
        lines = []
        for i in range(n):
            rel = f"mirflickr/{part}{i}.jpg"
            _save(root / rel, COLORS[i], size=(30, 40))
            lines.append(rel + " " + " ".join(str(x) for x in rng.integers(0, 2, 24)))
        (root / f"{part}.txt").write_text("\n".join(lines) + "\n")
    calls = []
    parts = read_flickr25k(root, image_size=16, progress=lambda done, total: calls.append(done))
    assert set(parts) == {"database", "test"}
    assert parts["database"].images.shape == (3, 16, 16, 3)
    assert isinstance(parts["database"].images, np.memmap)
    assert parts["test"].class_names[0] == "animals" and parts["test"].labels.shape == (2, 24)
    assert np.abs(parts["test"].images[1].astype(int) - COLORS[1]).max() < 8  # JPEG: close
    assert calls == [1, 2, 3, 1, 2]
    # The cache lives outside the data folder: reading adds nothing to it.
    assert not (root / ".quantrieve-cache").exists()
    assert len(list(default_cache_dir().glob("flickr25k-*.npy"))) >= 2
    in_memory = read_flickr25k(root, image_size=16, cache=False)
    np.testing.assert_array_equal(in_memory["test"].images, parts["test"].images)
    with pytest.raises(DataError, match=r"database\.txt:1: expected 21 labels"):
        read_nuswide21(root)
    with pytest.raises(DataError, match="no list file found"):
        read_nuswide21(tmp_path)


# ---------------------------------------------------------------- image folders


def test_image_folder_with_classes(tmp_path: Path) -> None:
    root = tmp_path / "classes"
    _save(root / "dog" / "b.JPG", (0, 0, 255))
    _save(root / "dog" / "nested" / "a.png", (0, 255, 0))
    _save(root / "cat" / "z.webp", (255, 0, 0))
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / "._z.jpg").write_bytes(b"macOS metadata")
    got = read_dataset("image-folder", root)["all"]
    assert got.class_names == ["cat", "dog"]
    assert got.ids == ["cat/z.webp", "dog/b.JPG", "dog/nested/a.png"]
    assert got.labels.tolist() == [[True, False], [False, True], [False, True]]
    assert got.images.shape == (3, 64, 64, 3)
    # A second read comes from the cache and sees the same images.
    again = read_image_folder(root)["all"]
    np.testing.assert_array_equal(again.images, got.images)
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: class folder holds no images"):
        read_image_folder(root, cache=False)


def test_flat_image_folder_is_unlabelled(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    _save(root / "b.png", (1, 2, 3))
    _save(root / "a.GIF", (9, 9, 9))
    (root / "empty-sub").mkdir()
    got = read_image_folder(root, image_size=4, cache=False)["all"]
    assert got.labels is None and got.class_names == []
    assert got.ids == ["a.GIF", "b.png"]
    assert got.images[1, 0, 0].tolist() == [1, 2, 3]
    # Images in sub-folders as well: flat only when asked for (see the mixed-folder test).
    _save(root / "more" / "c.bmp", (4, 5, 6))
    got = read_image_folder(root, image_size=4, cache=False, layout="flat")["all"]
    assert got.labels is None and got.ids == ["a.GIF", "b.png", "more/c.bmp"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files found"):
        read_image_folder(tmp_path / "empty", cache=False)


def _class_folder_with_strays(tmp_path: Path, strays: int) -> Path:
    root = tmp_path / "mixed"
    _save(root / "cat" / "c.png", (255, 0, 0))
    _save(root / "dog" / "d.png", (0, 0, 255))
    for i in range(strays):
        _save(root / f"stray{i}.jpg", (0, 255, 0))
    return root


def test_stray_root_image_in_a_class_folder_dataset_is_refused_and_named(tmp_path: Path) -> None:
    """One loose image no longer turns a class-folder dataset unlabelled without a word."""
    root = _class_folder_with_strays(tmp_path, 1)
    with pytest.raises(DataError) as info:
        read_image_folder(root, cache=False)
    message = str(info.value)
    assert "class sub-folders (2: cat, dog)" in message
    assert "1 image file directly in the folder (stray0.jpg)" in message
    assert "data.layout=classes ignores them" in message and "data.layout=flat" in message
    # Many strays: the first few are named, the rest counted.
    for i in range(1, 7):
        _save(root / f"stray{i}.jpg", (0, 255, 0))
    with pytest.raises(DataError, match=r"7 image files .*stray4\.jpg, \.\.\. and 2 more"):
        read_image_folder(root, cache=False)


def test_folder_layout_classes_ignores_strays_with_a_warning_flat_reads_all(
    tmp_path: Path,
) -> None:
    from quantrieve.errors import QuantrieveWarning

    root = _class_folder_with_strays(tmp_path, 2)
    with pytest.warns(QuantrieveWarning, match=r"ignores 2 image files .*stray0\.jpg, stray1\.jpg"):
        got = read_image_folder(root, image_size=4, cache=False, layout="classes")["all"]
    assert got.ids == ["cat/c.png", "dog/d.png"] and got.class_names == ["cat", "dog"]
    assert got.labels.tolist() == [[True, False], [False, True]]
    flat = read_image_folder(root, image_size=4, cache=False, layout="flat")["all"]
    assert flat.labels is None and flat.ids == [
        "cat/c.png",
        "dog/d.png",
        "stray0.jpg",
        "stray1.jpg",
    ]
    with pytest.raises(DataError, match="unknown image folder layout 'sideways'"):
        read_image_folder(root, cache=False, layout="sideways")
    only_loose = tmp_path / "loose"
    _save(only_loose / "a.png", (1, 1, 1))
    with pytest.raises(DataError, match=r"data\.layout=classes, but no sub-folder holds images"):
        read_image_folder(only_loose, cache=False, layout="classes")


def test_layout_and_skip_bad_reach_the_reader_from_the_config(tmp_path: Path) -> None:
    from quantrieve.config import ConfigError, load_config

    root = _class_folder_with_strays(tmp_path, 1)
    config = load_config(
        overrides=["data.dataset=image-folder", "data.layout=flat", "data.decode_workers=2"]
    )
    assert config.data.reader_options() == {
        "layout": "flat",
        "skip_bad": False,
        "channels": 0,
        "workers": 2,
    }
    parts = read_dataset(config.data.dataset, root, 4, **config.data.reader_options())
    assert parts["all"].labels is None and len(parts["all"]) == 3
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    config = load_config(overrides=["data.layout=classes", "data.skip_bad=true"])
    with pytest.warns(UserWarning, match="ignores 1 image file"):
        parts = read_dataset("image-folder", root, 4, **config.data.reader_options())
    assert parts["all"].ids == ["cat/c.png", "dog/d.png"]
    assert list(parts["all"].skipped) == ["dog/broken.png"]
    with pytest.raises(ConfigError, match=r"config key 'data\.layout'"):
        load_config(overrides=["data.layout=nested"])
    with pytest.raises(DataError, match="applies to the image-folder dataset only"):
        read_dataset("mnist", root, layout="classes")


def _folder_with_bad_images(tmp_path: Path, bad: int) -> Path:
    root = tmp_path / "bad"
    _save(root / "a" / "good0.png", COLORS[0])
    _save(root / "b" / "good1.png", COLORS[1])
    for i in range(bad):
        (root / "b" / f"broken{i}.jpg").parent.mkdir(parents=True, exist_ok=True)
        (root / "b" / f"broken{i}.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.mark.parametrize("cache", [False, True])
def test_every_unreadable_image_is_reported_in_one_pass(tmp_path: Path, cache: bool) -> None:
    from quantrieve.data.images import UnreadableImagesError

    root = _folder_with_bad_images(tmp_path, 7)
    with pytest.raises(UnreadableImagesError) as info:
        read_image_folder(root, image_size=4, cache=cache)
    message = str(info.value)
    assert message.startswith("7 unreadable images: ")
    assert "broken0.jpg: unreadable image (" in message and "broken4.jpg" in message
    assert "broken5.jpg" not in message and "... and 2 more" in message
    assert "set data.skip_bad=true to leave them out" in message
    assert [b.path.name for b in info.value.bad] == [f"broken{i}.jpg" for i in range(7)]
    (root / "b" / "broken0.jpg").rename(root / "b" / "broken0.txt")
    for i in range(2, 7):
        (root / "b" / f"broken{i}.jpg").unlink()
    with pytest.raises(
        UnreadableImagesError,
        match=r"^\S*broken1\.jpg: unreadable image .*fix or "
        r"remove it, or set data\.skip_bad=true to leave it out",
    ):
        read_image_folder(root, image_size=4, cache=cache)


def test_skip_bad_leaves_unreadable_images_out_and_lists_them(tmp_path: Path, monkeypatch) -> None:
    root = _folder_with_bad_images(tmp_path, 3)
    got = read_image_folder(root, image_size=4, skip_bad=True)["all"]
    assert got.ids == ["a/good0.png", "b/good1.png"]
    assert got.labels.tolist() == [[True, False], [False, True]]
    assert (got.images[1] == COLORS[1]).all() and len(got.images) == 2
    assert sorted(got.skipped) == ["b/broken0.jpg", "b/broken1.jpg", "b/broken2.jpg"]
    assert isinstance(got.images, np.memmap)
    assert got.subset([1]).skipped == got.skipped
    # The cache remembers the unreadable files: nothing is decoded again, the error is the same.
    monkeypatch.setattr(cache_module, "decode_image", _no_decoding)
    again = read_image_folder(root, image_size=4, skip_bad=True)["all"]
    np.testing.assert_array_equal(again.images, got.images)
    assert again.skipped == got.skipped
    with pytest.raises(DataError, match="3 unreadable images"):
        read_image_folder(root, image_size=4)
    only_bad = tmp_path / "only-bad"
    only_bad.mkdir()
    (only_bad / "x.png").write_bytes(b"no")
    monkeypatch.undo()
    with pytest.raises(DataError, match="none of the 1 image files is readable"):
        read_image_folder(only_bad, skip_bad=True)


def test_list_file_reports_all_unreadable_images_and_can_skip_them(tmp_path: Path) -> None:
    root = _list_root(tmp_path)
    (root / "images" / "1.png").write_bytes(b"this is not a png")
    (root / "images" / "3.png").write_bytes(b"nor this")
    with pytest.raises(DataError) as info:
        read_list_file(root / "list.txt", root, image_size=8)
    assert str(info.value).startswith("2 unreadable images: ")
    assert f"{root / 'list.txt'}:2: unreadable image {root / 'images/1.png'}" in str(info.value)
    assert f"{root / 'list.txt'}:5: unreadable image {root / 'images/3.png'}" in str(info.value)
    got = read_list_file(root / "list.txt", root, image_size=8, skip_bad=True)
    assert got.ids == ["images/0.png", "images/2.png"]
    assert got.labels.tolist() == [[False, True, False], [False, True, False]]
    assert sorted(got.skipped) == ["images/1.png", "images/3.png"]
    # Missing files are all named too, and never skipped.
    text = (root / "list.txt").read_text() + "images/x.jpg 0 1 1\nimages/y.jpg 1 1 1\n"
    (root / "list.txt").write_text(text)
    with pytest.raises(DataError, match=r"2 images not found: .*x\.jpg; .*:7: image not found"):
        read_list_file(root / "list.txt", root, image_size=8, skip_bad=True)


# ---------------------------------------------------------------- cache


def _sources(tmp_path: Path) -> list[Path]:
    paths = [tmp_path / "src" / f"{i}.png" for i in range(3)]
    for path, color in zip(paths, COLORS, strict=False):
        _save(path, color)
    return paths


def _no_decoding(path: Path, image_size: int, channels: int = 3) -> np.ndarray:
    raise AssertionError(f"decoded {path} although the cache is fresh")


def test_cache_reused_then_rebuilt_when_stale(tmp_path: Path, monkeypatch) -> None:
    paths, cache_dir = _sources(tmp_path), tmp_path / "cache"
    progress = []
    first = cached_images(paths, 8, cache_dir, progress=lambda d, t: progress.append((d, t)))
    assert progress == [(1, 3), (2, 3), (3, 3)]
    assert isinstance(first, np.memmap) and not first.flags.writeable
    assert sorted(p.suffix for p in cache_dir.iterdir()) == [".json", ".npy"]

    with monkeypatch.context() as patch:
        patch.setattr(cache_module, "decode_image", _no_decoding)
        second = cached_images(paths, 8, cache_dir)
    np.testing.assert_array_equal(first, second)

    # Replace a source (new content, later mtime): the entry is stale and rebuilt in place.
    _save(paths[1], (7, 7, 7))
    stat = paths[1].stat()
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    decoded = []
    real = cache_module.decode_image
    monkeypatch.setattr(
        cache_module, "decode_image", lambda p, s, c=3: decoded.append(p) or real(p, s, c)
    )
    third = cached_images(paths, 8, cache_dir)
    assert decoded == [paths[1]] and (third[1] == 7).all()  # only the changed file
    np.testing.assert_array_equal(third[[0, 2]], first[[0, 2]])
    assert len(list(cache_dir.glob("*.npy"))) == 1
    # A different image size is a different entry.
    assert cached_images(paths, 4, cache_dir).shape == (3, 4, 4, 3)


def _counting_decoder(monkeypatch) -> list[Path]:
    decoded: list[Path] = []
    real = cache_module.decode_image
    monkeypatch.setattr(
        cache_module, "decode_image", lambda p, s, c=3: decoded.append(p) or real(p, s, c)
    )
    return decoded


def test_a_growing_folder_decodes_only_what_changed(tmp_path: Path, monkeypatch) -> None:
    root, cache_dir = tmp_path / "photos", tmp_path / "cache"
    colors = [(i * 9 % 256, i * 31 % 256, i * 57 % 256) for i in range(40)]
    for i, color in enumerate(colors[:30]):
        _save(root / f"{i:02d}.png", color)
    (root / "broken.png").write_bytes(b"not an image")
    decoded = _counting_decoder(monkeypatch)
    first = read_image_folder(root, image_size=8, cache_dir=cache_dir, skip_bad=True)["all"]
    assert len(decoded) == 31 and first.skipped == {"broken.png": first.skipped["broken.png"]}

    # 10 files added, 2 removed, one touched: only the 10 new and the touched one are decoded
    # (the unreadable file, unchanged, is not tried again), and one entry is left.
    decoded.clear()
    for i, color in enumerate(colors[30:], start=30):
        _save(root / f"{i:02d}.png", color)
    (root / "03.png").unlink()
    (root / "17.png").unlink()
    _save(root / "05.png", (1, 2, 3))
    stat = (root / "05.png").stat()
    os.utime(root / "05.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = read_image_folder(root, image_size=8, cache_dir=cache_dir, skip_bad=True)["all"]
    assert sorted(Path(p).name for p in decoded) == ["05.png"] + [f"{i}.png" for i in range(30, 40)]
    assert len(list(cache_dir.glob("*.npy"))) == 1 and len(list(cache_dir.glob("*.json"))) == 1
    assert "broken.png" in second.skipped and len(second) == 38
    # Equal to a cold decode of the same folder, one worker or two.
    for workers in (1, 2):
        cold = cache_module.decode_all(sorted(root.glob("[0-9]*.png")), 8, workers=workers)
        np.testing.assert_array_equal(second.images, cold.images)


def test_parallel_decoding_keeps_order_and_names_every_bad_file(
    tmp_path: Path, monkeypatch
) -> None:
    paths = []
    for i in range(150):
        path = tmp_path / f"{i:03d}.png"
        if i % 37 == 5:
            path.write_bytes(b"broken")
        else:
            _save(path, (i, 255 - i, i // 2))
        paths.append(path)
    one = cache_module.decode_all(paths, 8, workers=1)
    progress: list[tuple[int, int]] = []
    two = cache_module.decode_all(
        paths, 8, workers=2, progress=lambda d, t: progress.append((d, t))
    )
    np.testing.assert_array_equal(one.images, two.images)
    assert [b.index for b in two.bad] == [5, 42, 79, 116] == [b.index for b in one.bad]
    assert two.images[:, 0, 0, 0].tolist() == [i for i in range(150) if i % 37 != 5]
    assert progress[-1] == (150, 150) and [d for d, _ in progress] == sorted(d for d, _ in progress)
    monkeypatch.setattr(cache_module, "PROCESS_MIN_IMAGES", 1)  # worker processes this time
    processes = cache_module.decode_all(paths, 8, workers=2)
    np.testing.assert_array_equal(one.images, processes.images)
    assert processes.bad == one.bad
    with pytest.raises(DataError, match="at least one worker"):
        cache_module.decode_all(paths, 8, workers=0)


def test_interrupted_build_leaves_no_valid_looking_file(tmp_path: Path, monkeypatch) -> None:
    paths, cache_dir = _sources(tmp_path), tmp_path / "cache"
    real = cache_module.decode_image

    def dies_on_third(path: Path, image_size: int, channels: int = 3) -> np.ndarray:
        if path == paths[2]:
            raise KeyboardInterrupt
        return real(path, image_size, channels)

    monkeypatch.setattr(cache_module, "decode_image", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        cached_images(paths, 8, cache_dir)
    assert list(cache_dir.iterdir()) == []
    monkeypatch.setattr(cache_module, "decode_image", real)
    assert (cached_images(paths, 8, cache_dir)[2] == COLORS[2]).all()


def test_unwritable_cache_falls_back_to_memory(tmp_path: Path) -> None:
    paths = _sources(tmp_path)
    (tmp_path / "a-file").write_text("")
    with pytest.warns(UserWarning, match="not writable"):
        images = load_images(paths, 8, tmp_path / "a-file" / "cache")
    assert not isinstance(images, np.memmap) and images.shape == (3, 8, 8, 3)


def test_registry_keeps_old_entries_and_adds_readers() -> None:
    assert {
        "mnist",
        "fashion-mnist",
        "cifar10",
        "cifar100",
        "flickr25k",
        "nuswide21",
        "coco",
        "image-folder",
    } <= set(DATASETS)


def test_registry_states_each_dataset_s_capabilities() -> None:
    """One table says which readers decode files (the rest are arrays) and which is a folder."""
    from quantrieve.data import ARRAY_DATASETS

    assert {"fashion-mnist", "mnist", "cifar10", "cifar100"} == ARRAY_DATASETS
    assert [n for n, d in DATASETS.items() if d.folder] == ["image-folder"]
    assert all(d.decodes_files for d in DATASETS.values() if d.folder)
    with pytest.raises(DataError, match="image-folder dataset only"):
        read_dataset("mnist", "unused", layout="flat")


def test_read_dataset_passes_image_size_and_reports_decoding(tmp_path: Path) -> None:
    """The registry hands a decoding reader the configured size and a progress callback."""
    from quantrieve.data import read_dataset

    root = tmp_path / "folder"
    for name, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        (root / name).mkdir(parents=True)
        _save(root / name / "x.png", colour)
    seen: list[tuple[int, int]] = []
    parts = read_dataset("image-folder", root, 16, lambda done, total: seen.append((done, total)))
    assert parts["all"].images.shape == (2, 16, 16, 3)
    assert seen and seen[-1] == (2, 2)


# ---------------------------------------------------------------- subsets of a decode cache


def test_subset_of_a_memory_map_reads_rows_on_demand(tmp_path: Path) -> None:
    """A subset of a memory-mapped cache is a lazy view, equal to the copied subset."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    np.save(tmp_path / "cache.npy", pixels)
    mapped = np.load(tmp_path / "cache.npy", mmap_mode="r")
    labels = rng.random((20, 5)) < 0.5
    full = ImageSet(mapped, labels, [f"im{i}" for i in range(20)])
    sub = full.subset([7, 2, 19, 2])
    assert isinstance(sub.images, IndexedImages)
    assert sub.images.shape == (4, 4, 4, 3) and len(sub) == 4 and sub.image_shape == (4, 4, 3)
    np.testing.assert_array_equal(np.asarray(sub.images), pixels[[7, 2, 19, 2]])
    np.testing.assert_array_equal(sub.images[1], pixels[2])
    np.testing.assert_array_equal(sub.images[1:3], pixels[[2, 19]])
    np.testing.assert_array_equal(sub.images[np.array([3, 0])], pixels[[2, 7]])
    assert sub.ids == ["im7", "im2", "im19", "im2"]
    np.testing.assert_array_equal(sub.labels, labels[[7, 2, 19, 2]])
    nested = sub.subset([2, 0])  # still a view of the same file, not a copy
    assert isinstance(nested.images, IndexedImages) and nested.images.base is mapped
    np.testing.assert_array_equal(np.asarray(nested.images), pixels[[19, 7]])
    in_memory = ImageSet(pixels, labels, full.ids).subset([7, 2])
    assert isinstance(in_memory.images, np.ndarray)
    np.testing.assert_array_equal(in_memory.images, pixels[[7, 2]])
    with pytest.raises(DataError, match="out of range"):
        full.subset([20])


def test_training_and_encoding_run_on_a_lazy_subset(tmp_path: Path) -> None:
    """Channel statistics and embeddings of a lazy subset equal those of a copied one."""
    from quantrieve.config import ModelConfig
    from quantrieve.models.retrieval import RetrievalModel, channel_stats, embed_images

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (12, 8, 8, 1), dtype=np.uint8)
    np.save(tmp_path / "c.npy", pixels)
    lazy = ImageSet(np.load(tmp_path / "c.npy", mmap_mode="r"), None, list("abcdefghijkl"))
    lazy = lazy.subset([5, 1, 9, 3, 0])
    copied = ImageSet(pixels, None, list("abcdefghijkl")).subset([5, 1, 9, 3, 0])
    assert channel_stats(lazy.images) == channel_stats(copied.images)
    model = RetrievalModel(ModelConfig(width=4, num_books=2, codeword_dim=4), 8, 1, [0.5], [0.25])
    torch.manual_seed(0)
    a = embed_images(model, lazy.images, torch.device("cpu"), batch_size=2)
    b = embed_images(model, copied.images, torch.device("cpu"), batch_size=2)
    torch.testing.assert_close(a, b)


def test_a_grayscale_folder_keeps_one_channel(tmp_path: Path) -> None:
    """Grayscale files are decoded to one channel (no three-fold copy); a colour file among
    them makes the collection RGB; data.channels forces either."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "gray" / name).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 255, (10, 10)).astype(np.uint8)
            Image.fromarray(pixels, "L").save(tmp_path / "gray" / name / f"{i}.png")
    gray = read_dataset("image-folder", tmp_path / "gray", 8)["all"]
    assert gray.images.shape == (4, 8, 8, 1)
    rgb = read_dataset("image-folder", tmp_path / "gray", 8, channels=3)["all"]
    assert rgb.images.shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(rgb.images[..., 0], rgb.images[..., 2])  # gray in RGB
    Image.fromarray(rng.integers(0, 255, (10, 10, 3)).astype(np.uint8)).save(
        tmp_path / "gray" / "a" / "colour.png"
    )
    assert read_dataset("image-folder", tmp_path / "gray", 8)["all"].images.shape[-1] == 3
    with pytest.raises(DataError, match=r"data\.channels=1 applies to the image-folder"):
        read_dataset("mnist", tmp_path, channels=1)


@pytest.mark.parametrize("channels", [1, 3])
def test_exif_orientation_is_applied_wherever_images_are_decoded(
    tmp_path: Path, channels: int
) -> None:
    """A phone portrait (JPEG stored sideways, orientation 6 = turn 90 degrees clockwise) is
    decoded as the upright pixels, by the dataset readers, query files and uploads alike."""
    from PIL import Image

    from quantrieve.data.images import decode_image, decode_image_bytes, load_image_file

    rng = np.random.default_rng(0)
    stored = rng.integers(0, 255, (32, 48, 3)).astype(np.uint8)  # as the sensor wrote it
    stored[:4] = 255  # a bright band along the stored top edge
    jpeg = Image.fromarray(stored)
    exif = jpeg.getexif()
    exif[0x0112] = 6
    jpeg.save(tmp_path / "portrait.jpg", exif=exif.tobytes(), quality=95)
    mode = {1: "L", 3: "RGB"}[channels]
    with Image.open(tmp_path / "portrait.jpg") as image:  # the decoded (lossy) stored pixels
        image.draft(mode, (32, 32))  # as the decoder reads JPEGs (DCT-domain, Y for grayscale)
        decoded = np.asarray(image.convert(mode))
    upright = np.rot90(decoded, k=-1)  # turned 90 degrees clockwise: the band is on the right
    Image.fromarray(np.ascontiguousarray(upright)).save(tmp_path / "upright.png")
    expected = decode_image(tmp_path / "upright.png", 32, channels)
    assert np.array_equal(decode_image(tmp_path / "portrait.jpg", 32, channels), expected)
    assert np.array_equal(load_image_file(tmp_path / "portrait.jpg", 32, channels), expected)
    data = (tmp_path / "portrait.jpg").read_bytes()
    assert np.array_equal(decode_image_bytes(data, 32, channels), expected)
    sideways = decode_image(tmp_path / "portrait.jpg", 32, channels)
    assert sideways[:, -3:].mean() > sideways[:, :3].mean() + 60  # the band is on the right
