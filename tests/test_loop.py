"""The training loop on a tiny random model: learning, determinism, checkpoints, stop and resume,
the overfitting guard."""

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tunesmith.data.formats import parse_example
from tunesmith.train import loop
from tunesmith.train.losses import SFT


class Recorder:
    def __init__(self):
        self.steps, self.checkpoints = [], []

    def on_start(self, total_steps, start_step):
        self.total, self.start = total_steps, start_step

    def on_step(self, m):
        self.steps.append(m)

    def on_checkpoint(self, c):
        self.checkpoints.append(c)


@pytest.fixture(scope="module")
def dataset(renderer):
    rows = [{"user": f"What is {i} plus one?", "assistant": f"{i + 1}"} for i in range(12)]
    return [renderer.encode(parse_example(r, n)[0], 128) for n, r in enumerate(rows, 1)]


def lora(model):
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def run(model, dataset, tmp: Path, epochs=3, stop_at=None, resume_from=None, valid=None, lr=5e-3, **guard):
    rec = Recorder()
    cfg = loop.LoopConfig(n_epochs=epochs, batch_size=4, learning_rate=lr, seed=7, **guard)
    result = loop.train(model, dataset, cfg, tmp, rec, pad_id=2, valid_set=valid, resume_from=resume_from,
                        stop_requested=lambda: stop_at is not None and len(rec.steps) >= stop_at)
    return result, rec


def test_loss_falls_and_each_epoch_checkpoints(tiny_model_factory, dataset, tmp_path):
    model = tiny_model_factory()  # full fine-tuning: a random model learns fast enough to see
    result, rec = run(model, dataset, tmp_path, epochs=4, valid=dataset[:4], lr=1e-2)
    assert result.completed and result.step == 12 == rec.total
    assert rec.steps[-1]["train_loss"] < rec.steps[0]["train_loss"] * 0.8
    assert [c.epoch for c in rec.checkpoints] == [1, 2, 3, 4]
    assert all("valid_loss" in c.metrics for c in rec.checkpoints)
    assert (rec.checkpoints[-1].path / "model.safetensors").exists()
    # Only the newest checkpoint keeps the optimizer state needed to resume.
    assert sorted(p.parent.name for p in tmp_path.glob(f"*/{loop.STATE_FILE}")) == ["step-000012"]
    assert result.trained_tokens == sum(t.n_tokens for t in dataset) * 4


def test_same_seed_same_weights(tiny_model_factory, dataset, tmp_path):
    a, b = lora(tiny_model_factory()), lora(tiny_model_factory())
    run(a, dataset, tmp_path / "a", epochs=1)
    run(b, dataset, tmp_path / "b", epochs=1)
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_neftune_noise_changes_training_only_and_is_removed_after(tiny_model_factory, dataset, tmp_path):
    ids = torch.tensor([[5, 6, 7, 8]])
    model = tiny_model_factory()
    clean = model.get_input_embeddings()(ids)
    with loop.noisy_embeddings(model, alpha=5.0):
        model.train()
        noisy = model.get_input_embeddings()(ids)
        model.eval()
        assert torch.equal(model.get_input_embeddings()(ids), clean)  # validation sees clean embeddings
    bound = 5.0 / (ids.shape[1] * clean.shape[2]) ** 0.5
    assert 0 < (noisy - clean).abs().max() <= bound
    model.train()
    assert torch.equal(model.get_input_embeddings()(ids), clean)  # the hook is gone
    quiet, noised = lora(tiny_model_factory()), lora(tiny_model_factory())
    run(quiet, dataset, tmp_path / "a", epochs=1)
    run(noised, dataset, tmp_path / "b", epochs=1, neftune_alpha=5.0)
    assert any(not torch.equal(a, b) for a, b in zip(weights(quiet).values(), weights(noised).values(), strict=True))


@pytest.mark.parametrize("stop_at", [2, 3])  # mid-epoch, and exactly at an epoch boundary
def test_stop_then_resume_equals_uninterrupted(tiny_model_factory, dataset, tmp_path, stop_at):
    straight = lora(tiny_model_factory())
    run(straight, dataset, tmp_path / "straight")

    first = lora(tiny_model_factory())
    stopped, _ = run(first, dataset, tmp_path / "split", stop_at=stop_at)
    assert not stopped.completed and stopped.step == stop_at
    ckpt = tmp_path / "split" / f"step-{stop_at:06d}"

    from peft import PeftModel

    resumed_model = PeftModel.from_pretrained(tiny_model_factory(), ckpt, is_trainable=True)
    resumed, rec = run(resumed_model, dataset, tmp_path / "split", resume_from=ckpt)
    assert resumed.completed and rec.start == stop_at
    assert [c.epoch for c in resumed.checkpoints] == [1, 2, 3]
    ws, wr = weights(straight), weights(resumed_model)
    assert all(torch.allclose(ws[k], wr[k], atol=1e-6) for k in ws)


