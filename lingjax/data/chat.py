"""Chat templates: a conversation -> token ids and the mask of the tokens a model learns from
(the assistant's).

    template = chat_template("auto", tokenizer)       # the tokenizer's own, else "plain"
    ids, train = encode_conversation(template, tokenizer, messages)
    prompt = encode_prompt(template, tokenizer, messages[:-1])   # ends with the assistant header

A conversation is a list of {"role": "system" | "user" | "assistant", "content": str}. A
template is Jinja in Hugging Face's convention (the `chat_template` of a tokenizer_config.json:
variables `messages`, `add_generation_prompt`, `eos_token`, `bos_token`), rendered in a
sandboxed Jinja environment (a template file runs no Python of its own). Which one:
  "auto"   the tokenizer's own: the `chat_template` of the tokenizer_config.json beside its
           tokenizer.json (a published Ling tokenizer carries Ling's), else "plain";
  "plain"  lingjax's default, for tokenizers without one (the byte tokenizer):
               <|system|>\\n{system}\\n<|user|>\\n{question}\\n<|assistant|>\\n{answer}<EOS>
           messages separated by a newline, each assistant turn ended by the tokenizer's EOS;
  "ling"   Ling v1 (Ling-lite/plus/Coder-lite) role markers: <role>SYSTEM</role>...
           <role>HUMAN</role>...<role>ASSISTANT</role>..., the conversation ended by EOS;
  "ling2"  Ling 2.0 role markers, every turn ended by <|role_end|>;
  a path   a .jinja file.
The named Ling layouts follow the published role markers; a Ling tokenizer's own template
(under "auto") is what its model was tuned with and wins where they differ.

Which tokens are trained: assistant message i's content, which must appear verbatim after the
rendered prefix (the messages before i with the generation prompt: the assistant header is
context, also where a template without a generation prompt writes it), and its end of turn:
what the template writes after the content when message i is the last one, if the whole
conversation has it there too (Ling v1 ends only the conversation with EOS: an earlier turn
learns no stop; "plain" and Ling 2.0 end every turn). A template whose prefixes are not
prefixes of the whole conversation, or that rewrites the content, cannot be masked this way
and is refused. Text between boundaries is
tokenized piece by piece (a token never spans a boundary); `eos_token`/`bos_token` render as
the tokenizer's special strings (for the byte tokenizer, markers mapped to its EOS/BOS ids).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from lingjax.data.corpus import CorpusError

ROLES = ("system", "user", "assistant")
NAMED = ("auto", "plain", "ling", "ling2")

# (trim_blocks, as Hugging Face renders, drops a newline right after a block tag: newlines
# that must stay are expressions.)
_PLAIN = (
    "{% for m in messages %}{% if not loop.first %}{{ '\\n' }}{% endif %}<|{{ m.role }}|>\n"
    "{{ m.content }}{% if m.role == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{% if messages %}{{ '\\n' }}{% endif %}<|assistant|>\n"
    "{% endif %}"
)
_LING_ROLES = "{'system': 'SYSTEM', 'user': 'HUMAN', 'assistant': 'ASSISTANT'}"
_LING = (
    "{% set names = " + _LING_ROLES + " %}"
    "{% for m in messages %}<role>{{ names[m.role] }}</role>{{ m.content }}"
    "{% if loop.last and m.role == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<role>ASSISTANT</role>{% endif %}"
)
_LING2 = (
    "{% set names = " + _LING_ROLES + " %}"
    "{% for m in messages %}<role>{{ names[m.role] }}</role>{{ m.content }}<|role_end|>"
    "{% endfor %}{% if add_generation_prompt %}<role>ASSISTANT</role>{% endif %}"
)
_BUILTIN = {"plain": _PLAIN, "ling": _LING, "ling2": _LING2}
# The byte tokenizer has no special strings: these stand for its EOS and BOS ids.
_BYTE_SPECIALS = {"<|endoftext|>": "EOS", "<|begin_of_text|>": "BOS"}


class ChatError(CorpusError):
    """A conversation or a template cannot be used; the message names the problem and the fix."""


class ChatTemplate:
    """A compiled chat template and the special strings of its tokenizer."""

    def __init__(self, source: str, name: str):
        from jinja2 import StrictUndefined, TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:  # Hugging Face templates call it
            raise ChatError(f"chat template {name}: {message}")

        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, undefined=StrictUndefined
        )
        env.globals["raise_exception"] = raise_exception
        try:
            self._template = env.from_string(source)
        except TemplateError as e:
            raise ChatError(f"chat template {name} does not parse: {e}") from None
        self.name = name

    def render(self, messages: Sequence[dict], add_generation_prompt: bool, **specials) -> str:
        from jinja2 import TemplateError

        try:
            return self._template.render(
                messages=list(messages), add_generation_prompt=add_generation_prompt, **specials
            )
        except TemplateError as e:
            raise ChatError(f"chat template {self.name} failed: {e}") from None


def _own_template(tokenizer: Any) -> str | None:
    """The `chat_template` of the tokenizer_config.json beside a tokenizer.json, if any (a
    list of named templates: the one named "default")."""
    path = getattr(tokenizer, "path", None)
    if not path:
        return None
    config = os.path.join(os.path.dirname(path), "tokenizer_config.json")
    if not os.path.isfile(config):
        return None
    try:
        with open(config, encoding="utf-8") as f:
            value = json.load(f).get("chat_template")
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(value, list):
        value = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = value.get("default")
    return value if isinstance(value, str) and value else None


@functools.lru_cache(maxsize=16)
def _compiled(source: str, name: str) -> ChatTemplate:
    return ChatTemplate(source, name)


def chat_template(spec: str, tokenizer: Any) -> ChatTemplate:
    """The template `spec` names (module docstring) for `tokenizer`."""
    if spec == "auto":
        own = _own_template(tokenizer)
        return _compiled(own, "(the tokenizer's own)") if own else _compiled(_PLAIN, "plain")
    if spec in _BUILTIN:
        return _compiled(_BUILTIN[spec], spec)
    if not spec.endswith((".jinja", ".j2")) or not os.path.isfile(spec):
        raise ChatError(
            f"data.chat_template={spec!r}: use one of {NAMED} or the path of a .jinja file "
            "(Hugging Face's chat_template syntax)"
        )
    with open(spec, encoding="utf-8") as f:
        return _compiled(f.read(), spec)


def _specials(tokenizer: Any) -> tuple[dict[str, str], dict[str, int]]:
    """(what eos_token/bos_token render as, {special string: id} to split the text on)."""
    if getattr(tokenizer, "kind", "") == "byte":
        ids = {s: getattr(tokenizer, f"{role.lower()}_id") for s, role in _BYTE_SPECIALS.items()}
        eos, bos = list(_BYTE_SPECIALS)
        return {"eos_token": eos, "bos_token": bos}, ids
    eos = getattr(tokenizer, "eos_token", "") or ""
    return {"eos_token": eos, "bos_token": ""}, {}  # a tokenizer.json parses its own specials


def _encode(tokenizer: Any, text: str, split: dict[str, int]) -> list[np.ndarray]:
    """`text`'s ids, split on the special strings `split` maps to ids first."""
    pieces = [text]
    for special, sid in split.items():
        out = []
        for p in pieces:
            if isinstance(p, str):
                parts = p.split(special)
                for k, part in enumerate(parts):
                    out += ([np.asarray([sid], np.int32)] if k else []) + [part]
            else:
                out.append(p)
        pieces = out
    return [p if not isinstance(p, str) else tokenizer.encode(p) for p in pieces if len(p)]


