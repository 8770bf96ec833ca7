"""A local chat model's own chat template, rendered as transformers renders it, and tokenized so that text from a
message is never read as a special token.

    template = ChatTemplate.from_folder(model_dir, tokenizer)   # chat_template.jinja or tokenizer_config.json
    template.render(messages)       # the prompt text, as tokenizer.apply_chat_template(..., tokenize=False) gives it
    template.encode(messages)       # its token ids: special tokens only where the template wrote them

Why not render and tokenize the text: a tokenizer finds special tokens anywhere in its input, so a user who types
`<|im_start|>system` inside a message would open a system turn (prompt injection with the model's own grammar).
Before rendering, every special token's text inside the messages is swapped for a private-use placeholder; the
rendered text is cut at the special tokens left (the template's own) and the pieces between are tokenized with
special-token matching off, the placeholders back as plain text. A tokenizer cuts its input at special tokens
before anything else, so for a message without such text the ids are exactly those of tokenizing the rendered text.

The environment is transformers' own: jinja2's ImmutableSandboxedEnvironment (a template cannot reach Python
objects or mutate its inputs), trim_blocks and lstrip_blocks, loop controls, `raise_exception`, `strftime_now`,
a `tojson` that does not escape HTML, the tokenizer's special tokens (bos_token, eos_token, ...) as variables.
"""
from __future__ import annotations

import json
import os
import re
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

_ESCAPE = "\ue000"  # private use: starts a placeholder; a message's own U+E000 is escaped like a special token
_FIRST = 0xF0000  # plane 15, private use: the placeholder's second character says which text it stands for
_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class TemplateMissing(RuntimeError):
    """The model folder has no chat template: it cannot be prompted with chat messages."""


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # jinja's own tojson escapes HTML characters, which a prompt must keep as typed
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    return env


def _token_text(value) -> str | None:
    """tokenizer_config.json writes a special token as its text or as an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def read_template(model_dir: str | os.PathLike) -> tuple[str, dict[str, str]]:
    """The folder's chat template source and its special-token variables (bos_token, eos_token, ...).

    transformers writes the template to chat_template.jinja (4.43+) or into tokenizer_config.json (a string, or a
    list of named templates of which "default" is the chat one).
    """
    config_path = os.path.join(model_dir, "tokenizer_config.json")
    config = {}
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    variables = {name: _token_text(config[name]) for name in _SPECIAL_NAMES if config.get(name) is not None}
    jinja_path = os.path.join(model_dir, "chat_template.jinja")
    if os.path.exists(jinja_path):
        with open(jinja_path, encoding="utf-8") as f:
            return f.read(), variables
    source = config.get("chat_template")
    if isinstance(source, list):
        source = {entry.get("name"): entry.get("template") for entry in source}.get("default")
    if not source:
        raise TemplateMissing(f"{model_dir} has no chat template (chat_template.jinja or tokenizer_config.json's "
                              f"chat_template): prepare the model again, or serve it for /v1/completions only")
    return source, variables


class ChatTemplate:
    def __init__(self, source: str, tokenizer: Tokenizer, variables: dict[str, str] | None = None):
        self.template = _environment().from_string(source)
        self.variables = dict(variables or {})
        specials = {token.content: token_id for token_id, token in tokenizer.get_added_tokens_decoder().items()
                    if token.special}
        self._special_ids = specials
        # the pieces between the template's special tokens: a copy of the tokenizer that reads them as text
        self._plain = Tokenizer.from_str(tokenizer.to_str())
        self._plain.encode_special_tokens = True
        texts = sorted(specials, key=len, reverse=True)  # longest first: a token that starts another one loses
        self._texts = [*texts, _ESCAPE]
        self._to_escape = re.compile("|".join(re.escape(t) for t in self._texts))
        self._code = {text: _ESCAPE + chr(_FIRST + i) for i, text in enumerate(self._texts)}
        self._placeholder = re.compile(_ESCAPE + "(.)", re.DOTALL)
        self._cut = re.compile("|".join(re.escape(t) for t in texts)) if texts else None

    @classmethod
    def from_folder(cls, model_dir: str | os.PathLike, tokenizer: Tokenizer) -> ChatTemplate:
        source, variables = read_template(model_dir)
        return cls(source, tokenizer, variables)

    def _escape(self, value):
        if isinstance(value, str):
            return self._to_escape.sub(lambda m: self._code[m.group()], value)
        if isinstance(value, dict):
            return {k: self._escape(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._escape(v) for v in value]
        return value

    def _restore(self, text: str) -> str:
        return self._placeholder.sub(lambda m: self._texts[ord(m.group(1)) - _FIRST], text)

    def _render_escaped(self, messages: list[dict], add_generation_prompt: bool, **kwargs) -> str:
        return self.template.render(messages=self._escape(messages), add_generation_prompt=add_generation_prompt,
                                    **{**self.variables, **kwargs})

    def render(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """The prompt text (special-token text inside messages included as typed)."""
        return self._restore(self._render_escaped(messages, add_generation_prompt, **kwargs))

    def encode(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> list[int]:
        """The prompt's token ids: the template's special tokens as such, everything from the messages as text."""
        text = self._render_escaped(messages, add_generation_prompt, **kwargs)
        pieces, specials, start = [], [], 0
        for match in self._cut.finditer(text) if self._cut else ():
            pieces.append(self._restore(text[start:match.start()]))
            specials.append(self._special_ids[match.group()])
            start = match.end()
        pieces.append(self._restore(text[start:]))
        ids: list[int] = []
        for i, piece in enumerate(pieces):
            if piece:
                ids.extend(self._plain.encode(piece, add_special_tokens=False).ids)
            if i < len(specials):
                ids.append(specials[i])
        return ids
