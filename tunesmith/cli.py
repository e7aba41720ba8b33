"""The ``tunesmith`` command line: models, validate, train, chat, export, serve, jobs, keys, eval, compare."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from tunesmith.config import enforce_offline, get_settings, quiet_libraries
from tunesmith.errors import DataError, TunesmithError
from tunesmith.train.hyper import DEFAULT_PATIENCE

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Fine-tune language models on your own hardware, offline.")
# No emoji codes: a model name like ft:…:local:guard:… must print as it is, not with ":guard:" as 💂.
out = Console(emoji=False)
err = Console(stderr=True, emoji=False)

ModelOpt = Annotated[str, typer.Option("--model", help="Base model name, local HF dir, .gguf file or ft: model.")]


def friendly_errors(fn):
    """User-caused errors print one clear message and exit 1; tracebacks are for bugs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        enforce_offline()
        quiet_libraries()
        try:
            return fn(*args, **kwargs)
        except DataError as exc:
            if exc.report is not None:
                _print_report(exc.report, err)
            else:
                err.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(1) from None
        except TunesmithError as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


@app.command()
@friendly_errors
def models(
    default: Annotated[bool, typer.Option("--default", help="print only the default base model's name")] = False,
) -> None:
    """List base models and fine-tuned models (every project's: this is the server's own store)."""
    from sqlalchemy import select

    from tunesmith.jobs import registry
    from tunesmith.jobs.store import Project, Store
    from tunesmith.models.registry import BUNDLED

    settings = get_settings()
    if default:
        print(settings.default_model)  # plain, for scripts: `tunesmith train … --model "$(tunesmith models --default)"`
        return
    table = Table(title="Base models")
    table.add_column("name", no_wrap=True)
    for col in ("default", "cached", "quality suite (3 seeds)", "description"):
        table.add_column(col)
    for m in BUNDLED.values():
        cached = (settings.base_cache_dir / m.name).exists()
        table.add_row(m.name, "yes" if m.name == settings.default_model else "",
                      "yes" if cached else "no (converted on first use)", m.suite, m.description)
    out.print(table)
    aliased = [name for name, base in settings.aliases.items() if base == settings.default_model]
    also = f"; so do {len(aliased)} OpenAI model names ({', '.join(aliased[:2])}, …)" if aliased else ""
    out.print(f"Jobs that name no base model train {settings.default_model} (TUNESMITH_DEFAULT_MODEL changes "
              f"it){also}. Why: the README, \"The default is the model that learns best\".", soft_wrap=True)
    store = Store()
    tuned = registry.list_models(store)
    if not tuned:
        out.print("No fine-tuned models yet: run `tunesmith train FILE`.")
    with store.read() as s:
        projects = dict(s.execute(select(Project.id, Project.name)).all())
    # Plain lines, never wrapped: names are meant to be copied whole.
    for m in tuned:
        out.print(f"[bold]{m.name}[/]  ({m.method}, {m.trained_tokens or 0:,} trained tokens, project "
                  f"{projects.get(m.project_id)})", soft_wrap=True)
        steps = sorted(int(k) for k in m.checkpoints or {})
        out.print("  checkpoints: " + ", ".join(f"ckpt-step-{k}" for k in steps), soft_wrap=True)


def _resolve(model: str):
    """A model name as the store knows it (``UnknownModelError`` names what is wrong)."""
    from tunesmith.jobs import registry
    from tunesmith.jobs.store import Store

    return registry.resolve(model, Store())