def test_evaluate_reports_loss_and_accuracy(tiny_model_factory, dataset):
    metrics = loop.evaluate(tiny_model_factory(), dataset, pad_id=2)
    assert metrics["valid_loss"] > 5  # random model over a 49k vocabulary
    assert 0 <= metrics["valid_mean_token_accuracy"] <= 1


@pytest.fixture(scope="module")
def contrary(renderer):
    """Validation answers in another form than the training ones ("It is 3" against "3"): they share the
    end of turn that training first teaches, then fitting the bare numbers better fits them worse."""
    rows = [{"user": f"What is {i} plus one?", "assistant": f"It is {i + 1}"} for i in range(6)]
    return [renderer.encode(parse_example(r, n)[0], 128) for n, r in enumerate(rows, 1)]


def valid_losses(checkpoints) -> list[float]:
    return [round(c.metrics["valid_loss"], 4) for c in checkpoints]


def test_guard_stops_when_validation_loss_turns_up_and_picks_the_best_epoch(tiny_model_factory, dataset,
                                                                             contrary, tmp_path):
    result, rec = run(tiny_model_factory(), dataset, tmp_path, epochs=15, valid=contrary, lr=1e-2, patience=2)
    losses, best = valid_losses(result.checkpoints), result.best
    assert result.completed and result.early_stopped
    assert len(result.checkpoints) == best.epoch + 2 < 15, losses  # stopped after 2 epochs without a new low
    assert best.metrics["valid_loss"] == min(c.metrics["valid_loss"] for c in result.checkpoints)
    assert all(c.metrics["valid_loss"] > best.metrics["valid_loss"] for c in result.checkpoints[best.epoch:])
    # What overfitting looks like: training loss still falling while validation loss goes up.
    train = [c.metrics["train_loss"] for c in result.checkpoints]
    assert train[-1] < train[best.epoch - 1], (train, losses)


def test_guard_off_trains_every_epoch(tiny_model_factory, dataset, contrary, tmp_path):
    result, _ = run(tiny_model_factory(), dataset, tmp_path, epochs=6, valid=contrary, lr=1e-2, patience=None)
    assert result.completed and not result.early_stopped and result.best is None
    assert len(result.checkpoints) == 6


def test_guard_without_validation_data_keeps_the_last_epoch(tiny_model_factory, dataset, tmp_path):
    result, _ = run(tiny_model_factory(), dataset, tmp_path, epochs=2, patience=1)
    assert result.best is None and not result.early_stopped and len(result.checkpoints) == 2


def test_resuming_a_run_the_guard_ended_trains_no_further(tiny_model_factory, dataset, contrary, tmp_path):
    stopped, _ = run(tiny_model_factory(), dataset, tmp_path, epochs=15, valid=contrary, lr=1e-2, patience=2)
    last = loop.resumable_checkpoint(tmp_path)  # as a job killed right after its last checkpoint finds it
    again, rec = run(tiny_model_factory(), dataset, tmp_path, epochs=15, valid=contrary, lr=1e-2, patience=2,
                     resume_from=last)
    assert again.early_stopped and again.step == stopped.step and rec.steps == []
    assert again.best.step == stopped.best.step


def test_eval_steps_adds_validation_metrics_to_those_steps(tiny_model_factory, dataset, tmp_path):
    _, rec = run(tiny_model_factory(), dataset, tmp_path, epochs=2, valid=dataset[:2], eval_steps=2)
    # Steps 2 and 4; step 6 ends an epoch, whose evaluation goes to the checkpoint instead.
    assert [m["step"] for m in rec.steps if "valid_loss" in m] == [2, 4]
    assert all("valid_loss" in c.metrics for c in rec.checkpoints)


class NaNAtStep(SFT):
    """SFT whose loss turns NaN from the given step on (counted in micro-batch calls of batch 4)."""

    def __init__(self, step: int):
        self.calls, self.step = 0, step

    def __call__(self, model, rows, pad_id):
        loss, stats = super().__call__(model, rows, pad_id)
        self.calls += 1
        if self.calls >= self.step:
            loss = loss * float("nan")
            stats = {**stats, "train_loss": float("nan")}
        return loss, stats


