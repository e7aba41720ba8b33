"""tunesmith's ChatML template: given to base models that have none, and used for SmolLM2.

For conversations without tools it renders exactly what SmolLM2's own (GGUF) template renders
(a test holds us to that); unlike that template it also renders ``tools`` and ``tool_calls``,
so tool-use examples keep their calls in the trained text instead of silently losing them.
"""

from __future__ import annotations

IM_START, IM_END = "<|im_start|>", "<|im_end|>"

_TEMPLATE = r"""
{%- if messages and messages[0].role == 'system' -%}
  {%- set system = messages[0].content -%}{%- set rest = messages[1:] -%}
{%- else -%}
  {%- set system = DEFAULT_SYSTEM -%}{%- set rest = messages -%}
{%- endif -%}
BOS
{%- if system is not none or tools -%}
<|im_start|>system
{{ system if system is not none else '' }}
{%- if tools -%}
{{ '\n\n' }}# Tools

You may call one or more functions. Available functions:
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>

To call a function, reply with a JSON object {"name": ..., "arguments": ...} within <tool_call></tool_call> tags.
{%- endif %}<|im_end|>
{% endif -%}
{%- for message in rest -%}
<|im_start|>{{ message.role }}
{{ message.content if message.content is not none else '' }}
{%- if message.tool_calls -%}
{%- for call in message.tool_calls -%}
{%- set fn = call.function if call.function is defined else call -%}
{{ '\n' if not loop.first or message.content else '' }}<tool_call>
{"name": {{ fn.name | tojson }}, "arguments": {{ fn.arguments if fn.arguments is string else fn.arguments | tojson }}}
</tool_call>
{%- endfor -%}
{%- endif -%}
<|im_end|>
{% endfor -%}
{%- if add_generation_prompt -%}
<|im_start|>assistant
{% endif -%}
"""


def chatml_template(default_system: str | None = None, bos: bool = False) -> str:
    """The template text; ``bos`` prefixes the tokenizer's BOS (models that expect one)."""
    system = "none" if default_system is None else _jinja_string(default_system)
    return (
        _TEMPLATE.strip()
        .replace("DEFAULT_SYSTEM", system)
        .replace("BOS", "{{- bos_token -}}" if bos else "")
    )


def _jinja_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
