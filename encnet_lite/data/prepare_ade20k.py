"""Download, verify and extract ADE20K's SceneParsing release for :class:`ADE20K`.

Usage (``data_scripts/prepare_ade20k.py`` and ``encnet-prepare-ade20k`` run the same ``main``)::

    python -m encnet_lite.data.prepare_ade20k --root data/ade20k
    python -m encnet_lite.data.prepare_ade20k --root data/ade20k --from-zip ~/ADEChallengeData2016.zip

Upstream file: ``ADEChallengeData2016.zip`` (967 MB, MIT CSAIL), which unzips to
``ADEChallengeData2016/{images,annotations}/{training,validation}/`` plus
``objectInfo150.txt`` and ``sceneCategories.txt``.

Steps: find the zip (``--from-zip``, else ``DOWNLOAD_DIR/ADEChallengeData2016.zip``, else a
folder ``DOWNLOAD_DIR/ADEChallengeData2016`` unzipped by hand, else a download with resume
and progress), verify its checksum, extract the images, annotations and the two lists into
``ROOT/ADEChallengeData2016.partial`` (each file atomically; a rerun keeps what is there),
check the counts (20,210 / 2,000, every image with its annotation), check every pair has
one size and labels 0..150, rename the folder to ``ROOT/ADEChallengeData2016`` and finally
write ``prepared.json``. A folder ``ROOT/ADEChallengeData2016`` unzipped by hand is checked
and used in place. A prepared root returns at once (``--force`` redoes every step).
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import sys
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

from tqdm.auto import tqdm

from ..files import write_bytes_atomic, write_text_atomic
from . import ade20k as ade
from .archive import _read_member, describe, iter_files
from .common import (
    DataError,
    DatasetNotFoundError,
    PathLike,
    check_id,
    load_mask,
    max_member_bytes,
    open_image,
    read_marker,
)
from .download import DownloadError, download, file_digests


@dataclass(frozen=True)
class Release:
    """One copy of ``ADEChallengeData2016.zip``: where it is, its checksums, what it holds.

    A file passes verification when its SHA-1 or its SHA-256 equals the one given (each is
    published by a different source, see :data:`OFFICIAL`); ``None`` for both skips it
    with a warning. ``counts`` is the number of images (and annotations) per split.
    """

    filename: str
    url: str
    sha1: Optional[str]
    sha256: Optional[str]
    size: Optional[int]  # bytes, for messages
    counts: Dict[str, int] = field(default_factory=lambda: dict(ade.EXPECTED_SPLIT_SIZES))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, path: PathLike) -> Release:
        """Read a release manifest (the JSON of :meth:`to_json`); errors name the file."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            release = cls(**data)
            ok = set(release.counts) == set(ade.SPLITS) and all(
                isinstance(n, int) and n > 0 for n in release.counts.values())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as err:
            raise DataError(f"release manifest {path} is unreadable ({err}); give the JSON "
                            "file written beside the zip (keys: filename, url, sha1, sha256, "
                            "size, counts)") from err
        if not ok:
            raise DataError(f"release manifest {path}: counts must give a positive number of "
                            f"images for each of {list(ade.SPLITS)}, got {release.counts}")
        return release


# Two independent sources publish a checksum of this zip, each with a different hash, so
# they can only be compared through the file itself (not done here: no network):
# - SHA-1 219e1696...: the official PyTorch-Encoding code (scripts/prepare_ade20k.py) and
#   gluon-cv (scripts/datasets/ade20k.py), two near-identical scripts, so one source; the
#   value is repeated by the scripts that copy them (DANet, FastFCN and others);
# - SHA-256 7ff1be44... and the size, 967,382,037 bytes: Hugging Face datasets
#   (scene_parse150's dataset_infos.json, recorded from its own download).
OFFICIAL = Release(
    "ADEChallengeData2016.zip",
    "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
    sha1="219e1696abb36c8ba3a3afe7fb2f4b4606a897c7",
    sha256="7ff1be44964418441f542a7cc1e1a650e7dc0fc275f5d23252bc9bbdbc977b29",
    size=967_382_037,
)
PARTIAL = f"{ade.BASE_DIR}.partial"
_MEMBER = re.compile(
    rf"^(?:\./)?{ade.BASE_DIR}/(images/(?:training|validation)/[^/]+\.jpg|"
    r"annotations/(?:training|validation)/[^/]+\.png|objectInfo150\.txt|sceneCategories\.txt)$")