@app.command()
@friendly_errors
def validate(
    file: Annotated[Path, typer.Argument(help="JSONL training file.")],
    model: ModelOpt = get_settings().default_model,
    max_length: Annotated[int, typer.Option(help="Examples longer than this are truncated.")] = 2048,
    method: Annotated[Optional[str], typer.Option(
        help="lora, full, dpo or reinforcement; checks the file suits it. Default: dpo for preference data, "
             "else lora.")] = None,
    epochs: Annotated[str, typer.Option(help="Number or auto.")] = "auto",
    batch_size: Annotated[str, typer.Option(help="Number or auto.")] = "auto",
    learning_rate_multiplier: Annotated[str, typer.Option(help="Number or auto.")] = "auto",
    beta: Annotated[str, typer.Option(help="DPO: number or auto (0.1); reinforcement: KL weight (0.04).")] = "auto",
    grader: Annotated[Optional[Path], typer.Option(
        help="Reinforcement: a JSON file with the grader; each line must hold the item fields it reads.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check a training file: errors with line and field, warnings, token statistics, hyperparameters."""
    from tunesmith.data.formats import PREFERENCE
    from tunesmith.data.validate import validate_file
    from tunesmith.models.loading import ensure_cached, load_renderer
    from tunesmith.train import hyper

    info = ensure_cached(_resolve(model).base, status=lambda m: err.print(f"[dim]{m}[/]"))
    preference = None if method is None else method == "dpo"  # None: either kind, the method follows the file
    report = validate_file(file, load_renderer(info), max_length, preference=preference,
                           prompts=method == "reinforcement")
    if grader is not None:
        from tunesmith.data.validate import check_item_fields
        from tunesmith.graders import item_fields, parse_grader

        check_item_fields(report, item_fields(parse_grader(_read_grader(grader))))
    method = method or ("dpo" if report.format == PREFERENCE else "lora")
    hp = None
    if report.ok:
        try:
            hp = hyper.resolve(len(report.tokenized), method, epochs, batch_size, learning_rate_multiplier, beta,
                               answer_tokens=hyper.mean_answer_tokens(report.tokenized))
        except TunesmithError as exc:
            report.errors.append(_problem(str(exc)))
    if as_json:
        data = report.as_dict()
        data["hyperparameters"] = hp.as_dict() if hp else None
        data["estimated_training_tokens"] = report.tokens.total * hp.n_epochs if hp and report.tokens else None
        out.print_json(json.dumps(data))
    else:
        _print_report(report, out, hp)
    if not report.ok:
        raise typer.Exit(1)


def _problem(message: str):
    from tunesmith.data.formats import Problem

    return Problem(None, None, message)


def _print_problems(console: Console, problems, label: str, noun: str, limit: int, more_hint: str = "") -> None:
    """One unwrapped line per problem (greppable), at most ``limit`` of them."""
    for p in problems[:limit]:
        console.print(f"  {label} {escape(str(p))}", soft_wrap=True)
    if len(problems) > limit:
        console.print(f"  … and {len(problems) - limit} more {noun}{escape(more_hint)}")


def _print_report(report, console: Console, hp=None) -> None:
    console.print(f"[bold]{escape(report.path)}[/]: format {report.format or 'unknown'}, "
                  f"{len(report.examples)} usable examples")
    _print_problems(console, report.errors, "[red]error[/]  ", "errors", 100)
    _print_problems(console, report.warnings, "[yellow]warning[/]", "warnings", 30)
    if report.tokens:
        table = Table(title="Tokens per example")
        for col in ("", "min", "median", "p95", "max", "total"):
            table.add_column(col, justify="right")
        sides = [(f"{side} tokens", d) for side, d in (report.pair_tokens or {}).items()]
        for label, d in [("tokens", report.tokens), ("trained tokens", report.trained_tokens), *sides]:
            table.add_row(label, str(d.min), f"{d.median:g}", f"{d.p95:.0f}", str(d.max), str(d.total))
        console.print(table)
    if hp:
        console.print(f"Hyperparameters: epochs {hp.n_epochs}, batch size {hp.batch_size}, learning rate "
                      f"multiplier {hp.learning_rate_multiplier:g} (learning rate {hp.learning_rate:.2e}"
                      f"{hp.rate_text}){hp.dpo_text}")
        console.print(f"Estimated training tokens: {report.tokens.total * hp.n_epochs:,} "
                      f"({report.tokens.total:,} × {hp.n_epochs} epochs)")
    verdict = "[green]OK[/]" if report.ok else f"[red]{len(report.errors)} error(s)[/]"
    console.print(f"{verdict}, {len(report.warnings)} warning(s)")


class _ProgressReporter:
    """Shows the loop's progress as a rich bar on stderr (stdout stays for the result)."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = None
        # A log file or CI never sees a live bar redraw: print a plain line every ~5 % instead.
        self.plain = not progress.console.is_terminal
        self.every = 1

    def on_message(self, message: str) -> None:
        self.progress.console.print(f"[dim]{escape(message)}[/]")

    def on_validated(self, report) -> None:
        self.progress.console.print(f"[dim]{escape(report.path)}: {len(report.tokenized)} examples, "
                                    f"{len(report.warnings)} warning(s)[/]")
        _print_problems(self.progress.console, report.warnings, "[yellow]warning[/]", "warnings", 5,
                        more_hint=": see `tunesmith validate`")

    def on_start(self, total_steps: int, start_step: int) -> None:
        self.task = self.progress.add_task("training", total=total_steps, completed=start_step,
                                           loss=float("nan"), rewards="", tps=0.0, epoch=1)
        self.every = max(1, total_steps // 20)

    def on_step(self, m: dict) -> None:
        self.progress.update(self.task, completed=m["step"], loss=m["train_loss"], rewards=_rewards(m),
                             tps=m["tokens_per_second"], epoch=m["epoch"])
        if self.plain and (m["step"] % self.every == 0 or m["step"] == m["total_steps"]):
            self.progress.console.print(f"step {m['step']}/{m['total_steps']} epoch {m['epoch']} "
                                        f"loss {m['train_loss']:.4f}{_rewards(m)} {m['tokens_per_second']:.0f} tok/s",
                                        soft_wrap=True)
        if "valid_loss" in m or "valid_reward_mean" in m:
            loss = f" valid loss {m['valid_loss']:.4f}" if "valid_loss" in m else ""
            self.progress.console.print(f"step {m['step']}:{loss}{_rewards(m, 'valid_')}", soft_wrap=True)

    def on_checkpoint(self, ckpt) -> None:
        valid, exact = ckpt.metrics.get("valid_loss"), ckpt.metrics.get("valid_exact_match")
        extra = f", valid loss {valid:.4f}" if valid is not None else ""
        extra += _rewards(ckpt.metrics, "valid_")
        extra += f", valid exact answers {exact:.0%}" if exact is not None else ""
        self.progress.console.print(f"epoch {ckpt.epoch}: step {ckpt.step}, train loss "
                                    f"{ckpt.metrics['train_loss']:.4f}{extra} → checkpoint {ckpt.path.name}",
                                    soft_wrap=True)


def _rewards(metrics: dict, prefix: str = "") -> str:
    """DPO's reward accuracy and margin, or a reinforcement job's mean grade, when the metrics have them."""
    if f"{prefix}reward_mean" in metrics:
        kl = f" kl {metrics['train_kl']:.4f}" if "train_kl" in metrics and not prefix else ""
        return f" {prefix}reward {metrics[f'{prefix}reward_mean']:.3f}{kl}"
    if f"{prefix}rewards/accuracies" not in metrics:
        return ""
    return (f" {prefix}rewards/accuracies {metrics[f'{prefix}rewards/accuracies']:.2f}"
            f" {prefix}rewards/margins {metrics[f'{prefix}rewards/margins']:.3f}")


@app.command()
@friendly_errors
def train(
    file: Annotated[Path, typer.Argument(help="JSONL training file.")],
    validation: Annotated[Optional[Path], typer.Option(help="JSONL validation file.")] = None,
    model: ModelOpt = get_settings().default_model,
    method: Annotated[str, typer.Option(
        help="lora, full, dpo (preference data, LoRA) or reinforcement (prompts and --grader, LoRA).")] = "lora",
    grader: Annotated[Optional[Path], typer.Option(
        help="Reinforcement only: a JSON file holding an OpenAI grader object (string_check, text_similarity, "
             "python, multi).")] = None,
    group_size: Annotated[str, typer.Option(help="Reinforcement only: answers sampled per prompt; number or "
                                                 "auto (8).")] = "auto",
    max_completion_tokens: Annotated[str, typer.Option(
        help="Reinforcement only: longest sampled answer; number or auto (256).")] = "auto",
    epochs: Annotated[str, typer.Option(help="Number or auto.")] = "auto",
    batch_size: Annotated[str, typer.Option(help="Number or auto.")] = "auto",
    learning_rate_multiplier: Annotated[str, typer.Option(help="Number or auto.")] = "auto",
    beta: Annotated[str, typer.Option(help="DPO: number or auto (0.1); reinforcement: the KL weight, auto "
                                            "(0.04).")] = "auto",
    rpo_alpha: Annotated[str, typer.Option(
        help="DPO only: weight of the chosen answers' NLL added to the DPO loss (RPO); number or auto.")] = "auto",
    suffix: Annotated[Optional[str], typer.Option(help="Up to 64 characters, part of the model name.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed; same seed, same result.")] = None,
    max_length: Annotated[int, typer.Option(help="Examples longer than this are truncated.")] = 2048,
    auto_split: Annotated[Optional[float], typer.Option(
        help="No validation file: hold out this fraction (e.g. 0.1) of a training file of ≥ 100 examples.")] = None,
    early_stopping: Annotated[bool, typer.Option(
        help="With validation data: stop once the epochs stop getting better and keep the best epoch.")] = True,
    patience: Annotated[int, typer.Option(
        min=1, help="Epochs without a better one (more exact answers, or as many and a lower loss) before stopping.")
    ] = DEFAULT_PATIENCE,
    eval_steps: Annotated[Optional[int], typer.Option(
        min=1, help="Also compute the validation loss every N steps (it is always computed each epoch).")] = None,
    prompt_loss_weight: Annotated[float, typer.Option(
        min=0, max=1, help="Also train the prompt tokens, at this weight (the legacy API's option; 0: answers "
                           "only).")] = 0.0,
    resume: Annotated[Optional[str], typer.Option(
        help="Continue a stopped run (its job id) from its newest checkpoint; the file and settings must be the "
             "ones it started with.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object with the result.")] = False,
    nproc_per_node: Annotated[int, typer.Option(
        min=1, help="Train on N processes of this machine (torchrun; on GPUs one each). The result does not "
                    "depend on N.")] = 1,
) -> None:
    """Fine-tune a model; prints the new model id (ft:…)."""
    from tunesmith.train import distributed
    from tunesmith.train.run import TrainSpec, run_job

    if nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:  # become torchrun's agent: each rank runs this command
        raise typer.Exit(distributed.start_ranks(nproc_per_node, ["-m", "tunesmith.cli", *sys.argv[1:]],
                                                 get_settings().shutdown_grace_seconds))
    if resume is not None:
        _check_resumable(resume)
    spec = TrainSpec(file, validation, model=model, method=method, n_epochs=epochs, batch_size=batch_size,
                     learning_rate_multiplier=learning_rate_multiplier, beta=beta, rpo_alpha=rpo_alpha,
                     suffix=suffix, seed=seed, max_length=max_length, early_stopping=early_stopping, patience=patience,
                     eval_steps=eval_steps, auto_split=auto_split, prompt_loss_weight=prompt_loss_weight,
                     grader=_read_grader(grader), group_size=group_size, max_completion_tokens=max_completion_tokens)
    stop = _StopOnInterrupt()
    progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]:.4f}{task.fields[rewards]}"),
                        TextColumn("{task.fields[tps]:.0f} tok/s"),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err,
                        disable=not distributed.is_main())
    with progress, stop:
        result = run_job(spec, _ProgressReporter(progress), stop_requested=stop, job_id=resume,
                         start=_resolve(model))
    if not distributed.is_main():  # rank 0 registers and tells
        return
    if result.model is not None:
        _register(result.model)
    if as_json:
        out.print_json(json.dumps(result.as_dict()))
    elif result.status == "stopped":
        err.print(f"Stopped at step {result.metrics.get('step')}; last checkpoint: {result.last_checkpoint}. "
                  f"To continue: the same command with --resume {result.job_id}", soft_wrap=True)
    else:
        err.print(f"Done in {result.seconds:.0f} s: {result.trained_tokens:,} trained tokens. Model:")
        out.print(result.fine_tuned_model, highlight=False)
    if result.status == "stopped":
        raise typer.Exit(130)


def _read_grader(path: Path | None) -> dict | None:
    """The grader object in a JSON file, checked here so that a mistake is named before the model loads."""
    if path is None:
        return None
    from tunesmith.graders import parse_grader

    try:
        grader = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TunesmithError(f"{path}: not a readable JSON file ({exc})") from None
    parse_grader(grader)
    return grader


def _register(record: dict) -> None:
    """A model trained here joins the store's registry, in the local project, as the server's do."""
    from tunesmith.jobs import registry
    from tunesmith.jobs.store import Store

    store = Store()
    with store.session() as s:
        registry.register(s, registry.record(record), store.project(s, get_settings().org).id, job_id=None)


def _check_resumable(job_id: str) -> None:
    """``train --resume`` continues runs of ``tunesmith train``; the server's jobs resume through it."""
    from tunesmith.jobs.store import Job, Store
    from tunesmith.train.loop import resumable_checkpoint

    settings = get_settings()
    if "/" in job_id or job_id.startswith("."):
        raise TunesmithError(f"not a job id: {job_id!r}")
    with Store().read() as s:
        if s.get(Job, job_id) is not None:
            raise TunesmithError(f"{job_id} is a job of the server: resume it with `tunesmith jobs resume {job_id}`")
    if resumable_checkpoint(settings.jobs_dir / job_id / "checkpoints") is None:
        raise TunesmithError(f"no run {job_id} with a checkpoint to resume from in {settings.jobs_dir}")


class _StopOnInterrupt:
    """First Ctrl-C asks the loop to stop after the current step; a second one aborts."""

    def __init__(self):
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        err.print("[yellow]Stopping after this step and saving a checkpoint (Ctrl-C again to abort)…[/]")

    def __enter__(self):
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._previous)


@app.command()
@friendly_errors
def chat(
    model: Annotated[str, typer.Argument(help="Base model name or ft: model / checkpoint id.")],
    message: Annotated[Optional[str], typer.Option("-m", "--message", help="Answer once and print only the reply.")] = None,
    system: Annotated[Optional[str], typer.Option(help="System prompt.")] = None,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    max_tokens: Annotated[int, typer.Option(help="Longest reply, in tokens.")] = 256,
) -> None:
    """Chat with a model: one answer with -m, else an interactive multi-turn chat."""
    from tunesmith.serve.engine import Engine, Reply, Sampling

    resolved = _resolve(model)
    engine = Engine(resolved.base, status=lambda m: err.print(f"[dim]{m}[/]"))
    sampling = Sampling(max_tokens=max_tokens, temperature=temperature, fit_to_context=True)
    history = [{"role": "system", "content": system}] if system else []
    if message is not None:
        print(engine.generate(resolved, [history + [{"role": "user", "content": message}]], sampling)[0].text)
        return
    err.print(f"Chatting with [bold]{escape(model)}[/]. /reset clears the conversation, /exit or Ctrl-D quits.")
    while True:
        try:
            text = input("you> ")
        except (EOFError, KeyboardInterrupt):
            err.print()
            return
        if text.strip() in ("/exit", "/quit"):
            return
        if text.strip() == "/reset":
            history = history[:1] if system else []
            continue
        history.append({"role": "user", "content": text})
        sys.stdout.write("assistant> ")
        for piece in engine.stream(resolved, history, sampling):
            if isinstance(piece, Reply):
                history.append({"role": "assistant", "content": piece.text})
            else:
                sys.stdout.write(piece)
                sys.stdout.flush()
        sys.stdout.write("\n")


@app.command("export")
@friendly_errors
def export_(
    model: Annotated[str, typer.Argument(help="ft: model or checkpoint (or a base model name).")],
    fmt: Annotated[str, typer.Option("--format", help="peft, hf, gguf, gguf-lora or ollama.")],
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out", help="The folder to write; new or empty. Default: ./NAME-FORMAT.")] = None,
    quant: Annotated[Optional[str], typer.Option(
        help="GGUF encoding (gguf, gguf-lora, ollama): f16 (default) or q8_0; q4_k_m is refused, naming llama.cpp's "
             "llama-quantize.")] = None,
    base: Annotated[bool, typer.Option(
        "--base", help="peft: also write the exact base model (base/) and point the adapter at it; gguf-lora: copy "
                       "the base GGUF beside the adapter.")] = False,
) -> None:
    """Export a model to run elsewhere (transformers, PEFT, vLLM, llama.cpp, Ollama); prints how to use it."""
    from tunesmith.export import check_request, export, file_stem
    from tunesmith.export.source import source_of

    check_request(model, fmt, quant, base)  # a request no model can satisfy fails before any loading
    resolved = _resolve(model)
    out_dir = out_dir or Path(f"{file_stem(model)}-{fmt}")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err)
    with progress:
        task = progress.add_task("loading", total=None)
        source = source_of(resolved, status=lambda m: progress.console.print(f"[dim]{escape(m)}[/]"))
        done = export(source, fmt, out_dir, quant, base,
                      progress=lambda what, n, total: progress.update(task, description=what, completed=n, total=total))
    err.print(f"Exported {escape(model)} as {fmt} to {escape(str(done.path))}:")
    for f in done.files:
        out.print(f"  {done.path / f}", highlight=False, soft_wrap=True)
    err.print("Use it with:")
    for line in done.usage:
        out.print(f"  {line}", highlight=False, soft_wrap=True)


keys_app = typer.Typer(no_args_is_help=True, help="API keys: each belongs to one project (tenant).")
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
@friendly_errors
def keys_create(project: Annotated[str, typer.Option(help="Project name; created if new.")],
                admin: Annotated[bool, typer.Option("--admin", help="The key may also manage keys "
                                                    "(/v1/admin/keys).")] = False) -> None:
    """Print a new API key for a project. Only its hash is stored: copy it now."""
    from tunesmith.jobs.store import Store

    out.print(Store().create_key(project, admin=admin)[1], highlight=False, soft_wrap=True)


@keys_app.command("list")
@friendly_errors
def keys_list() -> None:
    """List API keys (their first characters only), their projects, and which are revoked."""
    from tunesmith.jobs.store import Store

    rows = Store().keys()
    if not rows:
        out.print("No API keys: a server started without --keyless refuses every request until one exists.")
    for key, project in rows:
        state = f"revoked {_when(key.revoked_at)}" if key.revoked_at else "active"
        role = "  admin" if key.admin else ""
        out.print(f"{key.id}  {key.prefix}…  project {project.name}{role}  created {_when(key.created_at)}  {state}",
                  highlight=False)


@keys_app.command("revoke")
@friendly_errors
def keys_revoke(key: Annotated[str, typer.Argument(help="The key's id (key_…) or its prefix as `keys list` "
                                                   "shows it.")]) -> None:
    """Revoke a key: a running server refuses it from the next request on."""
    from tunesmith.jobs.store import Store

    found = Store().revoke_key(key.rstrip("…"))
    if found is None:
        raise TunesmithError(f"no key {key} (or more than one key starts so): see `tunesmith keys list`")
    out.print(f"{found[0].id}: revoked (project {found[1].name})", highlight=False)


def _when(timestamp: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


jobs_app = typer.Typer(no_args_is_help=True, help="The server's fine-tuning jobs, read from and changed in its store "
                                                   "(a running server acts on a change within a second).")
app.add_typer(jobs_app, name="jobs")
JobId = Annotated[str, typer.Argument(help="Job id (ftjob-…).")]


def _age(timestamp: int | None) -> str:
    import time

    if timestamp is None:
        return ""
    seconds = max(0, int(time.time()) - timestamp)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def _job(s, job_id: str):
    from tunesmith.jobs.store import Job

    job = s.get(Job, job_id)
    if job is None:
        raise TunesmithError(f"no job {job_id} (see `tunesmith jobs list`)")
    return job


def _progress(s, job_id: str) -> str:
    from sqlalchemy import select

    from tunesmith.jobs.store import Event

    data = s.scalar(select(Event.data).where(Event.job_id == job_id, Event.type == "metrics")
                    .order_by(Event.seq.desc()).limit(1))
    return f"{data['step']}/{data['total_steps']}" if data else ""


@jobs_app.command("list")
@friendly_errors
def jobs_list(
    project: Annotated[Optional[str], typer.Option(help="Only this project's jobs.")] = None,
    status: Annotated[Optional[str], typer.Option(help="Only jobs in this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Newest N jobs.")] = 50,
) -> None:
    """Jobs, newest first: status, model, age, progress (step / total) and the model each made."""
    from sqlalchemy import select

    from tunesmith.jobs.store import Job, Project, Store

    with Store().read() as s:
        query = select(Job, Project.name).join(Project).order_by(Job.created_at.desc(), Job.id).limit(limit)
        if project:
            query = query.where(Project.name == project)
        if status:
            query = query.where(Job.status == status)
        rows = [(job, name, _progress(s, job.id)) for job, name in s.execute(query).all()]
    if not rows:
        out.print("No jobs.")
        return
    # Aligned plain lines, never wrapped or folded: ids and model names are meant to be copied whole.
    cells = [("id", "project", "status", "model", "created", "steps", "fine-tuned model")]
    cells += [(job.id, name, job.status, job.model, _age(job.created_at), steps, job.fine_tuned_model or "")
              for job, name, steps in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]) - 1)]
    for n, row in enumerate(cells):
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1]
        out.print(f"[bold]{escape(line)}[/]" if n == 0 else escape(line), soft_wrap=True, highlight=False)


