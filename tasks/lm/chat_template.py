"""The chat template of a fine-tune: lmflows' default, and the check that levanter can train
with a template (it trains only on the tokens inside `{% generation %}`)."""

from __future__ import annotations

from typing import Any

# Plain-text role markers, not new special tokens: the base model's vocabulary is fixed (a new
# token would need a resized, untrained embedding row) and a model pretrained on plain text
# already knows "User:" and "Assistant:" as text. The assistant's words and the end-of-sequence
# token that ends its turn sit inside `{% generation %}`, so the model learns what to say and
# when to stop, and is never trained on the user's words. The leading space of the answer is
# in the generation part, so `add_generation_prompt=True` ends at "Assistant:" and the model
# produces " answer" as one word-initial token, as in training.
DEFAULT_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- 'Assistant:' -}}"
    "{%- generation -%}{{- ' ' + message['content'] | trim + eos_token -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- message['role'] | capitalize + ': ' + message['content'] | trim + '\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
)
_PROBE = [
    {"role": "user", "content": "Continue this verse: In the beginning"},
    {"role": "assistant", "content": "God created the heaven and the earth."},
    {"role": "user", "content": "Which book is it from?"},
    {"role": "assistant", "content": "Genesis."},
]
# Longer than the first (a template may treat later turns differently) ...
_PROBE_LONG = _PROBE + [
    {"role": "user", "content": "And the third turn?"},
    {"role": "assistant", "content": "Let there be light."},
]
# ... and with a system message, which a template may refuse (then the data must have none).
_PROBE_SYSTEM = [{"role": "system", "content": "You answer from the Bible."}, *_PROBE]


def _render(chat_template: str, conversation: list[dict]) -> tuple[str, str]:
    """The rendered conversation and the part of it inside {% generation %} blocks."""
    from transformers.utils.chat_template_utils import render_jinja_template

    # transformers drops a {% generation %} span that starts at the first character (a system
    # message rendered first would pass unseen): the probe renders after a marker.
    rendered, spans = render_jinja_template(
        conversations=[conversation],
        chat_template="[probe]" + chat_template,
        return_assistant_tokens_mask=True,
        bos_token="<s>",
        eos_token="</s>",
    )
    text = rendered[0]
    return text, "".join(text[start:end] for start, end in spans[0])


def check_chat_template(chat_template: Any) -> None:
    """Refuse a template levanter could not train with: not a string, not valid Jinja, no
    `{% generation %}` block, or one that marks none of an assistant's words (nothing would
    carry loss) or marks anything else (a user's or the system's words: the model would learn
    to write them). Checked on probe conversations of two and three turns, and with a system
    message if the template renders one."""
    if not isinstance(chat_template, str) or not chat_template.strip():
        raise ValueError("chat_template must be a non-empty Jinja string")
    probes = [(_PROBE, False), (_PROBE_LONG, False), (_PROBE_SYSTEM, True)]
    for conversation, may_refuse in probes:
        try:
            text, generated = _render(chat_template, conversation)
        except Exception as exc:
            if may_refuse:
                continue  # a template without system messages; the data is checked when read
            raise ValueError(f"chat_template does not render a conversation: {exc}") from exc
        for message in conversation:
            inside = message["content"] in generated
            if message["role"] == "assistant" and not inside:
                raise ValueError(
                    "chat_template renders an assistant message outside {% generation %} ... "
                    "{% endgeneration %}: levanter trains only on the tokens it marks, so it "
                    f"would not be learned (rendered: {text[:200]!r})"
                )
            if message["role"] != "assistant" and inside:
                raise ValueError(
                    f"chat_template puts a {message['role']} message inside "
                    "{% generation %}: the model would be trained to write it"
                )


def templated_tokenizer(tokenizer: str, chat_template: str, local_dir: str) -> Any:
    """A copy of `tokenizer` (any fsspec path or hub id) carrying `chat_template`, saved in
    the local folder `local_dir` (levanter and transformers load it by path)."""
    from tasks.data.tokenizer_files import load_tokenizer

    hf_tokenizer = load_tokenizer(tokenizer)
    hf_tokenizer.chat_template = chat_template
    hf_tokenizer.save_pretrained(local_dir)
    return hf_tokenizer
