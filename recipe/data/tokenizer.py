"""The tokenizer that ships with the model: a Hub/local one, or a byte-level BPE trained on the corpus.

Either way it starts every encoded text with BOS, so prompts given to `pipeline()` look like the start of
a training document.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from recipe.errors import RecipeConfigError

logger = logging.getLogger(__name__)

PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
_LARGE_MAX_LENGTH = 1_000_000_000
MIN_TRAINED_VOCAB_SIZE = 300  # 256 byte tokens, 4 specials, and room for merges (checked in recipe.options.checks)


def train_bpe_tokenizer(texts: Iterator[str], vocab_size: int, length: int | None = None) -> PreTrainedTokenizerFast:
    """Byte-level BPE (no unknown bytes) with Gemma's special-token ids: pad 0, eos 1, bos 2, unk 3."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD, EOS, BOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    backend.train_from_iterator(texts, trainer=trainer, length=length)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=_LARGE_MAX_LENGTH,
    )
    return ensure_bos_on_encode(tokenizer)


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise RecipeConfigError(
            f"Could not load tokenizer_name_or_path `{name_or_path}`: {error}. Give a Hub id or a local folder "
            "with tokenizer files, or leave it unset to train a tokenizer on the data."
        ) from error
    return prepare_tokenizer(tokenizer)


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give any tokenizer the BOS/EOS/PAD tokens that document packing and generation rely on."""
    if tokenizer.eos_token is None:
        raise RecipeConfigError(
            f"The tokenizer {tokenizer.name_or_path} has no EOS token; documents could not be separated."
        )
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.eos_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = _LARGE_MAX_LENGTH
    return ensure_bos_on_encode(tokenizer)


def ensure_bos_on_encode(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Make `tokenizer(text)` start with BOS, as every training document does."""
    if starts_with_bos(tokenizer):
        return tokenizer
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise RecipeConfigError(
            f"The tokenizer {tokenizer.name_or_path} does not add BOS and is not a fast tokenizer; use a fast one."
        )
    bos = tokenizer.bos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.bos_token_id)]
    )
    if not starts_with_bos(tokenizer):
        raise RecipeConfigError(f"Could not make the tokenizer {tokenizer.name_or_path} add BOS.")
    return tokenizer


def starts_with_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Stable hash of what the tokenizer does, for cache keys."""
    if isinstance(tokenizer, PreTrainedTokenizerFast):
        content = tokenizer.backend_tokenizer.to_str()
    else:
        content = repr(sorted(tokenizer.get_vocab().items()))
    content += f"|{tokenizer.bos_token_id}|{tokenizer.eos_token_id}"
    return hashlib.sha256(content.encode("utf-8")).hexdigest()[:16]
