"""Stage keys from content (#8.6): a stage reruns exactly when its config or an input's content changed.

generate -> filter -> mine with the index beside it, and retrieve -> evaluate: an unchanged rerun redoes
nothing; more negatives rerun mine only; another filter setting reruns filter and, through the filter's new
manifest, mine; a folder moved elsewhere (same content) is still complete.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from inpars_ray.io.catalog import resolve
from inpars_ray.io.manifest import read_manifest
from inpars_ray.models.backends.base import GenerationParams
from inpars_ray.stages import index, retrieve
from inpars_ray.stages.evaluate import evaluate_files
from inpars_ray.stages.filter import FilterConfig, run_filter
from inpars_ray.stages.generate import GenerateConfig, GenerateResources, run_generate
from inpars_ray.stages.mine import MineConfig, run_mine
from inpars_ray.testing.tiny_lm import tiny_lm_path


def _stamps(root: Path) -> dict[str, str]:
    out = {stage: (read_manifest(root / stage) or {}).get("finished_at", "") + str(
        (root / stage / "manifest.json").stat().st_mtime_ns) for stage in ("index", "generate", "filter", "mine")}
    out["retrieve"] = str((root / "bm25" / "run.test.trec.manifest.json").stat().st_mtime_ns)
    out["evaluate"] = str((root / "bm25" / "eval.json").stat().st_mtime_ns)
    return out


def _run(root: Path, negatives: int = 1, keep: int = 8) -> dict[str, str]:
    collection = resolve("bundled/tiny-science")
    index.build_index(collection, root / "index")
    run = root / "bm25" / "run.test.trec"
    retrieve.retrieve_to_file(collection, root / "index", run, retrieve.RetrieveConfig(k=20, bm25=retrieve.BM25Config(threads=1)))
    evaluate_files(collection, str(run), "test", ["nDCG@10"], summary_path=str(root / "bm25" / "eval.json"))
    run_generate(collection, root / "generate",
                 GenerateConfig(model=str(tiny_lm_path()), num_docs=12, seed=2,
                                generation=GenerationParams(max_new_tokens=8, seed=2)),
                 GenerateResources(batch_size=6))
    run_filter(root / "generate", collection, root / "filter", FilterConfig(keep_top_k=keep, min_tokens=1,
                                                                           shuffle_partitions=1))
    run_mine(root / "filter", collection, root / "index", root / "mine",
             MineConfig(depth=20, negatives=negatives, shuffle_partitions=1, bm25=retrieve.BM25Config(threads=1,
                                                                                                remove_query=False)))
    return _stamps(root)


def test_changed_inputs_rerun_exactly_the_stages_downstream(ray_session, tmp_path: Path):
    root = tmp_path / "run"
    first = _run(root)
    assert _run(root) == first  # unchanged: nothing reruns

    more = _run(root, negatives=3)
    assert {s for s in first if first[s] != more[s]} == {"mine"}
    assert read_manifest(root / "mine")["config"]["mine"]["negatives"] == 3

    fewer = _run(root, negatives=3, keep=6)
    assert {s for s in more if more[s] != fewer[s]} == {"filter", "mine"}

    moved = tmp_path / "moved"  # keys are contents, not paths: a moved run is still complete
    shutil.copytree(root, moved)
    before = _stamps(moved)
    assert _run(moved, negatives=3, keep=6) == before
