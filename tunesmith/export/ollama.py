"""``ollama``: the GGUF file and a ``Modelfile`` for ``ollama create NAME -f Modelfile``.

Ollama renders prompts with Go templates, not the model's Jinja template, so the Modelfile's
TEMPLATE is tunesmith's ChatML written in Go's template language, and the export checks it
against the model's own template: both must render the same text for a few conversations (the
Python twin below mirrors the Go template line for line). Ollama passes every system message as
``.System`` and keeps it in ``.Messages`` too, so the template writes ``.System`` once and skips
system messages in the loop. A BOS the model's template writes (Gemma's) is left to Ollama, which
writes it where the GGUF says ``add_bos_token``. With no system message, tunesmith's template falls back to the
model's default one (SmolLM2's), and so does this one; SYSTEM sets the training data's system
prompt as the default instead, when the data had one. Tool definitions are not rendered.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tunesmith.export import ExportError, file_stem
from tunesmith.export.gguf_file import model_file_name, write_model_gguf
from tunesmith.export.source import Source
from tunesmith.models.chatml import IM_END, IM_START

MODELFILE = "Modelfile"

_CHAT_TEMPLATE = (
    "{{- if .Messages }}\n"
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n"
    "DEFAULT{{ end }}\n"
    "{{- range .Messages }}\n"
    '{{- if ne .Role "system" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}\n'
    "{{- end }}<|im_start|>assistant\n"
    "{{ else }}\n"
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n"
    "DEFAULT{{ end }}\n"
    "{{- if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
    "{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"
)
_COMPLETION_TEMPLATE = "{{ .Prompt }}{{ .Response }}"
_PROBES = ([{"role": "user", "content": "Hi"}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
           [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"}])


def export_ollama(source: Source, out: Path, quant: str, refer_to: Path, progress) -> list[str]:
    renderer = source.renderer()
    text = modelfile(source, renderer, model_file_name(source, quant))  # refused before the slow part if it must be
    write_model_gguf(source, out / model_file_name(source, quant), quant, progress, fmt="ollama")
    (out / MODELFILE).write_text(text)
    return [f"ollama create {ollama_name(source.name)} -f {refer_to / MODELFILE}",
            f"ollama run {ollama_name(source.name)}"]


def ollama_name(model: str) -> str:
    """A model name as Ollama takes one (lower case, no colons: a colon starts a tag)."""
    return file_stem(model).lower()


def modelfile(source: Source, renderer, gguf_name: str) -> str:
    stops = [renderer.tokenizer.convert_ids_to_tokens(i) for i in renderer.stop_ids]
    lines = [f"# {source.name}, exported by tunesmith. Load it with: ollama create {ollama_name(source.name)} "
             f"-f {MODELFILE}", f"FROM ./{gguf_name}"]
    if source.format == "completion":  # trained on raw prompt → completion: no chat markup
        lines.append(f'TEMPLATE """{_COMPLETION_TEMPLATE}"""')
    else:
        lines.append(f'TEMPLATE """{chat_template(source, renderer)}"""')
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in stops]
    lines.append("PARAMETER temperature 0")  # greedy, as `tunesmith chat` answers by default
    if source.system and source.format != "completion":
        lines.append(f'SYSTEM """{_triple_quotable(source, source.system)}"""')
    return "\n".join(lines) + "\n"


def chat_template(source: Source, renderer) -> str:
    """The Go template; ExportError unless it renders as the model's own chat template does."""
    template = renderer.tokenizer.chat_template or ""
    bos = runtime_bos(source, renderer)
    default = default_system(renderer, bos)
    for messages in _PROBES:
        own = renderer.render(messages, generation_prompt=True).removeprefix(bos)
        if IM_START not in template or own != chatml(messages, default):
            raise ExportError(source.name, "ollama", "its chat template is not the ChatML that the Modelfile's "
                              "TEMPLATE writes; export --format gguf and write a Modelfile for it")
    fallback = "" if default is None else "{{ else }}<|im_start|>system\n{{ " + _go_string(default) + " }}<|im_end|>\n"
    return _triple_quotable(source, _CHAT_TEMPLATE.replace("DEFAULT", fallback))


def chatml(messages: list[dict], default_system: str | None) -> str:
    """What the Go template renders for ``messages`` (and Ollama's ``.System``, all system messages joined)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system") or default_system
    text = f"{IM_START}system\n{system}{IM_END}\n" if system else ""
    text += "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages if m["role"] != "system")
    return text + f"{IM_START}assistant\n"


def runtime_bos(source: Source, renderer) -> str:
    """The BOS that Ollama writes itself (the GGUF says ``add_bos_token``), so that the Modelfile's
    template must not write it where the model's own does (Gemma's); "" where Ollama writes none."""
    from gguf import GGUFReader

    bos, base = renderer.tokenizer.bos_token, source.base_gguf()
    field = GGUFReader(base).fields.get("tokenizer.ggml.add_bos_token") if bos and base else None
    return bos if field is not None and field.contents() else ""


def default_system(renderer, bos: str = "") -> str | None:
    """The system prompt the model's template writes when a conversation has none (SmolLM2's), if any."""
    text = renderer.render([{"role": "user", "content": "Hi"}], generation_prompt=True).removeprefix(bos)
    found = re.match(re.escape(f"{IM_START}system\n") + "(.*?)" + re.escape(IM_END), text, re.S)
    return found.group(1) if found else None


def _go_string(text: str) -> str:
    # A JSON string without \u escapes of surrogates (ensure_ascii=False) is a valid Go string literal.
    return json.dumps(text, ensure_ascii=False)


def _triple_quotable(source: Source, text: str) -> str:
    if '"""' in text:
        raise ExportError(source.name, "ollama", 'a Modelfile cannot quote text that holds """ (its system prompt '
                          "or template)")
    return text
