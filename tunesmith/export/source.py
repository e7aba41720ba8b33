"""What an export reads: a model's weights, the base model they sit on, and how it talks.

A model is one of three kinds: a base model (no weights of its own), a LoRA adapter over a base
(LoRA and DPO jobs, and their checkpoints), or a whole fine-tuned model (``--method full``). The
kind is read from the weights directory itself, since that is what the files are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import Settings, get_settings
from tunesmith.export import ExportError
from tunesmith.models.finetuned import ResolvedModel
from tunesmith.models.loading import BaseInfo, ensure_cached, load_model, load_renderer
from tunesmith.models.registry import BaseModel, resolve_base
from tunesmith.train.run import job_data

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


@dataclass
class Source:
    name: str  # the model's name as asked for: a base model, an ft: model or one of its checkpoints
    info: BaseInfo  # the cached base model (config, tokenizer with the chat template, end-of-turn token)
    base: BaseModel  # where that base came from (its GGUF file, its Hugging Face id)
    weights: Path | None  # adapter or whole-model directory; None for the base model itself
    format: str = "chat"  # what it was trained on: chat (and pairs), or completion (raw prompt → text)
    system: str | None = None  # the system prompt most of its training examples had, if they had one
    sources_dir: Path | None = None  # where bundled bases are assembled (default: the settings' base cache)

    @property
    def kind(self) -> str:
        if self.weights is None:
            return "base"
        return "lora" if (self.weights / ADAPTER_CONFIG).exists() else "full"

    def adapter(self, fmt: str, instead: str) -> Path:
        """The adapter directory; for a model without one, an ExportError that says which format to use."""
        if self.kind != "lora":
            what = "a base model" if self.kind == "base" else "fully fine-tuned (it has no adapter)"
            raise ExportError(self.name, fmt, f"it is {what}; use --format {instead}")
        return self.weights

    def renderer(self):
        return load_renderer(self.info)

    def base_gguf(self) -> Path | None:
        """The GGUF file the base model was converted from; None for a base given as an HF directory."""
        path = self.base.locate(self.sources_dir or get_settings().base_cache_dir / "_sources")
        return path if path.suffix == ".gguf" else None

    def config(self):
        """The model's Hugging Face config, read without its weights."""
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(self.weights if self.kind == "full" else self.info.path)

    def merged_model(self):
        """The model as one set of weights (fp32): the base, the whole model, or base + adapter merged."""
        if self.kind == "base":
            return load_model(self.info).eval()
        if self.kind == "full":
            return load_model(BaseInfo(self.info.name, self.weights, self.info.end_of_turn)).eval()
        from peft import PeftModel

        return PeftModel.from_pretrained(load_model(self.info), str(self.weights)).merge_and_unload().eval()


def source_of(resolved: ResolvedModel, settings: Settings | None = None, status=None) -> Source:
    """The export source of a model the registry resolved (jobs/registry.py): its base converted if need be."""
    settings = settings or get_settings()
    info = ensure_cached(resolved.base, settings, status=status)
    system = None
    if resolved.weights is not None and resolved.weights.is_relative_to(settings.jobs_dir):
        # jobs/<job_id>/model or jobs/<job_id>/checkpoints/step-N: the job directory holds what its data was like.
        job_dir = settings.jobs_dir / resolved.weights.relative_to(settings.jobs_dir).parts[0]
        system = job_data(job_dir).get("system")
    return Source(resolved.name, info, resolve_base(resolved.base), resolved.weights, resolved.format, system,
                  settings.base_cache_dir / "_sources")
