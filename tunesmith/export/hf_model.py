"""``hf``: one Hugging Face model directory, loadable by ``AutoModelForCausalLM.from_pretrained`` and vLLM.

An adapter is merged into its base; a fully fine-tuned model or a base model is written as it is.
The weights stay fp32, the precision tunesmith trains and serves in, so the export answers as
tunesmith does. The tokenizer carries the chat template, and the generation config stops at the
end-of-turn token as tunesmith's chat does.
"""

from __future__ import annotations

from pathlib import Path


def export_hf(source, out: Path, refer_to: Path, progress) -> list[str]:
    write_hf(source, out, progress)
    return [f'AutoModelForCausalLM.from_pretrained("{refer_to}")  # transformers; tokenizer: AutoTokenizer',
            f"vllm serve {refer_to}"]


def write_hf(source, out: Path, progress) -> None:
    progress("merging the adapter into the base" if source.kind == "lora" else "loading the model", 0, 3)
    model = source.merged_model()
    renderer = source.renderer()
    model.generation_config = generation_config(model.generation_config, renderer)
    progress("writing safetensors", 1, 3)
    model.save_pretrained(out)
    progress("writing the tokenizer", 2, 3)
    renderer.tokenizer.save_pretrained(out)
    progress("written", 3, 3)


def generation_config(config, renderer):
    """The model's generation config, stopping where tunesmith's chat stops: the end of a turn (and of a text)."""
    config = config.__class__.from_dict(config.to_dict())
    stops = renderer.stop_ids
    config.eos_token_id = stops[0] if len(stops) == 1 else stops
    config.pad_token_id = renderer.tokenizer.pad_token_id
    return config