@jobs_app.command("manifest")
@friendly_errors
def jobs_manifest(
    job_id: JobId,
    kubernetes: Annotated[bool, typer.Option("--kubernetes", help="A Kubeflow Trainer v2 TrainJob (the only kind).")
                          ] = False,
    image: Annotated[str, typer.Option(help="Container image with tunesmith installed.")] = "tunesmith:latest",
    volume_claim: Annotated[str, typer.Option(help="PersistentVolumeClaim holding the server's home.")
                            ] = "tunesmith-home",
    gpus: Annotated[bool, typer.Option(help="Ask for one GPU per process.")] = True,
) -> None:
    """Print a manifest that runs the job's process on a cluster: an example to adapt and apply by hand
    (kubectl apply -f -); the server does not apply it. See the README's "Scaling out"."""
    from tunesmith.jobs.kubernetes import train_job
    from tunesmith.jobs.launcher import nproc_per_node
    from tunesmith.jobs.store import Store

    if not kubernetes:
        raise TunesmithError("say which manifest: --kubernetes (a Kubeflow Trainer TrainJob) is the only one")
    settings = get_settings()
    with Store().read() as s:
        job = _job(s, job_id)
    out.print(train_job(job.id, settings.home, nproc_per_node(settings, job.meta), image, volume_claim, gpus),
              highlight=False, soft_wrap=True, markup=False)