def test_a_nan_loss_stops_training_before_the_update_naming_the_last_good_checkpoint(tiny_model_factory, dataset,
                                                                                     tmp_path):
    model = lora(tiny_model_factory())
    cfg = loop.LoopConfig(n_epochs=3, batch_size=4, learning_rate=5e-3, seed=7, objective=NaNAtStep(5))
    before = None

    class Snapshot(Recorder):  # the weights after each good step
        def on_step(self, m):
            nonlocal before
            super().on_step(m)
            before = weights(model)

    rec = Snapshot()
    with pytest.raises(loop.NonFiniteLoss) as stopped:
        loop.train(model, dataset, cfg, tmp_path, rec, pad_id=2)
    message = str(stopped.value)
    assert message.startswith("training stopped at step 5: the loss is nan")
    assert f"the last good checkpoint is step 3 (epoch 1): {tmp_path / 'step-000003'}" in message
    assert [m["step"] for m in rec.steps] == [1, 2, 3, 4]
    after = weights(model)
    assert all(torch.equal(before[k], after[k]) for k in after)  # the bad step changed nothing


def test_a_corrupt_checkpoint_is_named_when_resuming(tiny_model_factory, dataset, tmp_path):
    model = lora(tiny_model_factory())
    result, _ = run(model, dataset, tmp_path, epochs=2, stop_at=4)
    newest = loop.resumable_checkpoint(tmp_path)
    (newest / loop.STATE_FILE).write_bytes(b"not a torch file")
    with pytest.raises(loop.CorruptCheckpoint, match=f"checkpoint {newest} cannot be read"):
        run(lora(tiny_model_factory()), dataset, tmp_path, epochs=2, resume_from=newest)


def ckpt(step, valid_loss, exact=None):
    metrics = {"valid_loss": valid_loss} | ({} if exact is None else {"valid_exact_match": exact})
    return loop.Checkpoint(step, step, Path(f"step-{step}"), metrics)


@pytest.mark.parametrize("checkpoints, best_step", [
    ([ckpt(1, 0.9), ckpt(2, 0.5), ckpt(3, 0.7)], 2),  # no answer scores: the lowest loss
    ([ckpt(1, 0.9, 0.4), ckpt(2, 0.5, 0.6), ckpt(3, 0.7, 0.8)], 3),  # exact match wins over the loss
    ([ckpt(1, 0.9, 0.8), ckpt(2, 0.5, 0.8), ckpt(3, 0.7, 0.8)], 2),  # a tie: the lower loss
    ([ckpt(1, 0.5, 0.8), ckpt(2, 0.5, 0.8)], 1),  # and then the earlier
    ([loop.Checkpoint(1, 1, Path("x"), {"train_loss": 1.0})], None),  # no validation
])
def test_best_checkpoint_prefers_exact_answers_then_the_loss_then_the_earliest(checkpoints, best_step):
    best = loop.best_checkpoint(checkpoints)
    assert (best.step if best else None) == best_step


def test_answer_scores_join_each_epoch_checkpoint_and_leave_training_unchanged(tiny_model_factory, dataset, renderer,
                                                                                tmp_path):
    from tunesmith.train.answers import answer_scorer

    rows = [{"user": f"Give {i} as JSON", "assistant": json.dumps({"n": i})} for i in range(3)]
    valid = dataset[:2] + [renderer.encode(parse_example(r, n)[0], 128) for n, r in enumerate(rows, 1)]
    score, calls = answer_scorer(valid, renderer), []

    def scorer(model):
        calls.append(1)
        return score(model)

    scored = lora(tiny_model_factory())
    _, rec = run(scored, dataset, tmp_path / "scored", epochs=2, valid=valid, eval_steps=2, answer_scorer=scorer)
    assert len(calls) == 2  # at each epoch's end, not at the eval_steps validations
    assert [c.epoch for c in rec.checkpoints] == [1, 2]
    for c in rec.checkpoints:
        assert 0 <= c.metrics["valid_exact_match"] <= 1 and 0 <= c.metrics["valid_field_match"] <= 1
    assert all("valid_exact_match" not in m for m in rec.steps)
    plain = lora(tiny_model_factory())
    run(plain, dataset, tmp_path / "plain", epochs=2, valid=valid, eval_steps=2)
    ws, wp = weights(scored), weights(plain)
    assert all(torch.equal(ws[k], wp[k]) for k in ws)  # asking questions changed no weight and no data order
