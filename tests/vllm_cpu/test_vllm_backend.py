"""The vllm backend: pure helpers here, and the real VLLMBackend run in the vllm venv (a subprocess; the
main venv cannot import vllm), compared with transformers' greedy output and teacher-forced log-probs."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from inpars_ray.errors import ConfigError
from inpars_ray.models.backends.vllm_backend import VLLMConfig, chosen_logprobs, newline_cut
from tests.vllm_cpu.hf_reference import greedy, prompts_from_bundled, teacher_forced
from tests.vllm_cpu.vllm_env import requires_vllm_venv, run_in_vllm_venv

MAX_NEW = 24
ATOL = 1e-5


def test_newline_cut_uses_decoded_text():
    vocab = {1: "ab", 2: " c", 3: "\n", 4: "d", 5: "x\ny", 6: "\xe2", 7: "\x80"}
    decode = lambda ids: "".join(vocab[i] for i in ids)  # noqa: E731
    assert newline_cut(decode, [1, 2, 3, 4]) == 2
    assert newline_cut(decode, [1, 5, 4]) == 1
    assert newline_cut(decode, [1, 2, 4]) == 3
    assert newline_cut(decode, []) == 0


def test_chosen_logprobs_reads_the_generated_token_not_the_top_candidate():
    lp = lambda v, r: SimpleNamespace(logprob=v, rank=r)  # noqa: E731
    # position 1: token 9 was sampled although 7 was the top-1 candidate
    entries = [{5: lp(-0.1, 1)}, {7: lp(-0.2, 1), 9: lp(-2.5, 4)}]
    assert chosen_logprobs([5, 9], entries) == [-0.1, -2.5]
    # ray.data.llm rows: dicts, possibly string keys
    rows = [{"5": {"logprob": -0.1, "rank": 1}}, {"9": {"logprob": -2.5, "rank": 4}}]
    assert chosen_logprobs([5, 9], rows) == [-0.1, -2.5]
    with pytest.raises(KeyError):
        chosen_logprobs([6], [{5: lp(-0.1, 1)}])


def test_config_validation_and_passthrough():
    cfg = VLLMConfig(tensor_parallel_size=4, gpu_memory_utilization=0.8, engine_kwargs={"swap_space": 2})
    kw = cfg.llm_kwargs()
    assert kw["tensor_parallel_size"] == 4 and kw["gpu_memory_utilization"] == 0.8 and kw["swap_space"] == 2
    assert "max_model_len" not in kw
    with pytest.raises(ConfigError):
        VLLMConfig(tensor_parallel_size=0)
    with pytest.raises(ConfigError):
        VLLMConfig(gpu_memory_utilization=1.5)


@pytest.mark.vllm
@requires_vllm_venv
def test_vllm_backend_matches_transformers(tmp_path):
    from inpars_ray.testing.tiny_lm import tiny_lm_path

    model = str(tiny_lm_path())
    prompts = prompts_from_bundled(6)
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    script = __import__("pathlib").Path(__file__).with_name("run_vllm_backend.py")
    run_in_vllm_venv(script, model, str(tmp_path / "prompts.json"), str(tmp_path / "out.json"), "--processor")
    out = json.loads((tmp_path / "out.json").read_text())

    # greedy: same first line as transformers, log-probs equal to a teacher-forced forward pass
    *gens, too_long = out["greedy"]
    assert any(g["text"] for g in gens)
    for prompt, gen in zip(prompts, gens, strict=True):
        ref = greedy(model, prompt, MAX_NEW)
        assert gen["error"] is None
        assert gen["text"] == ref.text
        assert gen["token_logprobs"] == pytest.approx(ref.logprobs, abs=ATOL)
    assert too_long["error"] is not None and too_long["text"] == ""

    # sampling: the reported log-prob is that of the sampled token, also where it was not the top-1
    off_top = 0
    for prompt, row in zip(prompts, out["sampled"], strict=True):
        assert row["error"] is None
        assert row["token_logprobs"] == pytest.approx(teacher_forced(model, prompt, row["ids"]), abs=ATOL)
        off_top += len(row["off_top"])
    assert off_top > 0, "sampling never left the top-1 token: the chosen-token check was not exercised"

    # the ray.data.llm processor returns the same first lines and log-probs
    for gen, row in zip(gens, out["processor"], strict=True):
        assert row["text"] == gen["text"]
        assert row["token_logprobs"] == pytest.approx(gen["token_logprobs"], abs=ATOL)

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    t = out["tokenizer"]
    ids = tok(t["text"], add_special_tokens=False)["input_ids"]
    assert t["count"] == len(ids)
    assert t["text"].startswith(t["truncated"]) and len(tok(t["truncated"], add_special_tokens=False)["input_ids"]) <= 7