@jobs_app.command("show")
@friendly_errors
def jobs_show(job_id: JobId) -> None:
    """One job: status and who set it, hyperparameters, error, files, checkpoints."""
    from sqlalchemy import select

    from tunesmith.jobs.store import Checkpoint, Project, Store

    with Store().read() as s:
        job = _job(s, job_id)
        project = s.get(Project, job.project_id).name
        steps = _progress(s, job_id)
        ckpts = s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)).all()
    lines = [("id", job.id), ("project", project), ("status", f"{job.status} (set by {job.status_actor or 'api'})"),
             ("model", job.model), ("method", job.method), ("training file", job.training_file),
             ("validation file", job.validation_file or "none"), ("hyperparameters", json.dumps(job.hyperparameters)),
             ("seed", str(job.seed)), ("created", _age(job.created_at)), ("steps", steps or "none yet"),
             ("fine-tuned model", job.fine_tuned_model or "none yet")]
    if job.error:
        lines.append(("error", job.error["message"]))
    for label, value in lines:
        out.print(f"[bold]{label}:[/] {escape(value)}", soft_wrap=True)
    for c in ckpts:
        out.print(f"  checkpoint step {c.step}: {c.name}", soft_wrap=True, highlight=False)


@jobs_app.command("events")
@friendly_errors
def jobs_events(job_id: JobId, limit: Annotated[int, typer.Option(min=1, help="The newest N events.")] = 100) -> None:
    """A job's events, oldest first."""
    import datetime

    from sqlalchemy import select

    from tunesmith.jobs.store import Event, Store

    with Store().read() as s:
        _job(s, job_id)
        events = s.scalars(select(Event).where(Event.job_id == job_id).order_by(Event.seq.desc()).limit(limit)).all()
    for e in reversed(events):
        when = datetime.datetime.fromtimestamp(e.created_at).strftime("%Y-%m-%d %H:%M:%S")
        style = {"error": "red", "warn": "yellow"}.get(e.level, "")
        text = f"{when} {escape(e.message)}"
        out.print(f"[{style}]{text}[/]" if style else text, soft_wrap=True, highlight=False)


