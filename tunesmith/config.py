"""Settings, read once from the environment (prefix ``TUNESMITH_``)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


# The base models of OpenAI's fine-tuning docs, current and legacy: what migrating scripts name.
OPENAI_MODEL_NAMES = ("gpt-4o-mini-2024-07-18", "gpt-4o-mini", "gpt-4.1-mini-2025-04-14", "gpt-4.1-mini",
                      "gpt-4.1-nano-2025-04-14", "gpt-4.1-nano", "gpt-3.5-turbo", "gpt-3.5-turbo-0125",
                      "babbage-002", "davinci-002", "ada", "babbage", "curie", "davinci")

LauncherSetting = Literal["local", "ray"]  # where job processes run (jobs/launcher.py)

# "auto": bf16 autocast where the hardware multiplies bf16 natively, fp32 elsewhere (train/precision.py).
PrecisionSetting = Literal["auto", "bf16", "fp32"]


def _usable_cpus() -> int:
    """CPUs this process may run on: a container or taskset may allow fewer than the machine has, and
    more threads than those only contend for them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNESMITH_")

    home: Path = Field(default_factory=lambda: Path.home() / ".tunesmith")
    org: str = "local"
    # The embedded model that learns best on the quality suite (README: "The default is the model that learns best").
    # Gemma 3 270M copies unseen names and words into its answers where SmolLM2's tokenizer re-spells them.
    default_model: str = "gemma-3-270m"
    # OpenAI model names → local base models, so that scripts written for OpenAI run unchanged.
    # None: each of OPENAI_MODEL_NAMES stands for default_model; {} (TUNESMITH_MODEL_ALIASES='{}'): none.
    model_aliases: dict[str, str] | None = None
    threads: int = Field(default_factory=_usable_cpus)
    precision: PrecisionSetting = "auto"
    database_url: str | None = None  # default: SQLite file under home
    # The server's limits on what a client sends (see the README's "Limits").
    max_upload_bytes: int = 512 * 1024 * 1024  # one uploaded file, as at OpenAI
    max_body_bytes: int = 1024 * 1024  # any other request body
    max_queued_requests: int = 128  # generation requests waiting or running per base model; past it, 429
    # Serving (serve/): answers decoded together per base model, prompt tokens read per scheduler turn,
    # and the resident LoRA adapters per base model (an LRU: by count and by bytes), full models kept loaded.
    max_batch_size: int = 64
    prefill_tokens: int = 512
    max_loras: int = 64
    max_lora_bytes: int = 4 * 1024**3
    max_full_models: int = 2
    project_max_bytes: int = 20 * 1024**3  # uploaded files a project may keep
    project_max_queued_jobs: int = 20  # jobs a project may have waiting (validating or queued)
    # Access: without keyless, every /v1 request needs a key; keyless serves one local user on loopback only.
    keyless: bool = False
    host: str = "127.0.0.1"  # the address `tunesmith serve` binds
    allowed_hosts: str = ""  # comma-separated Host header names; empty: the bound host and loopback names
    max_running_jobs: int = 1  # jobs training at once; queued ones are taken round-robin across projects
    # On shutdown, running jobs get this long to finish their step and write a checkpoint.
    shutdown_grace_seconds: float = 30.0
    # Scaling out (the README's "Scaling out"). Processes per job (torchrun ranks on one machine): this
    # default, or a job's metadata key nproc_per_node, at most max_nproc_per_node.
    nproc_per_node: int = Field(default=1, ge=1)
    max_nproc_per_node: int = Field(default=8, ge=1)
    launcher: LauncherSetting = "local"
    # launcher "ray": the cluster's Jobs API (its dashboard address; None: Ray's RAY_ADDRESS), the Python
    # that runs tunesmith on its nodes, and what each job process reserves there.
    ray_address: str | None = None
    ray_python: str = "python"
    ray_cpus_per_process: float = 1.0
    ray_gpus_per_process: float = 0.0

    @property
    def aliases(self) -> dict[str, str]:
        if self.model_aliases is None:
            return dict.fromkeys(OPENAI_MODEL_NAMES, self.default_model)
        return self.model_aliases

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def files_dir(self) -> Path:
        return self.home / "files"

    @property
    def base_cache_dir(self) -> Path:
        return self.home / "base"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def enforce_offline() -> None:
    """tunesmith never reaches a model hub: everything it loads is local."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def quiet_libraries() -> None:
    """The CLI shows its own progress; the libraries' bars and deprecation chatter only add noise."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\.")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"peft\.")
