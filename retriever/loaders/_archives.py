"""Reading a Python package as hostile input: a wheel, an sdist (.tar.gz/.tgz/.tar/.tar.bz2/.tar.xz),
a zip or a source directory, within :class:`~apihelper.retriever.limits.IngestLimits`.

What :mod:`apihelper.retriever.loaders._files` does for one file, this does for a package's
members: the entries are counted before anything is read (a zip's declared member count before
its central directory is loaded; a tar's members and their declared bytes as its one stream is
walked), and each wanted member goes through a bounded reader that never returns more than
``max_member_bytes`` whatever its header claims, read one at a time and not held. A directory's
files go through :func:`~apihelper.retriever.loaders._files.read_bytes` (regular files only, no
symlink out of the root); symlinked folders are not walked. What the files *mean* is
:mod:`apihelper.retriever.loaders.python_pkg`'s job.
"""

from __future__ import annotations

import os
import tarfile
import zipfile
from collections.abc import Callable, Collection, Iterator, Sequence
from functools import partial
from pathlib import Path

from apihelper.retriever.limits import IngestLimits, LimitExceeded
from apihelper.retriever.loaders._files import FileRefused, problem_message, read_bytes
from apihelper.retriever.types import LoadProblem

TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")

# Names first (cheap, counted), then each wanted file through a bounded reader.


def _sort_key(relpath: str) -> tuple[str, ...]:
    return tuple(relpath.split("/"))


def package_names(
    path: Path, limits: IngestLimits, problems: list[LoadProblem], skip_dirs: Collection[str] = ()
) -> list[str]:
    """The ``.py`` paths inside a package ('/'-separated, in load order), entries counted
    against ``limits.max_members``; a directory's hidden folders and ``skip_dirs`` are not
    walked. Raises LimitExceeded, FileRefused (not a package), OSError or an archive error."""
    name = path.name.lower()
    names: list[str] = []
    if path.is_dir():
        seen = 0

        def walk_error(exc: OSError) -> None:
            problems.append(LoadProblem(str(exc.filename or path), problem_message(exc)))

        for folder, dirs, files in os.walk(path, onerror=walk_error):
            seen += len(dirs) + len(files)
            if seen > limits.max_members:
                raise LimitExceeded(limits, "max_members", f"more than {limits.max_members} directory entries")
            # Hidden and test/build folders hold no public modules; symlinked folders are not
            # followed (inside the root their files are reached anyway; outside, never read).
            dirs[:] = sorted(
                d
                for d in dirs
                if not d.startswith(".") and d not in skip_dirs and not os.path.islink(os.path.join(folder, d))
            )
            rel_folder = Path(folder).relative_to(path)
            for file in files:
                if file.endswith(".py") and not file.startswith("."):
                    names.append((rel_folder / file).as_posix())
        return sorted(names, key=_sort_key)
    if name.endswith((".whl", ".zip")):
        declared = _zip_declared_entries(path)
        if declared is not None and declared > limits.max_members:
            raise LimitExceeded(limits, "max_members", f"an archive of {declared} members")
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            if len(infos) > limits.max_members:
                raise LimitExceeded(limits, "max_members", f"an archive of {len(infos)} members")
            return [i.filename for i in infos if not i.is_dir() and i.filename.endswith(".py")]
    if name.endswith(TAR_SUFFIXES):
        declared_bytes = 0
        with tarfile.open(path) as tar:
            for count, member in enumerate(tar, start=1):
                if count > limits.max_members:
                    raise LimitExceeded(limits, "max_members", f"more than {limits.max_members} archive members")
                # A tar is read in one stream: every member's bytes are decompressed to skip it.
                declared_bytes += max(member.size, 0)
                if declared_bytes > limits.max_total_bytes:
                    raise LimitExceeded(
                        limits, "max_total_bytes", f"members of more than {limits.max_total_bytes} bytes"
                    )
                if member.isfile() and member.name.endswith(".py"):
                    names.append(member.name)
                _forget_members(tar)  # keep no headers: only names are needed here
        return names
    raise FileRefused("not a wheel, sdist, zip or directory")


def _forget_members(archive: tarfile.TarFile) -> None:
    """Drop the member headers a TarFile keeps while iterating (iteration goes on from the
    stream's offset), so a tar of many members does not pile them up."""
    archive.members = []  # type: ignore[attr-defined]  # set in TarFile.__init__, not in the stubs


def _zip_declared_entries(path: Path) -> int | None:
    """The member count a zip's end record declares, read before zipfile loads the whole
    central directory (a small file can declare millions of entries)."""
    end_record = getattr(zipfile, "_EndRecData", None)
    if end_record is None:
        return None
    with path.open("rb") as handle:
        record = end_record(handle)
    if not record:
        return None
    return int(record[4])


def package_files(path: Path, names: Sequence[str], limits: IngestLimits) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """``(relpath, read)`` for each of ``names`` in archive order; ``read()`` returns the file's
    bytes (at most ``limits.max_member_bytes``) or raises (LimitExceeded, FileRefused, OSError,
    an archive error), and must be called before the next item is taken."""
    wanted = set(names)
    lower = path.name.lower()
    if path.is_dir():
        for relpath in names:
            file = path / relpath
            yield relpath, partial(read_bytes, file, limits, limit="max_member_bytes", root=path)
    elif lower.endswith((".whl", ".zip")):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.filename in wanted and not info.is_dir():
                    yield info.filename, partial(_read_zip_member, archive, info, limits)
    else:
        with tarfile.open(path) as archive:
            for member in archive:
                _forget_members(archive)
                if member.isfile() and member.name in wanted:
                    yield member.name, partial(_read_tar_member, archive, member, limits)


def _read_zip_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limits: IngestLimits) -> bytes:
    cap = limits.max_member_bytes
    if info.file_size > cap:
        raise LimitExceeded(limits, "max_member_bytes", f"a member of {info.file_size} bytes")
    with archive.open(info) as handle:
        data = handle.read(cap + 1)  # never more than the cap, whatever the header claims
    if len(data) > cap:
        raise LimitExceeded(limits, "max_member_bytes", f"a member of more than {cap} bytes")
    return data


def _read_tar_member(archive: tarfile.TarFile, member: tarfile.TarInfo, limits: IngestLimits) -> bytes:
    cap = limits.max_member_bytes
    if member.size > cap:
        raise LimitExceeded(limits, "max_member_bytes", f"a member of {member.size} bytes")
    handle = archive.extractfile(member)
    if handle is None:
        return b""
    with handle:
        return handle.read(cap + 1)[: cap + 1]