def _operate(job_id: str, to: str, message: str) -> None:
    from tunesmith.jobs import lifecycle
    from tunesmith.jobs.store import Store

    with Store().session() as s:
        job = lifecycle.transition(s, _job(s, job_id), to, "operator", message)
        out.print(f"{job.id}: {job.status}", highlight=False)


@jobs_app.command("cancel")
@friendly_errors
def jobs_cancel(job_id: JobId) -> None:
    """Cancel a job; its checkpoints stay."""
    _operate(job_id, "cancelled", "Fine-tuning job cancelled by the operator")


@jobs_app.command("pause")
@friendly_errors
def jobs_pause(job_id: JobId) -> None:
    """Pause a job: it checkpoints and stops until resumed."""
    _operate(job_id, "paused", "Fine-tuning job paused by the operator")


@jobs_app.command("resume")
@friendly_errors
def jobs_resume(job_id: JobId) -> None:
    """Resume a paused or failed job from its newest checkpoint."""
    _operate(job_id, "queued", "Fine-tuning job resumed by the operator; it continues from its newest checkpoint")


@app.command()
@friendly_errors
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    keyless: Annotated[bool, typer.Option("--keyless", help="Accept requests without a key, all as one local "
                                          "project: for a single user, on a loopback address only.")] = False,
) -> None:
    """Run the OpenAI-compatible API and the job worker."""
    import uvicorn

    from tunesmith.api.app import create_app
    from tunesmith.jobs.homelock import lock_home

    settings = get_settings().model_copy(update={"host": host, "keyless": keyless or get_settings().keyless})
    lock = lock_home(settings.home)  # held until this process ends
    app_ = create_app(settings)
    if not settings.keyless and not app_.state.store.has_keys():
        err.print("No API keys yet: every request is refused until one exists. Create one with "
                  "`tunesmith keys create --project NAME`, or restart with --keyless (loopback only).")
    with lock:
        uvicorn.run(app_, host=host, port=port, log_level="info")


