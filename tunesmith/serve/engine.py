"""Generation: one base model in memory, fine-tuned adapters loaded on demand and switched by name.

LoRA adapters are small: switching is a ``set_adapter`` call, not a model load. Fully fine-tuned
models are whole models and are loaded on their own.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from tunesmith.config import Settings, get_settings
from tunesmith.errors import TunesmithError
from tunesmith.models import finetuned
from tunesmith.models.loading import BaseInfo, ensure_cached, load_model, load_renderer


@dataclass
class Sampling:
    max_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


class Engine:
    def __init__(self, base: str, settings: Settings | None = None, status=None):
        self.settings = settings or get_settings()
        torch.set_num_threads(self.settings.threads)
        self.info = ensure_cached(base, self.settings, status=status)
        self.renderer = load_renderer(self.info)
        self.tokenizer = self.renderer.tokenizer
        self.tokenizer.padding_side = "left"
        self.base_model = load_model(self.info).eval()
        self._adapters: set[str] = set()
        self._full: dict[str, object] = {}
        self._stop_ids = sorted({self.renderer.end_of_turn_id, self.tokenizer.eos_token_id})

    def _select(self, name: str):
        """The model object to run for ``name``, with the right adapter active."""
        resolved = finetuned.resolve(name, self.settings)
        if resolved.base != self.info.name:
            raise TunesmithError(f"{name} is based on {resolved.base}, not on {self.info.name}")
        if resolved.weights is None:
            if self._adapters:
                self.base_model.disable_adapters()
            return self.base_model, resolved
        if resolved.method == "full":
            key = str(resolved.weights)
            if key not in self._full:
                self._full[key] = load_model(BaseInfo(self.info.name, resolved.weights, self.info.end_of_turn)).eval()
            return self._full[key], resolved
        key = _adapter_key(str(resolved.weights))
        if key not in self._adapters:
            self.base_model.load_adapter(str(resolved.weights), adapter_name=key)
            self._adapters.add(key)
        self.base_model.set_adapter(key)
        self.base_model.enable_adapters()
        return self.base_model, resolved

    def _prompt_ids(self, resolved, conversation: list[dict] | str) -> list[int]:
        if isinstance(conversation, str):  # raw prompt (completion-style use)
            return self.tokenizer(conversation, add_special_tokens=True)["input_ids"]
        if resolved.format == "completion":
            # A completion-tuned model answers the raw text of the last user message.
            return self.tokenizer(conversation[-1]["content"], add_special_tokens=True)["input_ids"]
        return self.renderer.encode_prompt(conversation)

    def _inputs(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return {"input_ids": ids, "attention_mask": mask}

    def _generate_kwargs(self, sampling: Sampling) -> dict:
        kwargs = {"max_new_tokens": sampling.max_tokens, "eos_token_id": self._stop_ids,
                  "pad_token_id": self.tokenizer.pad_token_id, "do_sample": sampling.temperature > 0}
        if sampling.stop:  # stops generating at once; the stop text itself is cut off by _cut
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        if sampling.temperature > 0:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        return kwargs

    @torch.inference_mode()
    def generate(self, name: str, conversations: list[list[dict] | str], sampling: Sampling | None = None,
                 batch_size: int = 8) -> list[str]:
        """Answer many conversations (or raw prompts) with one model, batched."""
        sampling = sampling or Sampling()
        model, resolved = self._select(name)
        prompts = [self._prompt_ids(resolved, c) for c in conversations]
        replies: list[str] = []
        for start in range(0, len(prompts), batch_size):
            inputs = self._inputs(prompts[start : start + batch_size])
            out = model.generate(**inputs, **self._generate_kwargs(sampling))
            new = out[:, inputs["input_ids"].shape[1] :]
            replies += [_cut(t, sampling.stop) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
        return replies

    def stream(self, name: str, conversation: list[dict] | str, sampling: Sampling | None = None) -> Iterator[str]:
        """Yield the reply piece by piece as it is generated."""
        from transformers import TextIteratorStreamer

        sampling = sampling or Sampling()
        model, resolved = self._select(name)
        inputs = self._inputs([self._prompt_ids(resolved, conversation)])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = {**inputs, **self._generate_kwargs(sampling), "streamer": streamer}
        worker = threading.Thread(target=torch.inference_mode()(model.generate), kwargs=kwargs, daemon=True)
        worker.start()
        text = ""
        for piece in streamer:
            text += piece
            cut = _cut(text, sampling.stop)
            if len(cut) < len(text):
                yield cut[len(text) - len(piece):]
                break
            yield piece
        worker.join()


def _cut(text: str, stops: tuple[str, ...]) -> str:
    ends = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return text[: min(ends)] if ends else text


def _adapter_key(path: str) -> str:
    return "a" + hashlib.sha1(path.encode()).hexdigest()[:16]
