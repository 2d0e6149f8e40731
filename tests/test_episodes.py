"""Multi-turn episodes, token-in/token-out: a scripted generator and environment with a real tokenizer and chat
template. The trained sequence is exactly the sampled ids plus the observations' template tokens, the loss mask
covers only the model's tokens, and limits, failures and overruns end an episode with a status."""

from __future__ import annotations

import copy
import threading

import pytest

from rlx.calls import DeadlineCalls
from rlx.chat import ChatTokens
from rlx.config import RolloutConfig
from rlx.contracts import CheckedEnvironment
from rlx.data import PromptEncoder
from rlx.errors import ConfigError
from rlx.interfaces import Completion, EpisodeEnvironment, Observation, Problem, SamplingParams, Score, Turn
from rlx.models.tiny import CHAT_TEMPLATE, build_tokenizer, default_corpus
from rlx.rollout import EpisodeCollector, RolloutCollector, collate, make_collector

# Qwen2.5's habit: a default system prompt when the conversation has none
SYSTEM_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are helpful.<|im_end|>\\n' }}{%- endif %}"
    + CHAT_TEMPLATE
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(default_corpus())


@pytest.fixture(scope="module", params=["plain", "default-system-prompt"])
def any_tokenizer(request, tokenizer):
    if request.param == "plain":
        return tokenizer
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = SYSTEM_TEMPLATE
    return tok


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


PROBLEM = Problem("p0", (user("What is 2 + 3?"),), "5")


class ScriptedGenerator:
    """Call k answers with `turns[k]`: (ids, finish reason), or a list of them, one per sample in the call's order
    (cycled). Logprobs are distinct per position; every prompt gets `params.n` samples."""

    def __init__(self, turns: list) -> None:
        self.turns = turns
        self.calls: list[tuple[list[list[int]], SamplingParams]] = []

    def generate(self, prompts, params):
        script = self.turns[min(len(self.calls), len(self.turns) - 1)]
        options = script if isinstance(script, list) else [script]
        k = len(self.calls)
        self.calls.append(([list(p) for p in prompts], params))
        out = []
        for i in range(len(prompts)):
            group = []
            for j in range(params.n):
                ids, reason = options[(i * params.n + j) % len(options)]
                ids = ids[: params.max_new_tokens]
                group.append(Completion(tuple(ids), tuple(-(k + 1) - t / 100 for t in range(len(ids))), reason))
            out.append(group)
        return out


class ScriptedEpisode:
    def __init__(self, replies: list) -> None:
        self.replies = list(replies)
        self.turns: list[Turn] = []

    def step(self, turn: Turn):
        self.turns.append(turn)
        reply = self.replies.pop(0)
        return reply() if callable(reply) else reply


class ScriptedEnv:
    """Every episode answers its turns with `replies` in order (an Observation, a Score, or a callable)."""

    def __init__(self, replies: list) -> None:
        self.replies = replies
        self.episodes: list[ScriptedEpisode] = []

    def problems(self, split):
        return [PROBLEM]

    def score(self, problems, completions):
        return [Score(0.0, "wrong") for _ in completions]

    def start_episode(self, problem):
        self.episodes.append(ScriptedEpisode(self.replies))
        return self.episodes[-1]

    def close(self) -> None:
        pass


def turn_ids(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]


def collector(tokenizer, turns, replies, *, max_seq_len=256, **limits):
    gen, env = ScriptedGenerator(turns), ScriptedEnv(replies)
    encoder = PromptEncoder(tokenizer, max_seq_len)
    return EpisodeCollector(gen, env, encoder, RolloutConfig(**limits)), gen, env


PARAMS = SamplingParams(n=2, max_new_tokens=16, seed=3)


def test_observation_tokens_are_the_template_difference(any_tokenizer):
    chat = ChatTokens(any_tokenizer)
    assert chat.turn_end == "<|im_end|>\n"
    after_stop = chat.observation_text([user("higher")], any_tokenizer.eos_token_id)
    assert after_stop == "\n<|im_start|>user\nhigher<|im_end|>\n<|im_start|>assistant\n"  # no system prompt again
    after_cut = chat.observation_text([user("higher")], None)  # a turn cut at its token limit is closed for it
    assert after_cut == "<|im_end|>" + after_stop