# --------------------------------------------------------------------------- the zip


def check_zip(path: Path, release: Release, *, verify: bool = True, progress: bool = True
              ) -> bool:
    """Check ``path`` against ``release``'s checksums. True when it matches (or matched
    before: a ``.<name>.verified`` stamp keyed on size and mtime skips the hashing), False
    when there is nothing to check or, with ``verify=False``, when it does not match (a
    printed warning); a mismatch raises :class:`DownloadError` when ``verify``."""
    known = {k: v for k, v in (("sha1", release.sha1), ("sha256", release.sha256)) if v}
    if not known:
        print(f"WARNING: no checksum for {release.filename}; using {path} unverified.")
        return False
    st, stamp = path.stat(), path.with_name(f".{path.name}.verified")
    value = json.dumps({**known, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    if stamp.is_file() and stamp.read_text() == value:
        return True
    actual = file_digests(path, ("sha1", "sha256"), progress=progress)
    if not any(actual[k] == v for k, v in known.items()):
        told = ", ".join(f"{k.upper()} {actual[k]} (expected {v})" for k, v in known.items())
        size = f" of {release.size}" if release.size else ""
        msg = (f"{path} ({st.st_size}{size} bytes) has {told}: not {release.filename} or an "
               f"incomplete copy; delete it and run again, or fetch it by hand from "
               f"{release.url}")
        if verify:
            raise DownloadError(msg)
        print(f"WARNING: {msg}. Continuing because verification is off.")
        return False
    try:  # the stamp only saves time: a read-only folder (a zip given by hand) is fine
        write_text_atomic(stamp, value)
    except (OSError, RuntimeError):
        pass
    return True


def fetch_zip(release: Release, download_dir: Path, *, skip_download: bool = False,
              verify: bool = True, progress: bool = True) -> Path:
    """``download_dir/<zip>``, checked; downloaded (resuming a ``.part``) when missing."""
    path = download_dir / release.filename
    if path.exists() and not path.is_file():
        raise DownloadError(f"{path} is a folder, not the zip {path.name}: rename or remove "
                            f"it (a folder {ade.BASE_DIR}/ unzipped by hand goes directly in "
                            f"{download_dir}), then run again")
    if path.exists():
        check_zip(path, release, verify=verify, progress=progress)
        return path
    if skip_download:
        size = f" ({release.size / 1e6:.0f} MB)" if release.size else ""
        raise DownloadError(f"{path} is missing and --skip-download is set: fetch "
                            f"{release.filename}{size} by hand from {release.url} into "
                            f"{download_dir} (or pass it with --from-zip), or drop "
                            "--skip-download")
    print(f"downloading {release.url} -> {path}")
    download(release.url, path, progress=progress)
    try:
        check_zip(path, release, verify=verify, progress=progress)
    except DownloadError as err:  # a fresh download that fails its checksum is useless
        bad = path.with_name(path.name + ".bad")
        shutil.move(str(path), bad)
        raise DownloadError(f"{err} (the download was moved to {bad}; try again later)") \
            from None
    return path


def find_source(release: Release, download_dir: Path, from_zip: Optional[Path], *,
                skip_download: bool = False, verify: bool = True, progress: bool = True
                ) -> Path:
    """The zip to extract (verified), or a folder holding ``ADEChallengeData2016/`` unzipped
    by hand (then that folder's parent is returned)."""
    if from_zip is not None:
        if from_zip.is_dir():
            raise DataError(f"--from-zip {from_zip} is a folder, not a zip: pass the folder "
                            f"holding {ade.BASE_DIR}/ as --download-dir, or move "
                            f"{ade.BASE_DIR}/ into --root to use it in place")
        if not from_zip.is_file():
            raise DataError(f"--from-zip {from_zip} does not exist: give the path of "
                            f"{release.filename}")
        check_zip(from_zip, release, verify=verify, progress=progress)
        return from_zip
    unzipped = download_dir / ade.BASE_DIR
    if not (download_dir / release.filename).exists() and unzipped.is_dir():
        print(f"using the extracted folder {unzipped} for {release.filename}")
        return download_dir
    return fetch_zip(release, download_dir, skip_download=skip_download, verify=verify,
                     progress=progress)


def member_path(name: str, source: Path) -> Optional[str]:
    """Where an archive member goes under ``ADEChallengeData2016/`` (``images/...``,
    ``annotations/...`` or one of the two lists), None for members not used. The path is
    rebuilt from a strict pattern and a checked file name, so no member can write outside."""
    match = _MEMBER.match(name)
    if not match:
        return None
    rel = match.group(1)
    check_id(rel.rsplit("/", 1)[-1], describe(source, name))
    return rel


def _zip_error(source: Path, err: BaseException) -> DataError:
    return DataError(f"cannot read {source} as a zip ({err}): not ADEChallengeData2016.zip or "
                     "a damaged copy; delete it and run again")


def iter_members(source: Path, want: Callable[[str, int], bool]
                 ) -> Iterator[Tuple[str, bytes]]:
    """``(member name, bytes)`` of the regular files of a zip (or of an extracted folder)
    for which ``want(name, size)`` holds; one member in memory at a time, each read up to
    the member size limit (``ENCNET_MAX_MEMBER_BYTES``)."""
    if source.is_dir():
        yield from iter_files(source, lambda n: want(n, (source / n).stat().st_size))
        return
    limit = max_member_bytes()
    try:
        with zipfile.ZipFile(source) as archive:
            for info in archive.infolist():
                if info.is_dir() or not want(info.filename, info.file_size):
                    continue
                if stat.S_ISLNK(info.external_attr >> 16):  # never read a link as data
                    raise DataError(f"{describe(source, info.filename)} is a symbolic link, "
                                    "not a file: the zip is damaged or hostile; fetch it again "
                                    "from the official source")
                with archive.open(info) as f:  # the CRC is checked when the read ends
                    yield info.filename, _read_member(
                        f, info.file_size, describe(source, info.filename), limit)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error,
            NotImplementedError) as err:
        raise _zip_error(source, err) from err


# --------------------------------------------------------------------------- extract, check


def extract(source: Path, out: Path, force: bool, progress: bool) -> int:
    """Every used member of ``source`` into ``out`` (a file already there with the member's
    size is kept unless ``force``: an interrupted run resumes). Returns the files written."""
    written = 0

    def want(name: str, size: int) -> bool:
        rel = member_path(name, source)
        if rel is None:
            return False
        done = out / rel
        return force or not (done.is_file() and done.stat().st_size == size)

    with tqdm(desc=f"extract {source.name}", unit="file", disable=not progress) as bar:
        for name, data in iter_members(source, want):
            write_bytes_atomic(out / member_path(name, source), data)
            written += 1
            bar.update()
    return written


def check_counts(base: Path, release: Release, fix: str, error: type = DataError,
                 where: Callable[[Path], str] = str) -> Dict[str, int]:
    """Every split of ``base`` holds ``release.counts`` images, each with its annotation;
    else ``error`` naming an example (``where(path)``: how to name a file) and ``fix``.
    Returns ``{split: images}``."""
    counts = {}
    for split in ade.SPLITS:
        images, masks = ade.split_files(base, split)
        expected = release.counts[split]
        if len(images) != expected or images != masks:
            folder = ade.SPLIT_DIRS[split]
            lacking = [f"annotations/{folder}/{i}.png" for i in sorted(images - masks)[:1]]
            lacking += [f"images/{folder}/{i}.jpg" for i in sorted(masks - images)[:1]]
            example = f", e.g. {where(base / lacking[0])} is missing" if lacking else ""
            raise error(f"{where(base)}: {split} has {len(images)} images and {len(masks)} "
                        f"annotations, {expected} of each expected{example}; {fix}")
        counts[split] = expected
    return counts


def check_pairs(base: Path, fix: str, progress: bool,
                where: Callable[[Path], str] = str) -> None:
    """Every image and its annotation have one size (image header only) and labels
    0..150; a failure names the file (``where(path)``) and ends with ``fix``."""
    pairs = []
    for split in ade.SPLITS:
        folder = ade.SPLIT_DIRS[split]
        pairs += [(base / "images" / folder / f"{i}.jpg",
                   base / "annotations" / folder / f"{i}.png")
                  for i in sorted(ade.split_files(base, split)[0])]
    for image_path, mask_path in tqdm(pairs, desc="check pairs", unit="pair",
                                      disable=not progress):
        image_name, mask_name = where(image_path), where(mask_path)
        try:
            with open_image(image_path, image_name) as img:
                width, height = img.size
            raw = load_mask(mask_path, mask_name)
            if raw.shape != (height, width):
                raise DataError(f"image {image_name} is {height}x{width} (HxW) but its "
                                f"annotation {mask_name} is {raw.shape[0]}x{raw.shape[1]}")
            ade.check_raw_labels(raw, mask_name)
        except DataError as err:
            raise DataError(f"{err}; {fix}") from err
        except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for a bad header
            raise DataError(f"corrupt or unreadable image file {image_name}: {err}; "
                            f"{fix}") from err


def check_object_info(base: Path) -> None:
    """Warn when ``objectInfo150.txt`` names the 150 classes otherwise (another release)."""
    path = base / "objectInfo150.txt"
    if not path.is_file():
        print(f"note: {path} is missing (it only names the classes; nothing else needs it)")
        return
    names = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        cols = line.split("\t")
        if len(cols) >= 5 and cols[0].strip().isdigit():
            names[int(cols[0])] = cols[-1].split(",")[0].strip()
    wrong = [(i, names.get(i), c) for i, c in enumerate(ade.CLASSES, 1) if names.get(i) != c]
    if wrong:
        print(f"WARNING: {path} differs from the expected class list at {len(wrong)} of the "
              f"150 ids, e.g. {wrong[:3]} (id, found, expected).")


# --------------------------------------------------------------------------- the steps


def already_prepared(root: Path, force: bool) -> Optional[Dict]:
    """The marker's contents when ``root`` is complete (and not ``force``)."""
    marker = root / ade.MARKER
    if force or not marker.is_file() or not (root / ade.BASE_DIR).is_dir():
        return None
    try:
        info = read_marker(marker, "ADE20K")
    except DatasetNotFoundError:
        return None  # damaged: prepare again
    return info if info.get("dataset") == "ade20k" else None


def replace_dir(new: Path, final: Path) -> None:
    """Rename ``new`` to ``final``; a previous ``final`` (``--force``) is removed after."""
    old = final.with_name(final.name + ".old")
    _remove(old)
    if final.exists() or final.is_symlink():
        final.rename(old)
    new.rename(final)
    _remove(old)


def _remove(path: Path) -> None:
    """Delete a folder tree, a file or a link (nothing if it is not there)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def extract_checked(source: Path, root: Path, release: Release, force: bool,
                    progress: bool) -> Dict[str, int]:
    """Extract ``source`` into ``ROOT/ADEChallengeData2016.partial``, check it, rename it to
    ``ROOT/ADEChallengeData2016``; returns ``{split: images}``. A source that fails the
    checks leaves nothing behind; an interruption leaves the partial folder, which the next
    run completes."""
    partial, base = root / PARTIAL, root / ade.BASE_DIR
    if force and partial.exists():
        shutil.rmtree(partial)
    fix = (f"{source} is not a complete, undamaged {release.filename}: delete it and run "
           f"again, or fetch it again from {release.url}")

    def where(path: Path) -> str:  # name the source's member, not the temporary copy
        rel = path.relative_to(partial).as_posix()
        return str(source) if rel == "." else describe(source, f"{ade.BASE_DIR}/{rel}")

    try:
        written = extract(source, partial, force, progress)
        counts = check_counts(partial, release, fix, DataError, where)
        check_pairs(partial, fix, progress, where)
    except DataError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    print(f"extracted {written} files from {source} ({counts['train']} train / "
          f"{counts['val']} val images)")
    replace_dir(partial, base)
    return counts


def write_marker(root: Path, counts: Dict[str, int]) -> Dict:
    """``prepared.json``, written last: it says ``root`` is complete."""
    info = {"dataset": "ade20k", "format": 1, **counts}
    for split, n in ade.EXPECTED_SPLIT_SIZES.items():
        if counts[split] != n:
            print(f"note: {counts[split]} {split} images; the full release gives {n}.")
    write_text_atomic(root / ade.MARKER, json.dumps(info, indent=2) + "\n")
    return info


def prepare_ade20k(root: PathLike, download_dir: Optional[PathLike] = None, *,
                   from_zip: Optional[PathLike] = None, skip_download: bool = False,
                   force: bool = False, verify: bool = True, progress: bool = True,
                   release: Optional[Release] = None) -> Dict:
    """Prepare ADE20K (SceneParsing) at ``root``; returns the contents of ``prepared.json``.

    ``from_zip``: a local ``ADEChallengeData2016.zip`` (else ``download_dir``, default
    ``ROOT/downloads``, is searched for the zip or its extracted folder, then the zip is
    downloaded). ``release`` replaces :data:`OFFICIAL` (URL, checksums, counts), e.g. for a
    mirror or, in the tests, the fabricated miniature.
    """
    root, release = Path(root).expanduser(), release or OFFICIAL
    info = already_prepared(root, force)
    if info is not None:
        print(f"ADE20K already prepared at {root} ({info['train']} train / {info['val']} val "
              "images); nothing to do (--force redoes it).")
        return info
    (root / ade.MARKER).unlink(missing_ok=True)  # the root is incomplete until the end
    base = root / ade.BASE_DIR
    if base.is_dir() and not force:  # unzipped here by hand, or a run stopped after renaming
        print(f"checking the extracted folder {base} in place")
        fix = (f"it looks half-extracted: delete {base} and run again (the zip is extracted "
               "anew), or finish unzipping it")
        counts = check_counts(base, release, fix, DatasetNotFoundError)
        check_pairs(base, f"the file is damaged: {ade.repair_command(root)}", progress)
    else:
        download_dir = Path(download_dir).expanduser() if download_dir else root / "downloads"
        source = find_source(release, download_dir,
                             Path(from_zip).expanduser() if from_zip else None,
                             skip_download=skip_download, verify=verify, progress=progress)
        counts = extract_checked(source, root, release, force, progress)
    check_object_info(base)
    shutil.rmtree(root / PARTIAL, ignore_errors=True)  # left by a run stopped long ago
    info = write_marker(root, counts)
    print(f"ADE20K ready at {root}: {info['train']} train / {info['val']} val images.")
    return info


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..cli import prepare_flags, prepare_parser, run_prepare

    parser = prepare_parser(
        "prepare_ade20k.py",
        "Download (resumable, checksummed) and extract ADE20K's SceneParsing release "
        "(ADEChallengeData2016.zip, 150 classes) for encnet_lite.data.ADE20K.",
        root="data/ade20k")
    parser.add_argument("--from-zip", default=None, metavar="ZIP",
                        help="use this ADEChallengeData2016.zip (fetched by hand) instead of "
                             "downloading")
    parser.add_argument("--manifest", default=None, metavar="JSON",
                        help="describe another copy of the zip (URL, SHA-1/SHA-256, image "
                             "counts), e.g. a mirror or the fabricated miniature's manifest")
    args = parser.parse_args(argv)

    def step() -> Dict:
        release = Release.from_json(args.manifest) if args.manifest else None
        return prepare_ade20k(args.root, from_zip=args.from_zip, release=release,
                              **prepare_flags(args))

    return run_prepare("prepare_ade20k.py", step, args)


if __name__ == "__main__":
    sys.exit(main())
