import pytest

from tunesmith.errors import TunesmithError
from tunesmith.train.hyper import BASE_LEARNING_RATE, auto_batch_size, auto_epochs, lr_lambda, resolve


@pytest.mark.parametrize("n, epochs", [(10, 10), (20, 5), (33, 3), (34, 3), (300, 3), (8333, 3), (8334, 2),
                                       (30000, 1)])
def test_auto_epochs_follow_openai_rule(n, epochs):
    assert auto_epochs(n) == epochs


def test_auto_epochs_are_capped_at_25():
    assert auto_epochs(3) == 25


def test_auto_batch_size_grows_with_data():
    assert [auto_batch_size(n) for n in (10, 100, 300, 1000, 100_000)] == [1, 2, 8, 32, 256]


def test_resolve_numbers_strings_and_auto():
    hp = resolve(300, "lora", "2", 4, "0.5")
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate) == (2, 4, BASE_LEARNING_RATE["lora"] * 0.5)
    assert resolve(12, "full", batch_size=64).batch_size == 12  # never larger than the data


@pytest.mark.parametrize("kwargs, message", [({"n_epochs": "x"}, "n_epochs must be a number"),
                                             ({"batch_size": 0}, "batch_size must be at least 1"),
                                             ({"learning_rate_multiplier": "-1"}, "at least")])
def test_resolve_rejects_bad_values(kwargs, message):
    with pytest.raises(TunesmithError, match=message):
        resolve(100, "lora", **kwargs)


def test_too_few_examples():
    with pytest.raises(TunesmithError, match="at least 10"):
        resolve(9, "lora")


def test_schedule_warms_up_then_decays_to_zero():
    f = lr_lambda(100)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.5) and f(100) == 0.0


def test_short_answers_lower_the_sft_learning_rate():
    # a one-word label: 3 answer tokens x batch 4 = 12 a step, sqrt(12/64) of the base rate
    hp = resolve(200, "lora", answer_tokens=3)
    assert hp.batch_size == 4 and hp.learning_rate == pytest.approx(BASE_LEARNING_RATE["lora"] * (12 / 64) ** 0.5)
    assert hp.rate_text == ", scaled by 0.43 for 12 answer tokens a step"
    assert "short_answers" not in hp.as_dict()  # not an API hyperparameter
    # the multiplier still scales it, and full fine-tuning follows the same rule
    assert resolve(200, "lora", learning_rate_multiplier=2, answer_tokens=3).learning_rate == pytest.approx(
        2 * hp.learning_rate)
    assert resolve(200, "full", answer_tokens=3).learning_rate < BASE_LEARNING_RATE["full"]


@pytest.mark.parametrize("method, answer_tokens", [("lora", 16), ("lora", 40), ("lora", None), ("dpo", 3)])
def test_long_answers_and_dpo_keep_the_base_rate(method, answer_tokens):
    hp = resolve(200, method, answer_tokens=answer_tokens)  # 16 x batch 4 = 64: at the threshold
    assert hp.learning_rate == BASE_LEARNING_RATE[method] and hp.rate_text == ""
