"""Prompts: how a question (and its answer) become the text of a family's chat turn.

A real checkpoint carries its chat template, and lookhere uses it (`processor.apply_chat_template`
with one user turn of images then text, and the assistant's answer). The tiny offline processors
have none, so each adapter declares a `ChatFormat` that mirrors its family's official template.

Training needs the answer apart from the prompt, to mask the prompt out of the labels and to know
which tokens are the answer's content (the KLAL queries) and which close the turn. `chat_turn`
returns the three pieces: the prompt, the answer's content text and the closing text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChatFormat:
    """A family's chat turn as plain strings, for processors without a chat template.

    ``user`` holds ``{images}`` (the family's image placeholders) and ``{question}``; it ends with
    the assistant's header, so generation starts right after it. The assistant's turn is
    ``answer_prefix + answer + end``.
    """

    user: str = "{images}{question}"
    answer_prefix: str = " "
    end: str = ""


@dataclass(frozen=True)
class ChatTurn:
    """One rendered turn: ``prompt`` ends where generation starts."""

    prompt: str
    answer: str  # the answer's content, with any separator before it
    end: str  # what closes the turn after the answer (end-of-turn marker, newline)


def chat_turn(adapter: Any, processor: Any, question: str,
              answer: str | None = None, n_images: int = 1) -> ChatTurn:
    """The prompt (and answer pieces) for ``question`` with ``n_images`` images before it.

    ``adapter``: an `Adapter` or its class (its ``chat`` format and ``tiny_prompt``; not
    imported here, the adapters import this module)."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question must be a non-empty string, got {question!r}")
    if getattr(processor, "chat_template", None):
        return _templated(processor, question, answer, n_images)
    fmt = adapter.chat
    images = adapter.tiny_prompt(processor, "", n_images)
    prompt = fmt.user.format(images=images, question=question)
    if answer is None:
        return ChatTurn(prompt, "", "")
    return ChatTurn(prompt, fmt.answer_prefix + answer, fmt.end)


def _templated(processor: Any, question: str, answer: str | None, n_images: int) -> ChatTurn:
    user = {"role": "user",
            "content": [{"type": "image"}] * n_images + [{"type": "text", "text": question}]}
    prompt = processor.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
    if answer is None:
        return ChatTurn(prompt, "", "")
    reply = {"role": "assistant", "content": [{"type": "text", "text": answer}]}
    full = processor.apply_chat_template([user, reply], tokenize=False)
    if not full.startswith(prompt) or answer not in full[len(prompt):]:
        raise ValueError(
            "the processor's chat template does not render the assistant turn as the generation "
            "prompt followed by the answer; lookhere cannot separate prompt from answer with it "
            "(set processor.chat_template = None to use the adapter's ChatFormat)"
        )
    rest = full[len(prompt):]
    cut = rest.index(answer) + len(answer)
    return ChatTurn(prompt, rest[:cut], rest[cut:])


def prefill_prompt(adapter: Any, processor: Any, text: str,
                   n_images: int = 1) -> str:
    """The user turn (images, then ``text``) cut right after ``text``: no end-of-turn and no
    assistant header, so the last token is the text's own (the localization-heads query,
    methods.md section 3)."""
    prompt = chat_turn(adapter, processor, text, None, n_images).prompt
    cut = prompt.rfind(text)
    if cut < 0:
        raise ValueError("the chat turn does not contain the text verbatim; cannot cut after it")
    return prompt[: cut + len(text)]
