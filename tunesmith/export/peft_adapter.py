"""``peft``: the LoRA adapter as PEFT saves it, for ``PeftModel.from_pretrained`` and vLLM's ``--lora-modules``.

The adapter was trained on tunesmith's copy of the base: the bundled GGUF de-quantised, whose
weights differ slightly from the Hub's originals. ``include_base`` writes that exact base beside
the adapter (``base/``) and points the adapter at it; without it the adapter names the Hub model
it came from, which answers close to, not exactly like, tunesmith.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tunesmith.export import ExportError
from tunesmith.export.hf_model import write_hf
from tunesmith.export.source import ADAPTER_CONFIG, ADAPTER_WEIGHTS, Source


def export_peft(source: Source, out: Path, include_base: bool, refer_to: Path, progress) -> list[str]:
    adapter = source.adapter("peft", instead="hf")
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((adapter / ADAPTER_CONFIG).read_text())
    if include_base:
        write_hf(Source(source.info.name, source.info, source.base, None, sources_dir=source.sources_dir),
                 out / "base", progress)
        base = str(refer_to / "base")
    elif source.info.added_token_ids:
        raise ExportError(source.name, "peft", f"its base {source.info.name} has tokens that tunesmith added "
                          "(the chat template's), which no published base has; add --base to export it too")
    else:
        base = source.base.hub_id or str(source.info.path)
    config["base_model_name_or_path"] = base
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    shutil.copyfile(adapter / ADAPTER_WEIGHTS, out / ADAPTER_WEIGHTS)
    return [f'PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), "{refer_to}")',
            f"vllm serve {base} --enable-lora --lora-modules {source.name}={refer_to}"]
