"""Settings, read once from the environment (prefix ``TUNESMITH_``)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNESMITH_")

    home: Path = Field(default_factory=lambda: Path.home() / ".tunesmith")
    org: str = "local"
    default_model: str = "smollm2-135m-instruct"
    threads: int = Field(default_factory=lambda: os.cpu_count() or 1)
    database_url: str | None = None  # default: SQLite file under home
    max_upload_bytes: int = 512 * 1024 * 1024
    max_running_jobs: int = 1

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
