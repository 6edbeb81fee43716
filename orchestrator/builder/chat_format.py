"""Baichuan2's chat format: the reserved marker tokens, and the prompt the reference `build_chat_input` assembles.

This is the yardstick for the Modelfile TEMPLATE: rendered and tokenised with
special tokens parsed, the template must give exactly these ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class ChatMarkers:
    """The reserved tokens that open a user and an assistant turn."""

    user_id: int
    assistant_id: int
    user_piece: str
    assistant_piece: str

    @property
    def pieces(self) -> tuple[str, str]:
        return self.user_piece, self.assistant_piece

    @property
    def ids(self) -> tuple[int, int]:
        return self.user_id, self.assistant_id


def build_chat_input(
    messages: Sequence[dict],
    encode: Callable[[str], list[int]],
    markers: ChatMarkers,
    max_input_tokens: int | None = None,
) -> list[int]:
    """Token ids for `messages` (dicts with role and content); the oldest rounds go first when over budget."""
    system, rounds = "", []
    current: list[dict] = []
    for i, message in enumerate(messages):
        if message["role"] == "system":
            if i != 0:
                raise ValueError("a system message may only come first")
            system = message["content"]
            continue
        if message["role"] == "user" and current:
            rounds.append(current)
            current = []
        current.append(message)
    if current:
        rounds.append(current)

    system_ids = encode(system) if system else []
    budget = None if max_input_tokens is None else max_input_tokens - len(system_ids)
    history: list[int] = []
    for round_ in reversed(rounds):
        round_ids: list[int] = []
        for message in round_:
            round_ids.append(markers.user_id if message["role"] == "user" else markers.assistant_id)
            round_ids.extend(encode(message["content"]))
        if not history or budget is None or len(history) + len(round_ids) <= budget:
            history = round_ids + history
            if budget is None or len(history) < budget:
                continue
        break

    ids = system_ids + history
    if messages and messages[-1]["role"] != "assistant":
        ids.append(markers.assistant_id)
    return ids if max_input_tokens is None else ids[-max_input_tokens:]
