"""A character-level Hugging Face tokenizer built in memory (no download), for tests of code that
tokenizes chats: every printable character is a token, plus chat-role special tokens."""

from __future__ import annotations

import string
from collections.abc import Iterable

# One turn per message: <|role|>content</s>; the generation prompt opens an assistant turn.
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
SPECIALS = ["<unk>", "<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]


def char_tokenizer(chat: bool = True, extra_tokens: Iterable[str] = ()):
    """A `PreTrainedTokenizerFast` over single characters (and `extra_tokens` as whole tokens),
    with `CHAT_TEMPLATE` when `chat`."""
    import transformers
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(set(string.printable)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        additional_special_tokens=SPECIALS[4:], chat_template=CHAT_TEMPLATE if chat else None)
    extra = sorted(set(extra_tokens))
    if extra:
        tok.add_tokens(extra)
    return tok