# tool results grouped into one user turn, as Qwen2.5's template does
TOOL_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def test_tool_messages_render_as_the_template_groups_them(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = TOOL_TEMPLATE
    text = ChatTokens(tok).observation_text([{"role": "tool", "content": "4"}, {"role": "tool", "content": "5"}],
                                            tok.eos_token_id)
    assert text == ("\n<|im_start|>user\n<tool_response>\n4\n</tool_response>\n<tool_response>\n5\n</tool_response>"
                    "<|im_end|>\n<|im_start|>assistant\n")


def test_episode_is_exactly_the_sampled_ids_plus_observation_tokens(any_tokenizer):
    tok = any_tokenizer
    # a deliberately non-canonical tokenisation of the turn ("4" "2" as sampled, whatever the tokenizer would merge)
    first = [tok.convert_tokens_to_ids(t) for t in ("4", "2")] + [tok.eos_token_id]
    second = turn_ids(tok, "5")
    feedback = Observation((user("lower"),))
    c, gen, env = collector(tok, [(first, "stop"), (second, "stop")], [feedback, Score(1.0, "correct")])
    groups = c.score([PROBLEM], c.generate([PROBLEM], PARAMS))
    sample = groups[0][0]
    prompt = tok.apply_chat_template([dict(m) for m in PROBLEM.messages], add_generation_prompt=True, tokenize=True,
                                     return_dict=False)
    observation = tok.encode("\n<|im_start|>user\nlower<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    assert list(sample.prompt_ids) == list(prompt)
    assert list(sample.response_ids) == first + observation + second
    assert list(sample.loss_mask) == [True] * len(first) + [False] * len(observation) + [True] * len(second)
    assert list(sample.response_logprobs) == [-1.0, -1.01, -1.02] + [0.0] * len(observation) + [-2.0, -2.01]
    assert sample.num_turns == 2 and sample.turn_rewards == (0.0, 1.0)
    assert sample.score == Score(1.0, "correct") and sample.num_observation_tokens == len(observation)
    assert [m["content"] for m in sample.transcript] == ["42", "lower", "5"]
    # the whole sequence is the conversation as the template renders it (up to the final turn's "\n")
    conversation = [*PROBLEM.messages, *sample.transcript]
    assert tok.decode([*sample.prompt_ids, *sample.response_ids], skip_special_tokens=False) + "\n" == (
        tok.apply_chat_template(conversation, tokenize=False))
    # the environment saw each turn as decoded text with the exact sampled ids
    assert [t.text for t in env.episodes[0].turns] == ["42", "5"]
    assert env.episodes[0].turns[0].token_ids == tuple(first) and env.episodes[0].turns[1].index == 1
    # the trainer's batch: completion_mask (the loss mask) excludes every observation token
    batch, gen_logprobs = collate(groups[0], pad_id=0)
    n_p = len(prompt)
    assert batch.completion_mask[0, n_p : n_p + len(first)].all()
    assert not batch.completion_mask[0, n_p + len(first) : n_p + len(first) + len(observation)].any()
    assert int(batch.completion_mask[0].sum()) == len(first) + len(second)
    assert gen_logprobs[0, n_p + len(first) : n_p + len(first) + len(observation)].abs().sum() == 0


PROBLEM_2 = Problem("p1", (user("What is 1 + 1?"),), "2")


def test_each_round_is_one_generate_call_continuing_every_episode_from_its_prefix(tokenizer):
    one, two = (turn_ids(tokenizer, "1"), "stop"), (turn_ids(tokenizer, "2"), "stop")
    turns = [[one, two], [(turn_ids(tokenizer, "3"), "stop")], [(turn_ids(tokenizer, "4"), "stop")]]
    replies = [Observation((user("again"),)), Observation((user("again"),)), Score(0.5, "partial")]
    c, gen, _ = collector(tokenizer, turns, replies)
    groups = c.generate([PROBLEM, PROBLEM_2], PARAMS)
    # round 1: each group's 2 episodes share their prompt: 2 prompts x n=2; they then said "1" and "2", so
    # rounds 2 and 3 continue 4 different prefixes, one sample each; one call per round
    assert [(len(prompts), params.n) for prompts, params in gen.calls] == [(2, 2), (4, 1), (4, 1)]
    samples = c.score([PROBLEM, PROBLEM_2], groups)
    assert [[s.transcript[0]["content"] for s in g] for g in samples] == [["1", "2"], ["1", "2"]]
    first = samples[0][0]
    # round 2 continued from prompt + turn 1 + observation 1, exactly
    turn1_end = len(turn_ids(tokenizer, "1")) + len(c.chat.observation_ids([user("again")], tokenizer.eos_token_id))
    assert [*first.prompt_ids, *first.response_ids[:turn1_end]] in gen.calls[1][0]
    assert len({params.seed for _, params in gen.calls}) == 3  # a fresh seed per round
    assert all(s.score == Score(0.5, "partial") and s.num_turns == 3 for g in samples for s in g)
    metrics = c.metrics([s for g in samples for s in g])
    assert metrics["episode/turns_mean"] == 3.0 and metrics["episode/rounds"] == 3
    obs = sum(s.num_observation_tokens for g in samples for s in g)
    assert metrics["episode/observation_token_frac"] == obs / sum(len(s.response_ids) for g in samples for s in g)


class SeededPerRequest:
    """Like vLLM: a request's samples depend only on (prompt, seed, sample index), so identical prompts sent as
    separate requests with one seed would come back identical."""

    def __init__(self, tokenizer) -> None:
        self.digits = [turn_ids(tokenizer, str(d)) for d in range(10)]

    def generate(self, prompts, params):
        return [[Completion(tuple(ids := self.digits[hash((tuple(p), params.seed, j)) % 10]), (-1.0,) * len(ids), "stop")
                 for j in range(params.n)] for p in prompts]


def test_a_group_of_episodes_gets_independent_samples_from_a_per_request_seeded_engine(tokenizer):
    env, encoder = ScriptedEnv([Score(0.0, "wrong")]), PromptEncoder(tokenizer, 256)
    c = EpisodeCollector(SeededPerRequest(tokenizer), env, encoder)
    group = c.collect([PROBLEM], SamplingParams(n=8, max_new_tokens=4, seed=5))[0]
    assert len({s.response_ids for s in group}) > 1


def test_observation_rewards_add_up_to_the_episode_return(tokenizer):
    replies = [Observation((user("warm"),), reward=0.25), Observation((user("warmer"),), reward=0.5), Score(1.0, "correct")]
    c, _, _ = collector(tokenizer, [(turn_ids(tokenizer, "7"), "stop")], replies)
    sample = c.collect([PROBLEM], PARAMS)[0][0]
    assert sample.turn_rewards == (0.25, 0.5, 1.0) and sample.score == Score(1.75, "correct")


def test_max_turns_ends_the_episode_with_its_status(tokenizer):
    replies = [Observation((user("again"),), reward=0.1)] * 10
    c, gen, env = collector(tokenizer, [(turn_ids(tokenizer, "7"), "stop")], replies, max_turns=3)
    sample = c.collect([PROBLEM], PARAMS)[0][0]
    assert sample.score.status == "max_turns" and sample.score.correct is False
    assert sample.num_turns == 3 and len(env.episodes[0].turns) == 3 and len(gen.calls) == 3
    assert sample.score.reward == pytest.approx(0.3)  # what the turns earned
    # the last observation (answering the last allowed turn) is not appended: the sequence ends on a model turn
    assert sample.loss_mask[-1] is True


def test_token_budget_ends_the_episode_and_caps_each_turn(tokenizer):
    long_turn = tokenizer.encode("We compute 12 + 34 = 46.", add_special_tokens=False) + [tokenizer.eos_token_id]
    prompt_len = len(PromptEncoder(tokenizer, 256).encode(PROBLEM))
    budget = prompt_len + len(long_turn) + 8
    c, gen, _ = collector(tokenizer, [(long_turn, "stop")], [Observation((user("go on"),))] * 5, max_tokens=budget)
    sample = c.collect([PROBLEM], PARAMS)[0][0]
    assert sample.score.status == "token_budget"
    assert len(sample.prompt_ids) + len(sample.response_ids) <= budget
    # every generate call asked for at most the room that episode had left
    for prompts, params in gen.calls:
        assert all(len(p) + params.max_new_tokens <= budget for p in prompts)


def test_model_max_seq_len_bounds_the_episode_too(tokenizer):
    c, _, _ = collector(tokenizer, [(turn_ids(tokenizer, "7"), "stop")], [Observation((user("again"),))] * 20,
                        max_seq_len=40, max_turns=20)
    sample = c.collect([PROBLEM], PARAMS)[0][0]
    assert sample.score.status == "token_budget" and len(sample.prompt_ids) + len(sample.response_ids) <= 40


def _raise():
    raise RuntimeError("environment bug")


def test_a_raising_step_ends_its_episode_with_env_error_and_the_others_go_on(tokenizer):
    env_calls = {"n": 0}

    def first_raises():
        env_calls["n"] += 1
        return _raise() if env_calls["n"] == 1 else Score(1.0, "correct")

    c, _, _ = collector(tokenizer, [(turn_ids(tokenizer, "7"), "stop")], [first_raises], env_workers=1)
    samples = c.collect([PROBLEM], PARAMS)[0]
    assert sorted(s.score.status for s in samples) == ["correct", "env_error"]


def test_a_runaway_step_ends_with_env_timeout_and_the_run_goes_on(tokenizer):
    release = threading.Event()

    def hang():
        release.wait()  # runs until the test ends (a thread cannot be killed: it is abandoned)
        return Score(1.0, "correct")

    try:
        c, _, _ = collector(tokenizer, [(turn_ids(tokenizer, "7"), "stop")], [hang], env_timeout_s=0.2)
        samples = c.collect([PROBLEM], PARAMS)[0]
        assert [s.score.status for s in samples] == ["env_timeout", "env_timeout"]
        assert c.metrics(samples)["episode/env_calls_abandoned_total"] == 2
        # the collector keeps working afterwards (the abandoned workers were replaced)
        c.env.replies = [Score(1.0, "correct")]
        assert [s.score.status for s in c.collect([PROBLEM], PARAMS)[0]] == ["correct", "correct"]
    finally:
        release.set()


def test_a_step_breaking_the_contract_is_an_env_error(tokenizer):
    c, _, _ = collector(tokenizer, [(turn_ids(tokenizer, "7"), "stop")], ["not an observation"])
    assert [s.score.status for s in c.collect([PROBLEM], PARAMS)[0]] == ["env_error", "env_error"]
    c, _, _ = collector(tokenizer, [(turn_ids(tokenizer, "7"), "stop")], [Observation(({"role": "user"},))])
    assert c.collect([PROBLEM], PARAMS)[0][0].score.status == "env_error"
    c, _, _ = collector(tokenizer, [(turn_ids(tokenizer, "7"), "stop")], [Score(float("nan"), "correct")])
    assert c.collect([PROBLEM], PARAMS)[0][0].score.status == "env_error"


def test_a_failing_start_episode_is_an_env_error(tokenizer):
    c, gen, env = collector(tokenizer, [(turn_ids(tokenizer, "7"), "stop")], [Score(1.0, "correct")])
    env.start_episode = lambda problem: _raise()
    sample = c.collect([PROBLEM], PARAMS)[0][0]
    assert sample.score.status == "env_error" and sample.response_ids == () and not gen.calls


def test_a_turn_cut_at_its_limit_is_closed_by_the_observation(tokenizer):
    cut = tokenizer.encode("1 2 3 4 5 6", add_special_tokens=False)
    c, _, env = collector(tokenizer, [(cut, "length"), (turn_ids(tokenizer, "7"), "stop")],
                          [Observation((user("shorter"),)), Score(1.0, "correct")])
    sample = c.collect([PROBLEM], PARAMS)[0][0]
    assert env.episodes[0].turns[0].finish_reason == "length"
    observation = sample.response_ids[len(cut) : len(cut) + 3]
    assert tokenizer.decode(list(observation), skip_special_tokens=False).startswith("<|im_end|>\n<|im_start|>")


def test_make_collector_picks_episodes_through_the_contract_check(tokenizer):
    encoder = PromptEncoder(tokenizer, 64)
    env = CheckedEnvironment(ScriptedEnv([]), "environment 'scripted' (from tests)")
    assert isinstance(env, EpisodeEnvironment)
    assert isinstance(make_collector(ScriptedGenerator([]), env, encoder), EpisodeCollector)

    class SingleTurn:
        def problems(self, split):
            return [PROBLEM]

        def score(self, problems, completions):
            return []

        def close(self):
            pass

    single = CheckedEnvironment(SingleTurn(), "environment 'single' (from tests)")
    assert type(make_collector(ScriptedGenerator([]), single, encoder)) is RolloutCollector


def test_a_template_that_rewrites_history_is_one_clear_error(tokenizer):
    tok = copy.deepcopy(tokenizer)
    # renders only the last message: appending a message changes what came before
    tok.chat_template = "{{- '<|im_start|>' + messages[-1]['role'] + '\\n' + messages[-1]['content'] + '<|im_end|>' }}"
    with pytest.raises(ConfigError, match="prefix"):
        ChatTokens(tok).observation_ids([user("x")], tok.eos_token_id)


def test_deadline_calls_return_in_order_and_bound_each_call():
    release = threading.Event()
    calls = DeadlineCalls(workers=2, timeout_s=0.2)
    try:
        results = calls.run([lambda: 1, release.wait, _raise, lambda: 4])
        assert [r.value for r in results] == [1, None, None, 4]
        assert [r.timed_out for r in results] == [False, True, False, False]
        assert isinstance(results[2].error, RuntimeError) and calls.abandoned == 1
        assert [r.value for r in calls.run([lambda: 5, lambda: 6])] == [5, 6]
    finally:
        release.set()
        calls.close()
