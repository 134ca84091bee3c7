"""The work dir: one sub-directory per step, committed atomically, with a marker saying which config made it.

Paths go through Hadoop's FileSystem API (the JVM's), so the work dir may be a local or shared POSIX
path, hdfs:// on EMR, or anything else Spark writes to. A step's output is written to `NAME.tmp`,
its marker added, then the directory is renamed to `NAME`: a killed job leaves a `.tmp` (ignored and
removed by the next run) or a complete step, never a half one that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

MARKER = "_MLTRAIN_STEP.json"


def step_key(previous: str, name: str, settings: Any) -> str:
    """The identity of a step's output: the previous step's key, the step's name and its settings.
    A changed setting changes this key and every later one, so those steps run again."""
    blob = json.dumps([previous, name, settings], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class WorkDir:
    """Small file operations on the work dir through the JVM's Hadoop FileSystem."""

    def __init__(self, spark: SparkSession, root: str) -> None:
        jvm = spark.sparkContext._jvm
        self._jvm = jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()
        self.root = root.rstrip("/")
        self._fs = self._path(self.root).getFileSystem(self._conf)
        if self._fs.getUri().getScheme() == "file" and not self._path(self.root).isAbsolute():
            # the JVM resolves a relative path against the directory it started in, which is not the driver's
            # current one once the process has changed directory (a second run in the same process)
            self.root = os.path.abspath(self.root)
        self._fs.mkdirs(self._path(self.root))

    def _path(self, p: str) -> Any:
        return self._jvm.org.apache.hadoop.fs.Path(p)

    def path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def exists(self, p: str) -> bool:
        return bool(self._fs.exists(self._path(p)))

    def delete(self, p: str) -> None:
        self._fs.delete(self._path(p), True)

    def write_text(self, p: str, text: str) -> None:
        out = self._fs.create(self._path(p), True)
        try:
            out.write(bytearray(text.encode("utf-8")))
        finally:
            out.close()

    def read_text(self, p: str) -> str:
        stream = self._fs.open(self._path(p))
        try:
            return str(self._jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8"))
        finally:
            stream.close()

    def list_names(self, p: str) -> list[str]:
        return sorted(str(s.getPath().getName()) for s in self._fs.listStatus(self._path(p)))

    def rename(self, src: str, dst: str) -> None:
        if not self._fs.rename(self._path(src), self._path(dst)):
            raise OSError(f"cannot rename {src} -> {dst}")

    def copy_to_local(self, src: str, dst: str) -> None:
        """Copy to the driver's local `dst`, taken relative to the driver's current directory (not the JVM's)."""
        self._fs.copyToLocalFile(False, self._path(src), self._path(os.path.abspath(dst)), True)

    # ------------------------------------------------------------------ steps

    def done(self, name: str, key: str) -> dict[str, Any] | None:
        """The marker of a committed step made with `key`, or None (missing, or made by another config)."""
        marker = f"{self.path(name)}/{MARKER}"
        if not self.exists(marker):
            return None
        try:
            data = json.loads(self.read_text(marker))
        except ValueError:
            return None
        return data if data.get("key") == key else None

    def tmp(self, name: str) -> str:
        """A fresh temp dir for the step's output (a stale one from a killed run is removed)."""
        tmp = self.path(f"{name}.tmp")
        self.delete(tmp)
        return tmp

    def commit(self, name: str, key: str, info: dict[str, Any]) -> None:
        """Marker into the temp dir, then one rename: the step is complete or absent."""
        tmp, final = self.path(f"{name}.tmp"), self.path(name)
        self.write_text(f"{tmp}/{MARKER}", json.dumps({"key": key, **info}, indent=1, sort_keys=True))
        self.delete(final)
        self.rename(tmp, final)