def check_messages(messages: Any) -> list[dict]:
    """The messages as dicts of role and content, or ChatError naming what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise ChatError('"messages" must be a non-empty list of {"role", "content"} objects')
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ChatError(f'message {i} must be an object with "role" and "content"')
        if m["role"] not in ROLES:
            raise ChatError(f"message {i} has role {m['role']!r}; use one of {ROLES}")
        if not isinstance(m["content"], str):
            raise ChatError(f"message {i} ({m['role']}) has no text content (a string)")
        if m["role"] == "assistant" and not m["content"].strip():
            raise ChatError(f"message {i} is an empty assistant response: nothing to learn")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def encode_conversation(
    template: ChatTemplate, tokenizer: Any, messages: Sequence[dict]
) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [n], train bool [n]): the rendered conversation and which of its tokens are
    the assistant's (module docstring). ChatError if it has no assistant message, or the
    template cannot be masked."""
    messages = check_messages(list(messages))
    if not any(m["role"] == "assistant" for m in messages):
        raise ChatError("the conversation has no assistant message: nothing to learn")
    render, split = _specials(tokenizer)
    full = template.render(messages, False, **render)
    bounds: list[tuple[int, int]] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = template.render(messages[:i], True, **render)
        if not full.startswith(prefix) or (bounds and len(prefix) < bounds[-1][1]):
            raise ChatError(
                f"chat template {template.name}: the prompt before message {i} (with the "
                "assistant header) is not a prefix of the whole conversation, so the "
                "assistant's tokens cannot be told apart; use a template whose renderings "
                "extend each other (every Hugging Face chat template we know does)"
            )
        # The content, verbatim, after the prompt (a template without a generation prompt
        # writes the assistant's header itself: that stays context).
        start, content = -1, ""
        for c in (m["content"], m["content"].strip()):
            start = full.find(c, len(prefix))
            if start >= 0:
                content = c
                break
        if start < 0:
            raise ChatError(
                f"chat template {template.name} does not write message {i}'s content verbatim "
                "after its prompt (it rewrites or drops it), so its tokens cannot be masked"
            )
        end = start + len(content)
        alone = template.render(messages[: i + 1], False, **render)
        if alone.startswith(full[:end]):  # the end of turn, if the conversation has it
            eot = alone[end:]
            end += len(eot) if eot and full.startswith(eot, end) else 0
        bounds.append((start, end))
    ids, train, at = [], [], 0
    for start, stop in bounds:
        for piece, trained in ((full[at:start], False), (full[start:stop], True)):
            for part in _encode(tokenizer, piece, split):
                ids.append(part)
                train.append(np.full(len(part), trained))
        at = stop
    for part in _encode(tokenizer, full[at:], split):
        ids.append(part)
        train.append(np.zeros(len(part), bool))
    return np.concatenate(ids).astype(np.int32), np.concatenate(train)


def encode_prompt(template: ChatTemplate, tokenizer: Any, messages: Sequence[dict]) -> np.ndarray:
    """The ids a model continues to answer: `messages` rendered with the generation prompt
    (the assistant header) at the end, int32 [n]."""
    messages = check_messages(list(messages)) if messages else []
    render, split = _specials(tokenizer)
    text = template.render(messages, True, **render)
    return np.concatenate(_encode(tokenizer, text, split) or [np.zeros(0, np.int32)])
