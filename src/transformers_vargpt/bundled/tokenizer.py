"""The bundled model's tokenizer, built here from the shapes world's text (no download).

Word level: lower-cased words and punctuation of every sentence the world uses, a few chat words, the letters and
digits, then `<unk> <s> </s>` and the VARGPT special tokens. Any other word becomes `<unk>`, so any user text
tokenises without error; "colour" and "grey" read as "color" and "gray". Decoding joins words with spaces and drops the space before punctuation. The vocabulary is
sorted, so the same code always builds the same tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from ..tiny_models import vargpt_fast_tokenizer
from .dataset import world_texts

BASE_TOKENS = ["<unk>", "<s>", "</s>"]
# the chat template's role words, and a few words users type around the world's own sentences
CHAT_WORDS = "user assistant system : yes no hello hi thanks thank you it is there".split()
_WORD_PATTERN = re.compile(r"\w+|[^\w\s]")
# (British, American) spellings of the world's words
SPELLINGS = (("colour", "color"), ("grey", "gray"))


def vocabulary(texts: Iterable[str]) -> list[str]:
    """Sorted lower-cased words and punctuation marks of `texts`, plus chat words, letters and digits."""
    words = {token for text in texts for token in _WORD_PATTERN.findall(text.lower())}
    words |= set(CHAT_WORDS) | set("abcdefghijklmnopqrstuvwxyz0123456789")
    return sorted(words)


def build_shapes_tokenizer(texts: Iterable[str] | None = None) -> PreTrainedTokenizerFast:
    """The word-level tokenizer of `texts` (default: every sentence of the shapes world) with VARGPT's tokens."""
    vocab = {token: index for index, token in enumerate(BASE_TOKENS)}
    for token in vocabulary(world_texts() if texts is None else texts):
        vocab.setdefault(token, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # British spellings read as the world's American ones (the world's text never has them, so nothing it trains on
    # tokenises differently): "What colour is the shape?" is the question it knows, not one with an unknown word
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Lowercase(), *(normalizers.Replace(british, american) for british, american in SPELLINGS)]
    )
    # words and single punctuation marks (as _WORD_PATTERN), whitespace dropped
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                             special_tokens=[("<s>", vocab["<s>"])])
    return vargpt_fast_tokenizer(tokenizer)


__all__ = ["build_shapes_tokenizer", "vocabulary"]
