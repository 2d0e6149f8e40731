"""Chat messages appended to a token sequence as the model's chat template renders them, without re-tokenising
what the sequence already holds: the template is rendered on a fixed conversation with and without the new
messages and only the difference is tokenised (the way multi-turn token-in/token-out rollouts grow an episode).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlx.errors import ConfigError
from rlx.interfaces import Message

# The fixed conversation the difference is taken on: a user message and an assistant turn whose content is a
# placeholder, so the text the template puts after an assistant turn's content (its "turn end") can be found.
_ASSISTANT_PLACEHOLDER = "<<rlx-assistant-turn>>"
_BASE: tuple[Message, ...] = (
    {"role": "user", "content": "<<rlx-user-turn>>"},
    {"role": "assistant", "content": _ASSISTANT_PLACEHOLDER},
)


class ChatTokens:
    """Token ids for what follows a model turn: the rest of the turn's end, new messages, the next generation prompt.

    `observation_ids(messages, stop_token)` renders `[user, assistant, *messages]` (generation prompt on) and
    `[user, assistant]`, checks that the first extends the second, and tokenises the extra text. A default system
    prompt or BOS that the template inserts is in both renderings, so it never appears in the difference. The
    assistant turn's end (Qwen: `<|im_end|>\\n`) is partly sampled by the model (its stop token `<|im_end|>`); the
    rest (`\\n`), or all of it when the turn was cut by a token limit, opens the observation.

    Tokenising the difference alone is exact for byte-level BPE tokenizers when the text starts at a special token
    or after one (chat templates put one at every turn boundary); SentencePiece tokenizers that add a word-start
    marker to every piece may tokenise it differently from the whole rendered conversation, but the episode keeps
    exactly the tokens it shows the model, which is what the loss needs.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._base_text = self._render(_BASE, generation_prompt=False)
        at = self._base_text.rfind(_ASSISTANT_PLACEHOLDER)
        if at < 0:
            raise ConfigError(
                "the model's chat template does not render an assistant message's content, so multi-turn episodes "
                "cannot be laid out as tokens; use a model whose template renders every message"
            )
        self.turn_end = self._base_text[at + len(_ASSISTANT_PLACEHOLDER) :]

    def _render(self, messages: Sequence[Message], *, generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                [dict(m) for m in messages], add_generation_prompt=generation_prompt, tokenize=False
            )
        except Exception as exc:  # noqa: BLE001 - jinja raises TemplateError and friends from inside the template
            roles = sorted({str(m.get("role")) for m in messages})
            raise ConfigError(
                f"the model's chat template cannot render the messages (roles {', '.join(roles)}): "
                f"{type(exc).__name__}: {exc}. An environment's observations must use roles the template knows "
                "(every template knows 'user')"
            ) from exc

    def observation_text(self, messages: Sequence[Message], stop_token: int | None) -> str:
        """The text that follows the model's turn; `stop_token`: the id the turn stopped on (None: cut by a limit)."""
        full = self._render((*_BASE, *messages), generation_prompt=True)
        if not full.startswith(self._base_text):
            raise ConfigError(
                "the model's chat template renders earlier messages differently once more follow them, so an "
                "episode cannot grow by appending tokens (token-in/token-out needs a template whose rendering of a "
                f"conversation is a prefix of its rendering with more messages). Before: {self._base_text!r}; "
                f"after: {full[: len(self._base_text) + 40]!r}..."
            )
        turn_end = self.turn_end
        if stop_token is not None:
            stopped = self.tokenizer.decode([stop_token], skip_special_tokens=False)
            if stopped and turn_end.startswith(stopped):
                turn_end = turn_end[len(stopped) :]
        return turn_end + full[len(self._base_text) :]

    def observation_ids(self, messages: Sequence[Message], stop_token: int | None) -> list[int]:
        """`observation_text` tokenised on its own (nothing before it is touched)."""
        return list(self.tokenizer.encode(self.observation_text(messages, stop_token), add_special_tokens=False))