EvalModel = Annotated[str, typer.Argument(help="Base model name or ft: model / checkpoint id.")]
EvalData = Annotated[Path, typer.Option(help="JSONL of held-out examples, in any training format.")]
EvalLimit = Annotated[Optional[int], typer.Option(min=1, help="Only the first N examples.")]
EvalMaxTokens = Annotated[int, typer.Option(min=1, help="Longest answer, in tokens.")]
EvalContains = Annotated[Optional[str], typer.Option(help="Also score: the answer contains this text.")]
EvalRegex = Annotated[Optional[str], typer.Option(help="Also score: the answer matches this regular expression "
                                                        "(RE2 syntax, found anywhere in the answer).")]
EvalGrader = Annotated[Optional[Path], typer.Option(
    help="Also score: a JSON file with an OpenAI grader object (as reinforcement jobs use); its mean score. "
         "The data may then be prompts without answers.")]


def _evaluate(models: list[str], data: Path, limit: Optional[int], max_tokens: int, contains: Optional[str],
              regex: Optional[str], grader: Optional[Path] = None):
    """Evaluate the models with a progress bar per model on stderr (stdout stays for the result)."""
    from tunesmith.eval.metrics import Checks
    from tunesmith.eval.run import EvalOptions, evaluate_models

    options = EvalOptions(max_tokens=max_tokens, limit=limit, checks=Checks(contains, regex),
                          grader=_read_grader(grader))
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), console=err)
    tasks: dict[str, int] = {}

    def answered(model: str, done: int, total: int) -> None:
        if model not in tasks:
            tasks[model] = progress.add_task(f"answering with {escape(model)}", total=total)
        progress.update(tasks[model], completed=done)

    with progress:
        return evaluate_models(models, data, options, answered,
                               status=lambda m: progress.console.print(f"[dim]{escape(m)}[/]"))


