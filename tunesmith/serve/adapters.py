"""The resident LoRA adapters of one base model: an LRU with a limit by count and by bytes.

An adapter is read from disk on its first request (off the scheduler thread: the batch goes on
while it loads), given a slot number, and installed into the wrapped layers (``lora.MultiLoRA``).
From then on a request for it costs nothing but its slot number in the routing. A request pins its
adapter until it is answered, so only adapters nobody is using are evicted, least recently used
first. Slot numbers are never reused: a stale number cannot reach another adapter's weights.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from tunesmith.errors import TunesmithError
from tunesmith.serve.lora import AdapterWeights, MultiLoRA

ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
TOKENS_SUFFIX = ".token_adapter.trainable_tokens_delta"


@dataclass
class _Resident:
    slot: int
    nbytes: int
    pins: int = 0


@dataclass
class _Loading:
    """One adapter's reader lock and how many requests hold or wait for it (the entry goes with the last)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


class AdapterCache:
    def __init__(self, lora: MultiLoRA, max_count: int, max_bytes: int):
        self.lora, self.max_count, self.max_bytes = lora, max_count, max_bytes
        self._resident: OrderedDict[str, _Resident] = OrderedDict()  # path → slot, least recent first
        self._lock = threading.Lock()
        self._loading: dict[str, _Loading] = {}  # one reader per adapter; others wait for it
        self._next_slot = 0
        self.load_seconds: list[float] = []  # cold loads: read from disk and install, for the benchmark

    def acquire(self, path: Path) -> int:
        """The slot of the adapter at ``path``, loaded if it is not resident, and pinned: call ``release``
        when the request that asked for it is answered."""
        key = str(path)
        with self._lock:
            loading = self._loading.setdefault(key, _Loading())
            loading.users += 1
        try:
            with loading.lock:
                return self._pin_or_load(key, path)
        finally:
            with self._lock:
                loading.users -= 1
                if not loading.users:
                    del self._loading[key]

    def _pin_or_load(self, key: str, path: Path) -> int:
        with self._lock:
            if key in self._resident:
                resident = self._resident[key]
                self._resident.move_to_end(key)
                resident.pins += 1
                return resident.slot
        started = time.perf_counter()
        weights = read_adapter(path, self.lora)
        with self._lock:
            slot, self._next_slot = self._next_slot, self._next_slot + 1
            self.lora.install(slot, weights)
            self._resident[key] = _Resident(slot, weights.nbytes, pins=1)
            self._evict()
        self.load_seconds.append(time.perf_counter() - started)
        return slot

    def release(self, path: Path) -> None:
        with self._lock:
            resident = self._resident.get(str(path))
            if resident is not None:
                resident.pins -= 1
                self._evict()

    def unload(self, path: Path) -> None:
        """Forget the adapter (its model was deleted); a request still using it keeps its answer going."""
        with self._lock:
            resident = self._resident.get(str(path))
            if resident is not None and resident.pins == 0:
                del self._resident[str(path)]
                self.lora.remove(resident.slot)

    def resident(self) -> list[str]:
        with self._lock:
            return list(self._resident)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(r.nbytes for r in self._resident.values())

    def _evict(self) -> None:
        """Drop cold adapters, least recently used first, until the limits hold (pinned ones stay: the
        limits may be passed while more adapters than they allow are in use at once)."""
        total = sum(r.nbytes for r in self._resident.values())
        for key, resident in list(self._resident.items()):
            if len(self._resident) <= self.max_count and total <= self.max_bytes:
                return
            if resident.pins == 0:
                del self._resident[key]
                self.lora.remove(resident.slot)
                total -= resident.nbytes


def read_adapter(path: Path, lora: MultiLoRA) -> AdapterWeights:
    """A PEFT LoRA adapter directory as per-layer weights for ``lora``'s wrapped layers."""
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
        tensors = load_file(path / ADAPTER_FILE)
    except (OSError, ValueError) as exc:
        raise TunesmithError(f"cannot read the adapter in {path}: {exc}") from exc
    unsupported = [k for k in ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern") if config.get(k)]
    if config.get("peft_type") != "LORA" or config.get("bias", "none") != "none" or unsupported:
        raise TunesmithError(f"{path}: only plain LoRA adapters can be served (found "
                             f"{config.get('peft_type')}, bias {config.get('bias')}, {', '.join(unsupported)})")
    r, alpha = config["r"], config["lora_alpha"]
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    lora_weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    tokens = None
    for key, tensor in tensors.items():
        name = key.removeprefix(PEFT_PREFIX)
        if name.endswith(".lora_A.weight"):
            module = name.removesuffix(".lora_A.weight")
            if module not in lora.layers:
                raise TunesmithError(f"{path}: the adapter changes {module}, which this base model does not have")
            b = tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"]
            lora_weights[module] = (tensor.float().contiguous(), (b.float() * scale).contiguous())
        elif name.endswith(TOKENS_SUFFIX):
            ids = [i for ids in (config.get("trainable_token_indices") or {}).values() for i in ids]
            order = sorted(range(len(ids)), key=ids.__getitem__)
            tokens = (torch.tensor(sorted(ids)), tensor.float()[order].contiguous())
    nbytes = sum(t.numel() * t.element_size() for pair in lora_weights.values() for t in pair)
    if tokens is not None:
        nbytes += tokens[1].numel() * tokens[1].element_size()
    return AdapterWeights(lora_weights, tokens, nbytes)