def _print_markdown(text: str) -> None:
    """Rendered on a terminal; the markdown itself when redirected (`> report.md`)."""
    from rich.markdown import Markdown

    if out.is_terminal:
        out.print(Markdown(text))
    else:
        print(text, end="")


@app.command("eval")
@friendly_errors
def eval_(
    model: EvalModel,
    data: EvalData,
    limit: EvalLimit = None,
    max_tokens: EvalMaxTokens = 256,
    contains: EvalContains = None,
    regex: EvalRegex = None,
    grader: EvalGrader = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report, every answer included, as JSON.")] = False,
) -> None:
    """Score a model on held-out data: loss, perplexity, token accuracy, and its greedy answers."""
    from tunesmith.eval.report import markdown

    [report] = _evaluate([model], data, limit, max_tokens, contains, regex, grader)
    if as_json:
        out.print_json(json.dumps(report.as_dict()))
    else:
        _print_markdown(markdown([report]))


@app.command()
@friendly_errors
def compare(
    model_a: EvalModel,
    model_b: EvalModel,
    data: EvalData,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="Also write a self-contained HTML report.")] = None,
    limit: EvalLimit = None,
    max_tokens: EvalMaxTokens = 256,
    contains: EvalContains = None,
    regex: EvalRegex = None,
    grader: EvalGrader = None,
) -> None:
    """Golden questions: two models' answers side by side with the reference, per-item and overall scores."""
    from tunesmith.eval.report import html_report, markdown

    reports = _evaluate([model_a, model_b], data, limit, max_tokens, contains, regex, grader)
    _print_markdown(markdown(reports, questions=True))
    if out_file:
        try:
            out_file.write_text(html_report(reports), encoding="utf-8")
        except OSError as exc:
            raise TunesmithError(f"cannot write {out_file}: {exc.strerror}") from None
        err.print(f"Report written to {escape(str(out_file))}")


if __name__ == "__main__":
    app()
